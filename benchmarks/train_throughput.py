"""Training throughput: packed vs per-example, same model, same data, same optimizer, same targets per step.

Three ways to train the same targets: `usual` (one example per target, random batches padded to their
longest, logits over the vocabulary at every position: how the anchors train), `per_example` (the same
examples grouped by length, logits only where a target is predicted) and `packed` (`peso.pack`). Under
`--set model.item_softmax=trie` the last two normalise over the trie (its cost is in their figures);
`usual` stays the vocabulary's softmax, as the anchors train.

Times `--steps` optimizer steps (forward, backward, AdamW) of each mode on one block of a run config (the
CDs release by default), after `--warmup` untimed steps. Reports training targets per second, tokens per
step, padding share, and achieved FLOP/s (matmul and attention FLOPs counted by torch's FlopCounterMode on
the same batches) against this machine's measured matrix-multiply peak (best of several large matmuls, same
threads and dtype): `mfu`.

    python benchmarks/train_throughput.py --threads 1 --json benchmarks/results/train_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from peso.config import load_config
from peso.dataset import prepare
from peso.io import write_text
from peso.model import attach_lora, load_backbone
from peso.pack import IGNORE, Packed, pack
from peso.train import packed_loss, plan_batches

ROOT = Path(__file__).resolve().parents[1]


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n x n matmul: the machine's practical peak for this dtype and thread count."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm up
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def usual_loss(model, packed: Packed, rows, temperature: float) -> torch.Tensor:
    """The way the anchors train: logits over the vocabulary at every position, loss where labels are set."""
    batch = packed.batch(rows)
    labels = batch.pop("labels")
    batch.pop("label_items")  # what model.item_softmax: trie restricts by; not a model input
    logits = model(**batch).logits.float() / temperature
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)


def step(model, opt, packed: Packed, rows, temperature: float, autocast: bool, usual: bool = False) -> None:
    if usual:
        loss = usual_loss(model, packed, rows, temperature)
    else:
        loss = packed_loss(model, packed, rows, temperature, autocast)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def measure(
    model, packed: Packed, batches, cfg, warmup: int, autocast: bool, usual: bool, flop_steps: int
) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    temp = cfg.train.temperature
    for rows in batches[:warmup]:
        step(model, opt, packed, rows, temp, autocast, usual)
    timed = batches[warmup:]
    t = time.perf_counter()
    for rows in timed:
        step(model, opt, packed, rows, temp, autocast, usual)
    seconds = time.perf_counter() - t
    targets = int(sum(packed.targets[r].sum() for r in timed))
    real = int(sum(packed.lengths[r].sum() for r in timed))
    padded = int(sum(len(r) * packed.lengths[r].max() for r in timed))
    # FLOPs of the first `flop_steps` batches again (the counter is slow), scaled to all by padded tokens
    counted = timed[:flop_steps]
    with FlopCounterMode(display=False) as counter:
        for rows in counted:
            step(model, opt, packed, rows, temp, autocast, usual)
    flops = counter.get_total_flops() * padded / sum(len(r) * packed.lengths[r].max() for r in counted)
    loss_tokens = sum(int((packed.segments[i].labels != IGNORE).sum()) for r in timed for i in r)
    return {
        "steps": len(timed),
        "seconds": round(seconds, 3),
        "targets": targets,
        "targets_per_s": round(targets / seconds, 1),
        "tokens_per_step": round(padded / len(timed), 1),
        "padding_share": round(1 - real / padded, 4),
        "loss_tokens": loss_tokens,
        "flops": flops,
        "flop_per_s": flops / seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "cds.yaml"))
    ap.add_argument("--block", type=int, default=0)
    ap.add_argument("--steps", type=int, default=60, help="timed optimizer steps per mode")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--flop-steps", type=int, default=8, help="steps whose FLOPs are counted")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bf16", action="store_true", help="also time packed training under bf16 autocast")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(Path(args.config), args.set)
    cfg.data.blocks = None
    prep = prepare(cfg)
    samples = prep.samples[args.block]
    torch.manual_seed(0)
    backbone, space = load_backbone(cfg.model, prep.index)
    model = attach_lora(backbone, cfg.model, space)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    modes = {
        "per_example": pack(samples, space, "train", share=False, trie=prep.tries[args.block]),
        "packed": pack(samples, space, "train", trie=prep.tries[args.block]),
    }
    # usual: random batches padded to their longest, logits everywhere (as the anchors train);
    # per_example: the same examples grouped by length, logits only where a target is predicted
    runs = [("usual", False), ("per_example", False), ("packed", False)]
    runs += [("packed_bf16", True)] if args.bf16 else []
    out: dict = {}
    for name, autocast in runs:
        packed = modes["per_example" if name == "usual" else name.removesuffix("_bf16")]
        if name == "usual":
            order = rng.permutation(len(packed))
            batches = [
                order[i : i + cfg.train.batch_size] for i in range(0, len(order), cfg.train.batch_size)
            ]
        else:
            batches = plan_batches(packed.targets, packed.lengths, cfg.train.batch_size, rng)
        n = args.warmup + args.steps
        if len(batches) < n:
            raise SystemExit(f"block {args.block} has {len(batches)} batches, fewer than {n}: lower --steps")
        model.load_state_dict(init)  # every mode starts from the same weights
        out[name] = measure(
            model, packed, batches[:n], cfg, args.warmup, autocast, name == "usual", args.flop_steps
        )
        out[name]["segments"] = len(packed)
        out[name]["epoch_tokens"] = int(packed.lengths.sum())
        print(name, json.dumps(out[name]))
    peak32 = matmul_peak(torch.float32)
    result = {
        "config": args.config,
        "block": args.block,
        "targets_in_block": int(modes["packed"].targets.sum()),
        "batch_size_targets": cfg.train.batch_size,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "matmul_peak_flop_per_s": {"float32": peak32},
        **out,
        # against the usual way (the anchors'); and against per-example training with our other savings
        "speedup": out["packed"]["targets_per_s"] / out["usual"]["targets_per_s"],
        "speedup_over_grouped_per_example": out["packed"]["targets_per_s"]
        / out["per_example"]["targets_per_s"],
        "token_ratio": out["per_example"]["epoch_tokens"] / out["packed"]["epoch_tokens"],
        "mfu": out["packed"]["flop_per_s"] / peak32,
        "mfu_per_example": out["per_example"]["flop_per_s"] / peak32,
    }
    if args.bf16:
        result["matmul_peak_flop_per_s"]["bfloat16"] = matmul_peak(torch.bfloat16)
        result["bf16_speedup_over_packed"] = (
            out["packed_bf16"]["targets_per_s"] / out["packed"]["targets_per_s"]
        )
    print(
        f"targets/s: usual {out['usual']['targets_per_s']:.0f}, per-example grouped"
        f" {out['per_example']['targets_per_s']:.0f}, packed {out['packed']['targets_per_s']:.0f}:"
        f" speedup {result['speedup']:.2f}x over the usual way,"
        f" {result['speedup_over_grouped_per_example']:.2f}x over grouped per-example"
        f" (token ratio {result['token_ratio']:.2f}); packed {out['packed']['flop_per_s'] / 1e9:.2f} GFLOP/s"
        f" of a {peak32 / 1e9:.1f} GFLOP/s float32 matmul peak (mfu {result['mfu']:.3f})"
    )
    if args.json:
        write_text(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
