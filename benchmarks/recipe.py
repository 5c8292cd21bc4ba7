"""Block-0 recipe study (issue 18 §1): train the `tiny` LLM recommender on block 0 under each setting, to
convergence (early stopping on validation loss, the epochs a cap sized so a setting fits ~60 min on one core),
and compare the settings by validation loss only. Block-0 test Hit@10 / NDCG@10 are reported beside it, never
used to choose. SASRec and LightGCN, trained to convergence the same way in their own folder, are the
references, paired per test user.

    python benchmarks/recipe.py --config configs/cds.yaml --out runs/recipe-cds --only h64 h128 \\
        --refs runs/recipe-cds/classic --json benchmarks/results/recipe-cds.json --png docs/img/recipe-cds.png

Each setting is a `peso run` of blocks 0-1 with `frozen` (a run needs a later block; block 1 costs one decode)
in OUT/<setting>; a finished folder is read, an unfinished one resumed. Runs use one thread. A setting's
overrides are `--set` values, listed in SETTINGS below. `--rule ndcg` chooses by block 0's validation NDCG@10
instead (each setting's validation targets decoded once at its beam, 20-60 s, kept in its folder).

A setting is overrides on the config given, so its name describes it only against the config it was named
for: the `h64*` names date from configs with hidden 64 at lr 3e-3. `configs/cds.yaml` (since 9ca75df) and
`configs/beauty.yaml` (since issue 18's Beauty three-seed check) hold hidden 128 at lr 1e-3 with attention
dropout 0.5, so there `h64` runs that committed model at a 30-epoch cap (the config's is 20, and the cosine
schedule spans the cap); the `h128-*` settings pin every value they name.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from peso.compare import paired_bootstrap
from peso.io import write_text
from peso.runfolder import read_units

COMMON = ["threads=1", "data.blocks=[0,1]", "methods=[frozen]", "train.patience=3"]
# name -> (overrides, what it changes). The caps come from measured epoch times on CDs (h64: ~70 s an epoch).
SETTINGS: dict[str, tuple[list[str], str]] = {
    "h64": (
        ["train.epochs=30"],
        "the config's model as committed (when named: hidden 64, 2 layers, lr 3e-3), to convergence",
    ),
    "h64-lr1e-3": (["train.epochs=30", "train.lr=1.0e-3"], "lr 1e-3"),
    "h64-lr1e-2": (["train.epochs=30", "train.lr=1.0e-2"], "lr 1e-2"),
    "h128": (["train.epochs=20", "model.tiny.hidden=128", "model.tiny.intermediate=512"], "hidden 128"),
    "h256": (["train.epochs=8", "model.tiny.hidden=256", "model.tiny.intermediate=1024"], "hidden 256"),
    "h256-e12": (
        ["train.epochs=12", "model.tiny.hidden=256", "model.tiny.intermediate=1024"],
        "hidden 256, a 12-epoch cap (fits 60 min where block 0 converges in ~10 epochs, as under the trie)",
    ),
    "h128-lr1e-3": (
        ["train.epochs=20", "model.tiny.hidden=128", "model.tiny.intermediate=512", "train.lr=1.0e-3"],
        "hidden 128 at lr 1e-3 (at 3e-3 the wider models sit on the loss plateau)",
    ),
    "h256-e12-lr1e-3": (
        ["train.epochs=12", "model.tiny.hidden=256", "model.tiny.intermediate=1024", "train.lr=1.0e-3"],
        "hidden 256 at lr 1e-3, a 12-epoch cap",
    ),
    "h256-e12-lr3e-4": (
        ["train.epochs=12", "model.tiny.hidden=256", "model.tiny.intermediate=1024", "train.lr=3.0e-4"],
        "hidden 256 at lr 3e-4, a 12-epoch cap",
    ),
    "h128-lr1e-3-drop0.5": (
        [
            "train.epochs=20",
            "model.tiny.hidden=128",
            "model.tiny.intermediate=512",
            "train.lr=1.0e-3",
            "model.tiny.dropout=0.5",
        ],
        "hidden 128 at lr 1e-3, attention dropout 0.5",
    ),
    "h128-l4-lr1e-3-drop0.5": (
        [
            "train.epochs=20",
            "model.tiny.hidden=128",
            "model.tiny.intermediate=512",
            "train.lr=1.0e-3",
            "model.tiny.dropout=0.5",
            "model.tiny.layers=4",
        ],
        "4 layers at hidden 128, lr 1e-3, attention dropout 0.5 (4 layers ran at 3e-3 only, on the plateau)",
    ),
    "h128-hist50-lr1e-3-drop0.5": (
        [
            "train.epochs=20",
            "model.tiny.hidden=128",
            "model.tiny.intermediate=512",
            "train.lr=1.0e-3",
            "model.tiny.dropout=0.5",
            "data.history=50",
        ],
        "history 50 at hidden 128, lr 1e-3, attention dropout 0.5",
    ),
    "h64-drop0.5": (["train.epochs=30", "model.tiny.dropout=0.5"], "attention dropout 0.5"),
    "h64-wd0.1": (
        ["train.epochs=30", "train.weight_decay=0.1"],
        "AdamW weight decay 0.1 (the configs': 0.01)",
    ),
    "h64-l4": (["train.epochs=20", "model.tiny.layers=4"], "4 layers"),
    "h64-hist50": (["train.epochs=30", "data.history=50"], "history 50"),
    "h64-drop0.1": (["train.epochs=30", "model.tiny.dropout=0.1"], "attention dropout 0.1"),
    "h64-codebook-drop0.1": (
        ["train.epochs=30", "model.item_init=codebook", "model.tiny.dropout=0.1"],
        "codebook rows and attention dropout 0.1",
    ),
    "h64-rows-random": (
        ["train.epochs=30", "model.item_init=random"],
        "item-token rows at random: on Beauty, whose config takes codebook rows, dropout without them",
    ),
    "h64-codebook": (
        ["train.epochs=30", "model.item_init=codebook"],
        "item-token rows from the codebooks' centroids (data from peso tokenize only)",
    ),
}


def run_setting(config: Path, out: Path, name: str) -> Path:
    folder = out / name
    overrides = [*COMMON, *SETTINGS[name][0]]
    if (folder / "progress.json").is_file():
        units = json.loads((folder / "progress.json").read_text())["completed"]
        if len(units) >= 2:  # block 0 and frozen's block 1
            return folder
        cmd = ["peso", "run", "--resume", str(folder)]
    else:
        cmd = ["peso", "run", "--config", str(config), "--out", str(folder)]
        cmd += [f"--set={o}" for o in overrides]
    print("$", " ".join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if subprocess.run(cmd, env=env).returncode != 0:
        raise SystemExit(f"{name}: peso run failed (see above)")
    return folder


def block0(folder: Path, method: str) -> dict:
    """One method's block-0 figures and learning curve from a run folder."""
    rows, log, per_user = read_units(folder)
    row = next(r for r in rows if r["method"] == method and int(r["block"]) == 0)
    # a `frozen` entry (under any label) is the LLM's shared block 0, logged as "block0"
    entries = yaml.safe_load((folder / "config.yaml").read_text())["methods"]
    frozen = {"frozen"} | {
        e.get("label") or "frozen" for e in entries if isinstance(e, dict) and e.get("name") == "frozen"
    }
    label = "block0" if method in frozen else method
    mine = [r for r in log if r["method"] == label and int(r["block"]) == 0]
    curve = [float(r["valid_loss"]) for r in mine]
    return {
        "valid_loss": min(curve) if curve else None,
        "curve": curve,
        "train_curve": [float(r["train_ce"]) for r in mine],
        "epochs": len(curve),
        "best_epoch": int(row["best_epoch"]) if row["best_epoch"] else None,  # fixed-epoch methods: none
        "hit@10": float(row["hit@10"]),
        "ndcg@10": float(row["ndcg@10"]),
        "train_seconds": float(row["train_seconds"]),
        "users": int(row["users"]),
        "per_user": per_user[(method, 0, 0)],
    }


def valid_ndcg(folder: Path) -> float:
    """Block 0's validation NDCG@10 at the run's own beam, decoded once and kept in the folder (20-60 s)."""
    cache = folder / "valid-ndcg.json"
    if cache.is_file():
        return json.loads(cache.read_text())["ndcg@10"]
    import beam  # benchmarks/beam.py, beside this script

    ((width, row),) = beam.decode_splits(folder, splits=("valid",))[0].items()
    write_text(cache, json.dumps({"beam": int(width), **row["valid"]}) + "\n")
    return row["valid"]["ndcg@10"]


def choose(results: dict[str, dict], rule: str) -> str | None:
    """The setting the rule picks: lowest validation loss, or highest validation NDCG@10."""
    key = "valid_ndcg@10" if rule == "ndcg" else "valid_loss"
    llm = {n: r[key] for n, r in results.items() if n in SETTINGS and r.get(key) is not None}
    if not llm:
        return None
    return (max if rule == "ndcg" else min)(llm, key=llm.__getitem__)


def plot(results: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, tx) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, r in results.items():
        if r["curve"]:
            (line,) = ax.plot(range(1, len(r["curve"]) + 1), r["curve"], marker=".", label=name)
            tx.plot(range(1, len(r["train_curve"]) + 1), r["train_curve"], color=line.get_color(), label=name)
    ax.set(xlabel="epoch", ylabel="validation loss (CE, T=0.8)", title=f"{title}: validation")
    tx.set(xlabel="epoch", ylabel="training CE (epoch mean)", title=f"{title}: training")
    for a in (ax, tx):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="one folder per setting under it")
    ap.add_argument("--only", nargs="+", choices=list(SETTINGS), help="these settings (default: all)")
    ap.add_argument("--no-run", action="store_true", help="only read the folders that exist")
    ap.add_argument("--refs", nargs="*", type=Path, default=[], help="run folders of sasrec/lightgcn")
    ap.add_argument(
        "--ref-methods",
        nargs="+",
        help="only these methods of the --refs folders (default: every method with a block-0 row)",
    )
    ap.add_argument("--json", type=Path)
    ap.add_argument("--png", type=Path)
    ap.add_argument(
        "--rule",
        choices=["loss", "ndcg"],
        default="loss",
        help="choose by validation loss, or by validation NDCG@10 (decodes each setting's validation targets)",
    )
    args = ap.parse_args()

    names = args.only or list(SETTINGS)
    results: dict[str, dict] = {}
    for name in names:
        folder = args.out / name
        if not args.no_run:
            run_setting(args.config, args.out, name)
        elif not (folder / "progress.json").is_file():
            continue
        try:
            results[name] = block0(folder, "frozen")
        except (StopIteration, KeyError):
            print(f"({name}: block 0 not finished yet)")
            continue
        if args.rule == "ndcg":
            results[name]["valid_ndcg@10"] = valid_ndcg(folder)
    for ref in args.refs:
        rows, _, _ = read_units(ref)
        for method in dict.fromkeys(r["method"] for r in rows if int(r["block"]) == 0):
            if args.ref_methods is None or method in args.ref_methods:
                results[method] = block0(ref, method)
    if not results:
        raise SystemExit("no finished setting to report")

    # chosen on validation only, among the LLM settings
    chosen = choose(results, args.rule)
    refs = [n for n in results if n not in SETTINGS] + (["h64"] if "h64" in results else [])
    nd = args.rule == "ndcg"
    header = "| setting | valid loss | " + ("valid NDCG@10 | " if nd else "")
    header += "epochs (best) | train s | Hit@10 | NDCG@10 | " + " | ".join(f"NDCG@10 vs {r}" for r in refs)
    lines = [header + " |", "|---" * (6 + nd + len(refs)) + "|"]
    out: dict[str, dict] = {}
    for name, r in results.items():
        vs = {}
        for ref in refs:
            if ref != name and len(results[ref]["per_user"]) == len(r["per_user"]):
                vs[ref] = paired_bootstrap([r["per_user"]], [results[ref]["per_user"]])
        vl = f"{r['valid_loss']:.4f}" if r["valid_loss"] is not None else ""
        mark = " (chosen)" if name == chosen else ""
        vn = ("" if r.get("valid_ndcg@10") is None else f"{r['valid_ndcg@10']:.4f}") + " | " if nd else ""
        lines.append(
            f"| {name}{mark} | {vl} | {vn}{r['epochs'] or ''} ({r['best_epoch'] or ''}) | {r['train_seconds']:.0f} | "
            f"{r['hit@10']:.4f} | {r['ndcg@10']:.4f} | " + " | ".join(str(vs.get(x, "")) for x in refs) + " |"
        )
        out[name] = {k: v for k, v in r.items() if k != "per_user"} | {
            "what": SETTINGS[name][1] if name in SETTINGS else "reference",
            "overrides": [*COMMON, *SETTINGS[name][0]] if name in SETTINGS else None,
            "vs": {k: {"mean": i.mean, "low": i.low, "high": i.high} for k, i in vs.items()},
        }
    table = "\n".join(lines)
    print(table)
    print(f"chosen by validation {'NDCG@10' if nd else 'loss'}: {chosen}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "config": str(args.config),
            "rule": args.rule,
            "chosen": chosen,
            "settings": out,
            "table": table,
        }
        write_text(args.json, json.dumps(payload, indent=1) + "\n")
    if args.png:
        plot(results, args.png, f"block 0 learning curves ({args.config.stem})")


if __name__ == "__main__":
    sys.exit(main())
