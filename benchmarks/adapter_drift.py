"""How far each method's adapter moved from block 0 by its last block: the relative Frobenius change of the
LoRA A/B matrices and of the item-token rows (input embedding and output layer), read from the adapters a run
saved (`seed_<s>/<method>/block_<t>/adapter/`). It shows what a proximal weight holds and what it leaves free.

    python benchmarks/adapter_drift.py runs/beauty-sweep/seed_0 --json runs/beauty-sweep/drift.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from peso.io import write_text


def relative_change(
    before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], keys: list[str]
) -> float:
    """||after - before||_F / ||before||_F over the given tensors taken together."""
    num = sum(float((after[k].double() - before[k].double()).square().sum()) for k in keys)
    den = sum(float(before[k].double().square().sum()) for k in keys)
    return (num / den) ** 0.5 if den else float("nan")


def drift(seed_dir: Path) -> dict[str, dict[str, float]]:
    base = seed_dir / "block_0" / "adapter"
    lora0 = load_file(str(base / "adapter_model.safetensors"))
    rows0 = load_file(str(base / "item_rows.safetensors"))
    lora_keys = [k for k in lora0 if "lora_A" in k or "lora_B" in k]
    out = {}
    for method in sorted(p for p in seed_dir.iterdir() if p.is_dir() and p.name not in ("block_0", "base")):
        blocks = sorted(
            method.glob("block_*/adapter/adapter_model.safetensors"), key=lambda p: int(p.parts[-3][6:])
        )
        if not blocks:
            continue  # frozen, popular or a standalone method: no adapter saved
        last = blocks[-1].parent
        lora, rows = (
            load_file(str(last / "adapter_model.safetensors")),
            load_file(str(last / "item_rows.safetensors")),
        )
        if not all(k in lora for k in lora_keys):
            continue  # another adapter layout: nothing to compare entry for entry
        # (for cumulative methods this is the current adapter against block 0's; their past ones are apart)
        out[method.name] = {
            "last_block": int(last.parent.name[6:]),
            "lora": relative_change(lora0, lora, lora_keys),
            "item_rows_input": relative_change(rows0, rows, ["embed_tokens"]),
            "item_rows_output": relative_change(rows0, rows, ["lm_head"]),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seed_dir", type=Path, help="RUN_DIR/seed_<s>")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not (args.seed_dir / "block_0" / "adapter").is_dir():
        raise SystemExit(f"{args.seed_dir}: no block_0/adapter: give a run's seed_<s> folder")
    result = drift(args.seed_dir)
    print("| method | last block | LoRA A/B change | item rows change (input / output) |")
    print("|---|---|---|---|")
    for m, d in result.items():
        print(
            f"| {m} | {d['last_block']} | {d['lora']:.2e} | {d['item_rows_input']:.3f} / {d['item_rows_output']:.3f} |"
        )
    if args.json:
        write_text(args.json, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
