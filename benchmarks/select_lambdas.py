"""Which lambda `peso-select` kept in each block, with every candidate's best validation loss, from run folders:
the choice from the method's saved state (resume/seed_S/LABEL/block_T/unit.json), the losses from the unit's
training log (one epoch series per candidate, in `lams` order). docs/results.md ("peso-select") reads it.

    python benchmarks/select_lambdas.py runs/beauty-select runs/sports-select --json benchmarks/results/select-lambdas.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from peso.errors import PesoError
from peso.io import write_text
from peso.runfolder import CONFIG, read_progress, read_unit, unit_dir
from peso.strategies import method_settings


def series(log: list[dict]) -> list[list[float]]:
    """The unit's validation losses split into one series per training (each starts again at epoch 1)."""
    out: list[list[float]] = []
    for row in log:
        if int(row["epoch"]) == 1:
            out.append([])
        out[-1].append(float(row["valid_loss"]))
    return out


def choices(run: Path) -> list[dict]:
    """One row per (peso-select method, seed, block): the lambda kept and each candidate's best loss."""
    try:
        config = yaml.safe_load((run / CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        raise PesoError(
            str(run / CONFIG), "missing or unreadable", "give a folder that `peso run` wrote"
        ) from None
    lams = {}
    for entry in config.get("methods", []):
        settings = method_settings(entry)
        if settings.name == "peso-select":
            lams[settings.key] = settings.lams
    out = []
    for name in read_progress(run)["completed"]:
        seed, *rest = name.split("/")
        if len(rest) != 2 or rest[0] not in lams:
            continue
        unit = read_unit(unit_dir(run, name))
        losses = [min(s) for s in series(unit.train_log)]
        if len(losses) != len(lams[rest[0]]):
            raise PesoError(
                str(unit_dir(run, name)),
                f"{len(losses)} training series for {len(lams[rest[0]])} lambdas",
                "give a run folder written by this version of peso",
            )
        out.append(
            {
                "run": str(run),
                "method": rest[0],
                "seed": int(seed.removeprefix("seed_")),
                "block": int(rest[1].removeprefix("block_")),
                "kept": unit.meta["lambdas"][-1],
                "best_valid_loss": dict(zip([str(x) for x in lams[rest[0]]], losses, strict=True)),
            }
        )
    return sorted(out, key=lambda r: (r["run"], r["method"], r["seed"], r["block"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    try:
        rows = [r for run in args.runs for r in choices(run)]
    except PesoError as e:
        print(f"select_lambdas: error: {e}", file=sys.stderr)
        return 2
    print("| run | method | seed | block | lambda kept | best validation loss per lambda |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        losses = ", ".join(f"{k}: {v:.4f}" for k, v in r["best_valid_loss"].items())
        print(f"| {r['run']} | {r['method']} | {r['seed']} | {r['block']} | {r['kept']:g} | {losses} |")
    if args.json:
        write_text(args.json, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
