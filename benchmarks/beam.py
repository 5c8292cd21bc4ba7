"""Beam width at evaluation (issue 18 §1): one trained block-0 model, decoded at several beam widths on block
0's validation targets (what chooses) and its test targets (reported), with the seconds each decode took.

    python benchmarks/beam.py runs/recipe-cds/h64 --beams 10 20 50 100 --json benchmarks/results/beam-cds.json

The model is the run's `frozen` state (block 0's model, unchanged; `--method LABEL` where that entry has a
label), loaded through `peso deploy` into a temporary store, as the live path loads it. `--block N --method
LABEL` decodes block N's targets with that method's model after block N instead (a validation figure for the
continual blocks): its last state with block N's exported adapter (PEFT's LoRA and item-row deltas) loaded
over it, and the method's own tensors exported beside it (past adapters, LSAT's long-term adapter) as its
state at block N. Either way the model must give the run's
own top-10 lists for the first batch of test users the run decoded, or the script stops. Runs on one thread.

    python benchmarks/beam.py runs/sports-base --method single --block 2 --beams 50
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from peso.config import RunConfig
from peso.dataset import prepare
from peso.decode import recommend
from peso.errors import PesoError
from peso.evaluate import Evaluator
from peso.inputs import encode
from peso.io import write_text
from peso.live import deploy, load_version
from peso.metrics import per_user
from peso.store import Store
from peso.strategies.base import State

PEFT_AND_ROWS = ("adapter_model.safetensors", "item_rows.safetensors")  # what every adapter folder has


def decode_splits(
    run: Path,
    beams: list[int] | None = None,
    max_users: int | None = None,
    splits: tuple[str, ...] = ("valid", "test"),
    method: str = "frozen",
    block: int | None = None,
    users: bool = False,
) -> tuple[dict[str, dict], int]:
    """{beam: {split: {hit@10, ndcg@10, seconds}}} of the run's block-0 model (default: the run's own beam),
    and the users decoded. `method`: the label of the run's `frozen` entry; with `block` (a continual block
    number), any LLM method's, decoded on that block with its state after it. `users`: each split also
    gets its per-user NDCG@10 and the sha256 of its user IDs, for paired comparisons."""
    cfg = RunConfig.model_validate(yaml.safe_load((run / "config.yaml").read_text()))
    entry = next((m for m in cfg.methods if m.key == method), None)
    if block is None and (entry is None or entry.name != "frozen"):
        # Another method's last state is a later block's model: decoding block 0 with it would mislabel it.
        frozen = [m.key for m in cfg.methods if m.name == "frozen"] or ["none"]
        raise PesoError(
            "--method",
            f"'{method}' is not a `frozen` entry of {run / 'config.yaml'}",
            f"choose one of: {', '.join(frozen)}",
        )
    beams = beams or [cfg.decode.beam]
    prep = prepare(cfg)
    numbers = [int(s.number) for s in prep.samples]
    if block is not None and block not in numbers[1:]:
        raise PesoError("--block", f"{block} is not a continual block of {run}", f"choose from {numbers[1:]}")
    at = 0 if block is None else numbers.index(block)
    samples, trie = prep.samples[at], prep.tries[at]
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        live = load_version(Store.open(deploy(run, method, None, Path(tmp) / "store")), 1)
        if block is None:  # the `frozen` entry's model is block 0's: decoded as block 0 was trained
            live.space.item_softmax = cfg.model.item_softmax
        if block is not None:  # a run keeps the full state of the last block only; every block's adapter
            adapter = run / f"seed_{cfg.seeds[0]}" / method / f"block_{block}" / "adapter"
            set_peft_model_state_dict(live.model, load_file(adapter / "adapter_model.safetensors"))
            # a method's own tensors beside it (SumLoRA's and SD-LoRA's past adapters, LSAT's long-term one)
            # are its state's tensors at that block; the rest of the state (flags) is the last block's
            own = sorted(set(adapter.glob("*.safetensors")) - {adapter / f for f in PEFT_AND_ROWS})
            if own:
                meta = live.store.state(live.number).meta
                live.method.load_state(
                    live.model, State({k: v for f in own for k, v in load_file(f).items()}, meta)
                )
        _check(run, cfg, prep, live, at, method)  # whatever beams and users are asked for
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
                each = per_user(ranked, targets)
                scores = {m: float(np.mean(v)) for m, v in each.items()}
                row = out.setdefault(str(beam), {})
                row[split] = {"hit@10": scores["hit@10"], "ndcg@10": scores["ndcg@10"], "seconds": seconds}
                if users:
                    ids = "\n".join(str(samples.users[u]) for u in enc.users[:n]).encode()
                    row[split] |= {
                        "ndcg@10_users": [round(float(v), 8) for v in each["ndcg@10"]],
                        "users_sha256": hashlib.sha256(ids).hexdigest(),
                    }
                print(
                    f"beam {beam:4d} {split}: Hit@10 {scores['hit@10']:.4f} NDCG@10 {scores['ndcg@10']:.4f}"
                    f" ({seconds:.0f} s, {n} users)",
                    flush=True,
                )
    return out, n


def _check(run: Path, cfg: RunConfig, prep, live, at: int, method: str) -> None:
    """The loaded model gives the run's own top-k lists (recommendations.csv) for the first batch the run
    decoded, or it is not the model the run evaluated. Same batch (the main process's shard, in recommend's
    length order), settings and thread count, so the same floats: the lists must match exactly."""
    d, seed, number = cfg.decode, cfg.seeds[0], int(prep.samples[at].number)
    info = json.loads((run / "manifest.json").read_text())
    folder = run / f"seed_{seed}" / ("block_0" if at == 0 else f"{method}/block_{number}")
    with (folder / "recommendations.csv").open(newline="") as f:
        saved = [r["recommendations"] for r in csv.DictReader(f)]  # text: item IDs may look like numbers
    enc = encode(prep.samples[at], live.space, "test")
    mine = np.array_split(np.arange(len(enc.prompts)), info.get("processes", 1))[0]  # as peso.dist.shard
    first = mine[np.argsort([len(enc.prompts[i]) for i in mine], kind="stable")[: d.batch_size]]
    threads = torch.get_num_threads()
    torch.set_num_threads(info.get("torch_threads", threads))
    try:
        ranked = recommend(
            live.model,
            [enc.prompts[i] for i in first],
            live.space,
            prep.tries[at],
            d.beam,
            d.top_k,
            d.batch_size,
            "check",
            d.merge,
            d.compile,
        )
    finally:
        torch.set_num_threads(threads)
    names = Evaluator(prep.index, prep.tries, prep.samples, d).sid_items
    wrong = sum(
        " ".join(names[g] for g in row if g >= 0) != saved[i] for i, row in zip(first, ranked, strict=True)
    )
    if wrong:
        here = torch.backends.cpu.get_cpu_capability()
        fix = (
            f"decode where the run ran (its manifest: {info.get('cpu_capability')}; here: {here})"
            if info.get("cpu_capability") != here or "peak_gpu_mb" in info  # other kernels, other floats
            else f"check that block {number}'s adapter folder holds every file the method exported"
            if at
            else f"check that {run} is the run folder this model came from"
        )
        raise PesoError(
            "--method",
            f"{method}'s model after block {number} is not the one the run evaluated ({wrong} of the first"
            f" {len(first)} test users get other top-{d.top_k} lists than {folder / 'recommendations.csv'})",
            fix,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a run folder with the `frozen` method")
    ap.add_argument("--beams", nargs="+", type=int, default=[10, 20, 50, 100])
    ap.add_argument("--method", default="frozen", help="the label of the run's `frozen` entry (frozen)")
    ap.add_argument("--block", type=int, help="a continual block: decode it with --method's state after it")
    ap.add_argument("--max-users", type=int, help="the first N users of block 0 only")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)

    out, n = decode_splits(args.run, args.beams, args.max_users, method=args.method, block=args.block)
    chosen = max(out, key=lambda b: (out[b]["valid"]["ndcg@10"], -int(b)))
    print(f"chosen by validation NDCG@10: beam {chosen}")
    if args.json:
        payload = {"run": str(args.run), "method": args.method, "block": args.block or 0, "users": n}
        payload |= {"chosen": int(chosen), "beams": out}
        write_text(args.json, json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    try:
        main()
    except PesoError as e:  # bad input: one line and exit code 2, as the CLI does
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
