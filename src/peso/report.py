"""Results as a CSV, a Markdown table with the mean over continual blocks, a console table and a plot."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path

import numpy as np

from peso.io import atomic_file, write_text
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
    "adapter_bytes",
]


def write_csv(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    write_text(path, buf.getvalue())


def continual_means(rows: list[dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """method -> metric -> (mean over seeds of the per-seed mean over blocks >= 1, std over seeds, seeds)."""
    per = defaultdict(lambda: defaultdict(list))  # method -> seed -> rows
    for r in rows:
        if r["block"] >= 1:
            per[r["method"]][r["seed"]].append(r)
    out = {}
    for method, seeds in per.items():
        out[method] = {}
        for m in METRICS:
            vals = [np.mean([r[m] for r in rs]) for rs in seeds.values()]
            out[method][m] = (float(np.mean(vals)), float(np.std(vals)), len(vals))
    return out


def _fmt(mean: float, std: float, n: int) -> str:
    return f"{mean:.4f}" if n == 1 else f"{mean:.4f} ± {std:.4f}"


def markdown(rows: list[dict], summary: dict, intervals: dict | None = None) -> str:
    lines = ["# Results", ""]
    for k, v in summary.items():
        lines.append(f"- {k}: {v}")
    lines += ["", "## Mean over continual blocks (1..T-1)", ""]
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
            cells.append(f"{_fmt(np.mean(h), np.std(h), len(h))} / {_fmt(np.mean(n), np.std(n), len(n))}")
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

    fig, ax = plt.subplots(figsize=(7, 4.2))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for method in methods:
        by_block = defaultdict(list)
        for r in rows:
            if r["method"] == method:
                by_block[r["block"]].append(r["ndcg@10"])
        blocks = sorted(by_block)
        mean = [np.mean(by_block[b]) for b in blocks]
        std = [np.std(by_block[b]) for b in blocks]
        ax.errorbar(blocks, mean, yerr=std, marker="o", capsize=3, label=method)
    ax.set_xlabel("block (0 = base)")
    ax.set_ylabel("NDCG@10 (test)")
    ax.set_title(title)
    ax.set_xticks(sorted({r["block"] for r in rows}))
    ax.grid(alpha=0.3)
    ax.legend()
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
