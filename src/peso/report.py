"""Results as a CSV, a Markdown table with the mean over continual blocks, a console table and a plot."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peso.compare import compare_methods
from peso.io import atomic_file, is_main, write_text
from peso.metrics import METRICS

COLUMNS = [
    "method",
    "seed",
    "block",
    "users",
    *METRICS,
    "train_seconds",
    "best_epoch",
    "targets_per_s",
    "valid_loss",
    "adapter_bytes",
]


def sd(values: list[float]) -> float:
    """The sample standard deviation over seeds (ddof=1); 0 for a single seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def write_csv(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    write_text(path, buf.getvalue())


def continual_means(rows: list[dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """method -> metric -> (mean over seeds of the per-seed mean over blocks >= 1, sample std over seeds,
    seeds)."""
    per = defaultdict(lambda: defaultdict(list))  # method -> seed -> rows
    for r in rows:
        if r["block"] >= 1:
            per[r["method"]][r["seed"]].append(r)
    out = {}
    for method, seeds in per.items():
        out[method] = {}
        for m in METRICS:
            vals = [np.mean([r[m] for r in rs]) for rs in seeds.values()]
            out[method][m] = (float(np.mean(vals)), sd(vals), len(vals))
    return out


def _fmt(mean: float, std: float, n: int) -> str:
    return f"{mean:.4f}" if n == 1 else f"{mean:.4f} ± {std:.4f}"


def markdown(rows: list[dict], summary: dict, intervals: dict | None = None) -> str:
    lines = ["# Results", ""]
    for k, v in summary.items():
        lines.append(f"- {k}: {v}")
    lines += ["", "## Mean over continual blocks (1..T-1)", ""]
    if any(n > 1 for ms in continual_means(rows).values() for _, _, n in ms.values()):
        lines += ["mean ± sample standard deviation over seeds (ddof=1)", ""]
    means = continual_means(rows)
    lines.append("| method | " + " | ".join(METRICS) + " |")
    lines.append("|---" * (len(METRICS) + 1) + "|")
    for method, ms in means.items():
        lines.append(f"| {method} | " + " | ".join(_fmt(*ms[m]) for m in METRICS) + " |")
    floors = [f for f in ("popular", "frozen") if f in means]
    if floors:
        lines.append("")
        for method, ms in means.items():
            if method in floors:
                continue
            beaten = [f for f in floors if ms["ndcg@10"][0] > means[f]["ndcg@10"][0]]
            missed = [f for f in floors if f not in beaten]
            verdict = "beats " + ", ".join(beaten) if beaten else ""
            if missed:
                verdict += ("; " if verdict else "") + "does NOT beat " + ", ".join(missed)
            lines.append(f"- {method} (NDCG@10): {verdict}")
    refs = sorted({ref for d in (intervals or {}).values() for ref in d}, key=["single", "peso"].index)
    if refs:
        lines += [
            "",
            "## NDCG@10 difference over continual blocks, paired bootstrap 95% interval over test users",
            "",
            "Mean over blocks of the per-user difference (method - reference), users resampled within each"
            " block, seeds averaged per user; * = the interval excludes 0.",
            "",
            "| method | " + " | ".join(f"vs {r}" for r in refs) + " |",
            "|---" * (len(refs) + 1) + "|",
        ]
        for method, d in intervals.items():
            lines.append(f"| {method} | " + " | ".join(str(d[r]) if r in d else "" for r in refs) + " |")
    lines += _per_block(rows)
    lines += ["", "## Every block", ""]
    cols = ["method", "seed", "block", "users", *METRICS, "train_seconds", "best_epoch"]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|---" * len(cols) + "|")
    for r in rows:
        cells = [
            f"{r[c]:.4f}" if c in METRICS else (f"{r[c]:.1f}" if c == "train_seconds" else str(r.get(c, "")))
            for c in cols
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _per_block(rows: list[dict]) -> list[str]:
    """Hit@10 / NDCG@10 per block, mean ± std over seeds, the adapter state kept after the last block and
    the mean training time of a continual block (over blocks and seeds)."""
    blocks = sorted({r["block"] for r in rows})
    lines = ["", "## Per block: Hit@10 / NDCG@10 (mean ± std over seeds), storage and training time", ""]
    lines.append(
        "| method | "
        + " | ".join(f"block {b}" for b in blocks)
        + " | bytes after last block | train s per continual block |"
    )
    lines.append("|---" * (len(blocks) + 3) + "|")
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for b in blocks:
            rs = [r for r in rows if r["method"] == method and r["block"] == b]
            if not rs:  # a run still going: this block is not done yet
                cells.append("")
                continue
            h, n = [r["hit@10"] for r in rs], [r["ndcg@10"] for r in rs]
            cells.append(f"{_fmt(np.mean(h), sd(h), len(h))} / {_fmt(np.mean(n), sd(n), len(n))}")
        last = [
            r.get("adapter_bytes", 0) or 0 for r in rows if r["method"] == method and r["block"] == blocks[-1]
        ]
        cells.append(f"{int(np.max(last)):,}" if last else "")
        secs = [float(r.get("train_seconds") or 0) for r in rows if r["method"] == method and r["block"] >= 1]
        cells.append(f"{np.mean(secs):.1f}" if secs else "")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.2))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for i, method in enumerate(methods):
        by_block = defaultdict(list)
        for r in rows:
            if r["method"] == method:
                by_block[r["block"]].append(r["ndcg@10"])
        blocks = sorted(by_block)
        mean = [np.mean(by_block[b]) for b in blocks]
        std = [sd(by_block[b]) for b in blocks]
        # past the 10 colours of the cycle, a new line style keeps methods apart
        style = ("-", "--", ":", "-.")[(i // 10) % 4]
        ax.errorbar(blocks, mean, yerr=std, marker="o", capsize=3, linestyle=style, label=method)
    ax.set_xlabel("block (0 = base)")
    ax.set_ylabel("NDCG@10 (test)")
    ax.set_title(title)
    ax.set_xticks(sorted({r["block"] for r in rows}))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")  # outside: never over a line
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def console_table(rows: list[dict], title: str):
    from rich.table import Table

    table = Table(title=title)
    blocks = sorted({r["block"] for r in rows})
    table.add_column("method")
    for b in blocks:
        table.add_column(f"block {b}\nH@10 / N@10", justify="right")
    table.add_column("mean 1..T-1\nH@10 / N@10", justify="right")
    means = continual_means(rows)
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for b in blocks:
            rs = [r for r in rows if r["method"] == method and r["block"] == b]
            cells.append(
                f"{np.mean([r['hit@10'] for r in rs]):.4f} / {np.mean([r['ndcg@10'] for r in rs]):.4f}"
            )
        m = means.get(method)
        cells.append(f"{m['hit@10'][0]:.4f} / {m['ndcg@10'][0]:.4f}" if m else "-")
        table.add_row(method, *cells)
    return table


@dataclass(frozen=True)
class Trained:
    """What a results row records of one block's training, for adapter and standalone methods alike."""

    seconds: float
    best_epoch: int | None  # None: no epoch was picked on validation (fixed epochs)
    targets_per_second: float
    valid_loss: float | None = None  # of the model evaluated (the restored epoch's; LSAT's fused model)


class ResultsLog:
    """results.csv, training.csv and the per-user NDCG@10 of the run so far; rewritten atomically after
    every unit, so a killed run leaves readable tables."""

    def __init__(self, out: Path, summary: dict | None = None) -> None:
        self.out, self.summary = out, dict(summary or {})
        self.rows: list[dict] = []
        self.train_log: list[dict] = []
        self.per_user: dict[tuple[str, int, int], np.ndarray] = {}  # (method, seed, block) -> NDCG@10

    def mark(self) -> tuple[int, int, int]:
        return len(self.rows), len(self.train_log), len(self.per_user)

    def since(self, mark: tuple[int, int, int]) -> tuple[list[dict], list[dict], dict]:
        """What was added after `mark`: rows, training log, per-user arrays keyed (method, block)."""
        keys = list(self.per_user)[mark[2] :]
        return (
            self.rows[mark[0] :],
            self.train_log[mark[1] :],
            {(m, b): self.per_user[(m, s, b)] for m, s, b in keys},
        )

    def rollback(self, mark: tuple[int, int, int]) -> None:
        """Forget what a failed unit added."""
        del self.rows[mark[0] :], self.train_log[mark[1] :]
        for k in list(self.per_user)[mark[2] :]:
            del self.per_user[k]
        self.flush()

    def extend(self, seed: int, rows: list[dict], train_log: list[dict], per_user: dict) -> None:
        """A completed unit's records, replayed."""
        self.rows += rows
        self.train_log += train_log
        self.per_user.update({(m, seed, b): v for (m, b), v in per_user.items()})

    def add(
        self,
        method: str,
        seed: int,
        block: int,
        users: int,
        metrics: dict[str, float],
        ndcg: np.ndarray,
        trained: Trained | None = None,
        nbytes: int = 0,
    ) -> dict:
        row = {
            "method": method,
            "seed": seed,
            "block": block,
            "users": users,
            **metrics,
            "train_seconds": trained.seconds if trained else 0.0,
            "best_epoch": trained.best_epoch if trained and trained.best_epoch is not None else "",
            "targets_per_s": round(trained.targets_per_second, 1) if trained else "",
            "valid_loss": trained.valid_loss if trained and trained.valid_loss is not None else "",
            "adapter_bytes": nbytes,
        }
        self.rows.append(row)
        self.per_user[(method, seed, block)] = ndcg
        return row

    def training(self, method: str, seed: int, block: int, report) -> None:  # noqa: ANN001 (train.BlockReport)
        """One training.csv row per epoch of a block. `pass` numbers the trainings of one block (LSAT and
        peso-select train more than once)."""
        done = sum(
            1
            for r in self.train_log
            if (r["method"], r["seed"], r["block"], r["epoch"]) == (method, seed, block, 1)
        )
        for e in range(report.epochs):
            ce, extra = report.train_ce[e], report.train_penalty[e]
            self.train_log.append(
                {
                    "method": method,
                    "seed": seed,
                    "block": block,
                    "pass": done + 1,
                    "epoch": e + 1,
                    "train_ce": ce,
                    "proximal": extra,
                    "proximal_share": extra / (ce + extra),
                    "valid_loss": report.valid_losses[e],
                    "best": int(e + 1 == report.best_epoch),
                }
            )

    def flush(self) -> None:
        write_csv(self.rows, self.out / "results.csv")
        path = self.out / "training.csv"
        if self.train_log:
            buf = io.StringIO()
            names = list(dict.fromkeys(k for r in self.train_log for k in r))  # folders from before `pass`
            w = csv.DictWriter(buf, fieldnames=names, restval="", lineterminator="\n")
            w.writeheader()
            w.writerows(self.train_log)
            write_text(path, buf.getvalue())
        elif path.exists() and is_main():
            path.unlink()

    def report(self, done: int, total: int, final: bool = False) -> None:
        """results.md from the rows so far; an unfinished run says so at its top."""
        summary = dict(self.summary)
        if not final:
            summary = {
                "incomplete": f"{done} of {total} units (resume with `peso run --resume {self.out}`)",
                **summary,
            }
        shares: dict[str, list[float]] = {}
        for r in self.train_log:
            if r["block"] > 0 and r["proximal"] > 0:
                shares.setdefault(r["method"], []).append(r["proximal_share"])
        if shares:  # how much the extra term weighs: lambda is only meaningful against it
            summary["extra term's share of the training loss (mean over continual epochs)"] = ", ".join(
                f"{m} {np.mean(v):.2e}" for m, v in shares.items()
            )
        write_text(self.out / "results.md", markdown(self.rows, summary, compare_methods(self.per_user)))
