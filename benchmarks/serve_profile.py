"""Where a served batch's time goes: torch.profiler over the batched trie beam search of `peso serve`, on the
store `benchmarks/serve.py` builds (CDs release catalogue, `tiny`, beam 50), a batch of 32 histories, one
thread. Prints the operator table and saves the batch time and each operator's share (JSON).

    OMP_NUM_THREADS=1 python benchmarks/serve_profile.py --json benchmarks/results/serve_profile.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from serve import ROOT, bodies_of, make_store
from torch.profiler import profile

from peso.decode import beam_search_batch
from peso.io import write_text
from peso.live import load_version
from peso.model import merged
from peso.store import Store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared/data/peso-release/CDs_and_Vinyl_cl_0.6_0_5_3_0"
    )
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--beam", type=int, default=50)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp), args.data, args.beam, "profile", [])
        live = load_version(Store(store), Store(store).current())
        trie, ids = live.trie(), live.index.item_ids()
        bodies = bodies_of(store, args.batch, live.cfg.data.history)
        prompts = [
            live.space.prompt(np.array([ids[i] for i in b["history"]], dtype=np.int64)) for b in bodies
        ]
        with merged(live.model):

            def batch() -> None:
                beam_search_batch(live.model, prompts, live.space, trie, args.beam, 10)

            batch()
            start = time.perf_counter()
            for _ in range(args.reps):
                batch()
            ms = (time.perf_counter() - start) / args.reps * 1000
            with profile() as prof:
                for _ in range(args.reps):
                    batch()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]
    out = {
        "batch": len(prompts),
        "beam": args.beam,
        "vocab": int(live.model.get_output_embeddings().weight.shape[0]),
        "level_sizes": live.space.level_sizes,
        "batch_ms": round(ms, 1),
        "share": {e.key: round(e.self_cpu_time_total / total, 4) for e in top},
    }
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))
    print({k: v for k, v in out.items() if k != "share"})
    if args.json:
        write_text(args.json, json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
