"""Beam width at evaluation (issue 18 §1): one trained block-0 model, decoded at several beam widths on block
0's validation targets (what chooses) and its test targets (reported), with the seconds each decode took.

    python benchmarks/beam.py runs/recipe-cds/h64 --beams 10 20 50 100 --json benchmarks/results/beam-cds.json

The model is the run's `frozen` state (block 0's model, unchanged; `--method LABEL` where that entry has a
label), loaded through `peso deploy` into a temporary store, as the live path loads it. Runs on one thread.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from peso.config import RunConfig
from peso.dataset import prepare
from peso.decode import recommend
from peso.errors import PesoError
from peso.inputs import encode
from peso.io import write_text
from peso.live import deploy, load_version
from peso.metrics import per_user
from peso.store import Store


def decode_splits(
    run: Path,
    beams: list[int] | None = None,
    max_users: int | None = None,
    splits: tuple[str, ...] = ("valid", "test"),
    method: str = "frozen",
) -> tuple[dict[str, dict], int]:
    """{beam: {split: {hit@10, ndcg@10, seconds}}} of the run's block-0 model (default: the run's own beam),
    and the users decoded. `method`: the label of the run's `frozen` entry."""
    cfg = RunConfig.model_validate(yaml.safe_load((run / "config.yaml").read_text()))
    entry = next((m for m in cfg.methods if m.key == method), None)
    if entry is None or entry.name != "frozen":
        # Another method's last state is a later block's model: decoding block 0 with it would mislabel it.
        frozen = [m.key for m in cfg.methods if m.name == "frozen"] or ["none"]
        raise PesoError(
            "--method",
            f"'{method}' is not a `frozen` entry of {run / 'config.yaml'}",
            f"choose one of: {', '.join(frozen)}",
        )
    beams = beams or [cfg.decode.beam]
    prep = prepare(cfg)
    samples, trie = prep.samples[0], prep.tries[0]
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        live = load_version(Store.open(deploy(run, method, None, Path(tmp) / "store")), 1)
        for split in splits:
            enc = encode(samples, live.space, split)
            n = max_users or len(enc.prompts)
            targets = prep.index.sid[enc.items[:n]]
            for beam in beams:
                start = time.perf_counter()
                ranked = recommend(
                    live.model, enc.prompts[:n], live.space, trie, beam, 10, cfg.decode.batch_size
                )
                seconds = time.perf_counter() - start
                scores = {m: float(np.mean(v)) for m, v in per_user(ranked, targets).items()}
                row = out.setdefault(str(beam), {})
                row[split] = {"hit@10": scores["hit@10"], "ndcg@10": scores["ndcg@10"], "seconds": seconds}
                print(
                    f"beam {beam:4d} {split}: Hit@10 {scores['hit@10']:.4f} NDCG@10 {scores['ndcg@10']:.4f}"
                    f" ({seconds:.0f} s, {n} users)",
                    flush=True,
                )
    return out, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a run folder with the `frozen` method")
    ap.add_argument("--beams", nargs="+", type=int, default=[10, 20, 50, 100])
    ap.add_argument("--method", default="frozen", help="the label of the run's `frozen` entry (frozen)")
    ap.add_argument("--max-users", type=int, help="the first N users of block 0 only")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)

    out, n = decode_splits(args.run, args.beams, args.max_users, method=args.method)
    chosen = max(out, key=lambda b: (out[b]["valid"]["ndcg@10"], -int(b)))
    print(f"chosen by validation NDCG@10: beam {chosen}")
    if args.json:
        payload = {"run": str(args.run), "users": n, "chosen": int(chosen), "beams": out}
        write_text(args.json, json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
