"""Each method's continual schedule chosen on validation, by one rule for every method (issue 18 §2).

`grid` writes the `methods:` list that runs every method under every schedule in one run, so that the
schedules share block 0 (a method's own `continual_lr_scale` / `continual_epochs` / `continual_patience`):

    python benchmarks/schedule.py grid --methods single "{name: peso, lam: 1000.0}" --lr-scales 0.1 0.3 1.0 \\
        --epochs 4 --patience 1 > runs/grid.yaml
    peso run --config configs/beauty.yaml --out runs/beauty-schedule --set threads=1 "--set=methods=$(cat runs/grid.yaml)"

`choose` reads the run folders and keeps, per method, the schedule with the lowest validation loss (of the
model that is evaluated, results.csv's `valid_loss`) averaged over continual blocks and seeds
(`--choice-seeds`: those seeds only, when the chosen schedules alone were re-run at more seeds;
`--first-training`: the old rule, training.csv's first training, for LSAT its long-term adapter). Test
figures of the chosen schedules follow, with paired intervals against the references' chosen schedules; test
never enters the choice. Methods with no
continual schedule of their own (`frozen`, `popular`, the non-LLM methods of another folder of the same blocks)
stand as they ran, and can be references too:

    python benchmarks/schedule.py choose runs/beauty-schedule runs/classic-beauty-conv --refs single pisa \
        --json benchmarks/results/schedule-beauty.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml
from combine_runs import combine

from peso.compare import compare_methods
from peso.config import RunConfig
from peso.errors import PesoError
from peso.io import write_text
from peso.report import continual_means, plot
from peso.runfolder import CONFIG, RESULTS, TRAINING, read_csv
from peso.settings import item_softmax_at

SCHEDULE = ("continual_lr_scale", "continual_epochs", "continual_patience")


def grid(methods: list[str], lr_scales: list[float], epochs: int | None, patience: int | None) -> list[dict]:
    out = []
    for text in methods:
        entry = yaml.safe_load(text)
        entry = {"name": entry} if isinstance(entry, str) else dict(entry)
        base = entry.pop("label", None) or entry["name"]
        for scale in lr_scales:
            e = {**entry, "label": f"{base}@{scale:g}", "continual_lr_scale": scale}
            if epochs is not None:
                e["continual_epochs"] = epochs
            if patience is not None:
                e["continual_patience"] = patience
            out.append(e)
    return out


def families(runs: list[Path]) -> dict[str, dict[str, dict]]:
    """method (its label before '@') -> label -> the schedule it ran, from the runs' configs."""
    out: dict[str, dict[str, dict]] = {}
    for run in runs:
        cfg = RunConfig.model_validate(yaml.safe_load((run / CONFIG).read_text()))
        for m in cfg.methods:
            if not all(hasattr(m, k) for k in SCHEDULE):
                continue  # no continual schedule of its own (frozen, retrain, standalone methods)
            tc = m.train_config(cfg.train)
            sched = {"lr_scale": tc.continual_lr_scale, "epochs": tc.continual_epochs or tc.epochs}
            sched["patience"] = tc.continual_patience or tc.patience
            sched["item_softmax"] = item_softmax_at(cfg.model, cfg.train, m, 1)  # what the losses are of
            out.setdefault(m.key.split("@")[0], {})[m.key] = sched
    return out


def validation_losses(
    runs: list[Path], seeds: list[int] | None = None, first_training: bool = False
) -> dict[str, float]:
    """label -> mean over (seed, continual block) of the evaluated model's validation loss (results.csv's
    `valid_loss`: the restored epoch's, or LSAT's fused model's); only `seeds`' if given (a choice made at
    one seed, its schedules re-run at more). Rows from before that column fall back to training.csv's first
    training of the block, which for LSAT is its long-term adapter alone; `first_training` reads only that
    (the rule before results.csv had the column, to reproduce its choices)."""
    best: dict[tuple[str, int, int], float] = {}

    def wanted(r: dict) -> bool:
        return r["block"] >= 1 and (seeds is None or r["seed"] in seeds)

    for run in runs:
        for r in read_csv(run / RESULTS) if (run / RESULTS).exists() and not first_training else []:
            if wanted(r) and isinstance(r.get("valid_loss"), float):
                best[(r["method"], r["seed"], r["block"])] = r["valid_loss"]
        if not (run / TRAINING).exists():  # a folder of methods that log no epochs (popular, the graph ones)
            continue
        for r in read_csv(run / TRAINING):
            if wanted(r) and r["best"] == 1:
                best.setdefault((r["method"], r["seed"], r["block"]), r["valid_loss"])
    by: dict[str, list[float]] = {}
    for (label, _, _), v in best.items():
        by.setdefault(label, []).append(v)
    return {k: float(np.mean(v)) for k, v in by.items()}


def choose(
    runs: list[Path], refs: list[str], choice_seeds: list[int] | None = None, first_training: bool = False
) -> dict:
    fams, losses = families(runs), validation_losses(runs, choice_seeds, first_training)
    rows, per_user, _ = combine(runs)
    means = continual_means(rows)
    chosen = {}
    for fam, labels in fams.items():
        softmaxes = sorted({str(s.get("item_softmax")) for s in labels.values()})
        if len(softmaxes) > 1:  # a loss normalised over the trie is lower by construction
            raise PesoError(
                "runs", f"{fam}'s schedules ran under item softmaxes {softmaxes}", "choose within one softmax"
            )
        have = [lab for lab in labels if lab in losses and lab in means]
        if have:
            chosen[fam] = min(have, key=lambda lab: losses[lab])
    # methods without a continual schedule of their own (frozen, popular, PISA, ...) stand as they ran
    gridded = {lab for labels in fams.values() for lab in labels}
    for m in dict.fromkeys(m for m, _, _ in per_user):
        if m not in gridded and m in means:
            chosen[m] = m
    # intervals between chosen schedules: rename each chosen label to its method's name
    renamed = {(fam, s, b): v for fam, lab in chosen.items() for (m, s, b), v in per_user.items() if m == lab}
    intervals = compare_methods(renamed, tuple(refs))
    out = {}
    for fam, lab in chosen.items():
        out[fam] = {
            "chosen": lab,
            "schedule": fams.get(fam, {}).get(lab),
            "valid_loss": {x: losses[x] for x in fams.get(fam, {}) if x in losses},
            "ndcg@10": means[lab]["ndcg@10"][:2],
            "hit@10": means[lab]["hit@10"][:2],
            "seeds": means[lab]["ndcg@10"][2],
            "test_ndcg@10_of_each": {
                x: means[x]["ndcg@10"][0] for x in fams.get(fam, {lab: None}) if x in means
            },
            "vs": {r: str(iv) for r, iv in intervals.get(fam, {}).items()},
        }
    return out


def _mean_sd(ms: list[float], seeds: int) -> str:
    return f"{ms[0]:.4f} ± {ms[1]:.4f}" if seeds > 1 else f"{ms[0]:.4f}"


def table(result: dict, refs: list[str]) -> str:
    head = ["method", "chosen (valid loss)", "other schedules (valid loss)", "seeds", "NDCG@10", "Hit@10"]
    head += [f"vs {r}" for r in refs]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for fam, r in result.items():
        others = ", ".join(f"{k} ({v:.4f})" for k, v in r["valid_loss"].items() if k != r["chosen"])
        loss = r["valid_loss"].get(r["chosen"])
        cells = [fam, r["chosen"] if loss is None else f"{r['chosen']} ({loss:.4f})", others or "(none)"]
        cells += [str(r["seeds"]), *(_mean_sd(r[k], r["seeds"]) for k in ("ndcg@10", "hit@10"))]
        cells += [r["vs"].get(x, "") for x in refs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grid", help="the methods list of a schedule grid")
    g.add_argument("--methods", nargs="+", required=True, help="method entries, as in a config's list")
    g.add_argument("--lr-scales", nargs="+", type=float, default=[0.1, 0.3, 1.0])
    g.add_argument("--epochs", type=int, help="continual_epochs (a cap with --patience)")
    g.add_argument("--patience", type=int, help="continual_patience")
    c = sub.add_parser("choose", help="each method's schedule by validation loss")
    c.add_argument("runs", nargs="+", type=Path)
    c.add_argument("--refs", nargs="+", default=["single"])
    c.add_argument("--md", type=Path)
    c.add_argument("--json", type=Path)
    c.add_argument("--png", type=Path, help="per-block test NDCG@10 of the chosen schedules")
    c.add_argument(
        "--choice-seeds", nargs="+", type=int, help="choose on these seeds' validation only (default: all)"
    )
    c.add_argument(
        "--first-training",
        action="store_true",
        help="choose on training.csv's first training per block (the old rule: LSAT's long-term adapter alone)",
    )
    args = ap.parse_args()
    if args.cmd == "grid":
        print(
            yaml.safe_dump(
                grid(args.methods, args.lr_scales, args.epochs, args.patience),
                default_flow_style=True,
                width=10**6,
            ).strip()
        )
        return 0
    for run in args.runs:
        if not (run / CONFIG).is_file():
            print(f"{run}: no {CONFIG}: give run folders written by `peso run`", file=sys.stderr)
            return 2
    result = choose(args.runs, args.refs, args.choice_seeds, args.first_training)
    text = table(result, args.refs)
    print(text)
    if args.md:
        write_text(args.md, text)
    if args.png:
        names = {
            r["chosen"]: fam if r["chosen"] == fam else f"{fam} ({r['chosen']})" for fam, r in result.items()
        }
        rows = [
            {**row, "method": names[row["method"]]} for row in combine(args.runs)[0] if row["method"] in names
        ]
        plot(rows, args.png, f"{args.runs[0].name}: chosen schedules, test NDCG@10 per block")
    if args.json:
        saved = {"runs": [str(r) for r in args.runs], "choice_seeds": args.choice_seeds}
        saved |= {"first_training": args.first_training, "methods": result}
        write_text(args.json, json.dumps(saved, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
