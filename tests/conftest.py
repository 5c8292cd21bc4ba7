"""Shared fixtures: a tiny model over a small multi-level item index."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from peso.config import ModelConfig
from peso.model import attach_lora, load_backbone
from peso.tokenize.items import ItemIndex

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # CI reaches no hub: fail at once instead of retrying

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CDS = SHARED / "peso-release" / "CDs_and_Vinyl_cl_0.6_0_5_3_0"
QUICKSTART = Path(__file__).resolve().parents[1] / "data" / "quickstart" / "ml-100k"


def small_index(n_items: int = 60, sizes=(4, 3, 5), seed: int = 0) -> ItemIndex:
    """Random 3-level semantic IDs with shared prefixes and a few collisions."""
    rng = np.random.default_rng(seed)
    names = "abcdefgh"
    index = {}
    for i in range(n_items):
        index[str(i)] = [f"<{names[d]}_{int(rng.integers(s))}>" for d, s in enumerate(sizes)]
    # make sure every code of every level occurs, so level sizes are as given
    for d, s in enumerate(sizes):
        for c in range(s):
            index[f"cover{d}_{c}"] = [f"<{names[e]}_{c % sizes[e]}>" for e in range(len(sizes))]
    return ItemIndex.from_tokens(index)


@pytest.fixture
def tiny_lora():
    """A randomly initialised tiny Llama with LoRA over `small_index()`, adapter B randomised (not zero)."""
    torch.manual_seed(0)
    index = small_index()
    cfg = ModelConfig.model_validate(
        {"name": "tiny", "tiny": {"hidden": 32, "layers": 2, "heads": 4, "intermediate": 64}}
    )
    backbone, space = load_backbone(cfg, index)
    model = attach_lora(backbone, cfg, space)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.eval()
    return model, space, index
