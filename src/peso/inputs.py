"""Model inputs, one place for all of them: where item tokens sit in the vocabulary and how a history
becomes a prompt (`TokenSpace`), a split's examples as token ids (`encode`), left padding, position ids,
and attention masks. Packing (`peso.pack`), training and decoding build on these."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from peso.data.samples import BlockSamples


@dataclass
class TokenSpace:
    """Where the item tokens sit in the model vocabulary, and how a history becomes a prompt."""

    level_offsets: list[int]  # token id of code 0 at each level
    level_sizes: list[int]
    codes: np.ndarray  # (n_items, levels)
    pad_id: int
    eos_id: int
    prefix: list[int] = field(default_factory=list)  # prompt tokens before the items
    separator: list[int] = field(default_factory=list)  # between items
    suffix: list[int] = field(default_factory=list)  # after the items
    append_eos: bool = False  # the response ends with EOS (prompted LLMs, as the paper's code)
    item_softmax: str = "vocab"  # "trie": item tokens normalised over the codes that continue a real ID

    def item_tokens(self, item: int) -> list[int]:
        return [off + int(c) for off, c in zip(self.level_offsets, self.codes[item], strict=True)]

    def prompt(self, history: np.ndarray) -> list[int]:
        ids = list(self.prefix)
        for k, item in enumerate(history):
            if k:
                ids.extend(self.separator)
            ids.extend(self.item_tokens(int(item)))
        ids.extend(self.suffix)
        return ids

    def target(self, item: int) -> list[int]:
        return self.item_tokens(item) + ([self.eos_id] if self.append_eos else [])

    def all_item_token_ids(self) -> list[int]:
        return [
            off + c
            for off, size in zip(self.level_offsets, self.level_sizes, strict=True)
            for c in range(size)
        ]


@dataclass
class Encoded:
    """Token ids of a split's examples: prompt (history) and target tokens, one row per target."""

    prompts: list[list[int]]
    targets: np.ndarray  # (n, target_len)
    items: np.ndarray  # (n,) target item index
    users: np.ndarray  # (n,) user index in the block

    def __len__(self) -> int:
        return len(self.prompts)


def encode(samples: BlockSamples, space: TokenSpace, split: str) -> Encoded:
    ex = samples.examples(split)
    prompts = [space.prompt(samples.window(u, p)) for u, p in ex]
    items = np.array([samples.target(u, p) for u, p in ex], dtype=np.int64)
    targets = np.array([space.target(int(i)) for i in items], dtype=np.int64).reshape(len(ex), -1)
    return Encoded(prompts, targets, items, np.array([u for u, _ in ex], dtype=np.int64))


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask: the last positions line up, so targets sit at fixed offsets."""
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = p
        mask[r, width - len(p) :] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def mask_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """None (boolean masks) for SDPA and flash kernels; eager attention adds a float mask of this dtype."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa")
    return next(model.parameters()).dtype if impl == "eager" else None


def attention_mask(see: torch.Tensor, float_mask: torch.dtype | None) -> torch.Tensor:
    """A boolean (batch, 1, query, key) mask as the model takes it: as it is (SDPA), or additive (eager)."""
    if float_mask is None:
        return see
    return torch.zeros(see.shape, dtype=float_mask, device=see.device).masked_fill_(
        ~see, torch.finfo(float_mask).min
    )
