"""Does `torch.compile` (inductor, CPU) make training or decoding faster? Packed training steps of CDs block 0
and batched trie beam search over the CDs catalogue, the `tiny` model of configs/cds.yaml, eager against
compiled (after warm-up steps that compile), plus the training MFU: model FLOPs per second (6 x parameters
touched per target token, the usual estimate, plus the LM head at the target positions) over a measured
matmul peak of this CPU.

    OMP_NUM_THREADS=1 python benchmarks/compile.py --json benchmarks/results/compile.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from peso.config import load_config
from peso.dataset import prepare
from peso.decode import recommend
from peso.inputs import encode
from peso.io import write_text
from peso.model import attach_lora, load_backbone
from peso.pack import pack
from peso.train import packed_loss, plan_batches

ROOT = Path(__file__).resolve().parents[1]


def matmul_peak(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start)


def train_steps(model, packed, batches, temperature: float) -> tuple[float, int]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    tokens, start = 0, time.perf_counter()
    for rows in batches:
        loss = packed_loss(model, packed, rows, temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tokens += int(packed.lengths[rows].sum())
    return time.perf_counter() - start, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "cds.yaml"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--users", type=int, default=256)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cfg = load_config(args.config, ["data.blocks=[0,1]"])
    torch.set_num_threads(1)
    prep = prepare(cfg)
    out: dict = {"config": args.config, "threads": 1, "matmul_peak_gflops": round(matmul_peak() / 1e9, 1)}
    for compiled in (False, True):
        torch.manual_seed(0)
        backbone, space = load_backbone(cfg.model, prep.index)
        model = attach_lora(backbone, cfg.model, space)
        for p in model.parameters():
            p.requires_grad_(True)  # block 0 of tiny trains every weight
        run = torch.compile(model, dynamic=True) if compiled else model
        packed = pack(prep.samples[0], space, "train", trie=prep.tries[0])
        batches = plan_batches(packed.targets, packed.lengths, cfg.train.batch_size, np.random.default_rng(0))
        t0 = time.perf_counter()
        train_steps(run, packed, batches[: args.warmup], cfg.train.temperature)  # compiles
        warm = time.perf_counter() - t0
        seconds, tokens = train_steps(
            run, packed, batches[args.warmup : args.warmup + args.steps], cfg.train.temperature
        )
        dense = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n)
        flops = 6 * dense * tokens
        key = "compiled" if compiled else "eager"
        out[key] = {
            "warmup_seconds": round(warm, 1),
            "train_tokens_per_s": round(tokens / seconds, 1),
            "train_mfu": round(flops / seconds / (out["matmul_peak_gflops"] * 1e9), 4),
        }
        enc = encode(prep.samples[1], space, "test")
        prompts = enc.prompts[: args.users]
        run.eval()
        recommend(
            run, prompts[:32], space, prep.tries[1], cfg.decode.beam, cfg.decode.top_k, cfg.decode.batch_size
        )
        start = time.perf_counter()
        ranked = recommend(
            run, prompts, space, prep.tries[1], cfg.decode.beam, cfg.decode.top_k, cfg.decode.batch_size
        )
        out[key]["decode_users_per_s"] = round(len(prompts) / (time.perf_counter() - start), 1)
        out[key]["lists"] = ranked.tolist()
        print(key, {k: v for k, v in out[key].items() if k != "lists"}, flush=True)
    out["identical_lists"] = out["eager"].pop("lists") == out["compiled"].pop("lists")
    out["train_speedup"] = round(
        out["compiled"]["train_tokens_per_s"] / out["eager"]["train_tokens_per_s"], 2
    )
    out["decode_speedup"] = round(
        out["compiled"]["decode_users_per_s"] / out["eager"]["decode_users_per_s"], 2
    )
    print({k: v for k, v in out.items() if k not in ("eager", "compiled")})
    if args.json:
        write_text(args.json, json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
