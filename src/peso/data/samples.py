"""The evaluation protocol of the PESO release code, as samples.

Per user and block: sequence = earlier-block items + this block's items (time order). Test target = the last
item, validation target = the second to last, training targets = the block's earlier items, each predicted
from the window of `history` items before it. Users with fewer than `min_items` items in the block are skipped.
With `empty_history` (the official code's rule, `continual_data_v2.py` `_process_train_data`), a user's very
first item is a training target too, predicted from an empty history: what teaches the model its
unconditional prior, the answer for a user with no history.

Samples keep one sequence per user with its target positions (not one copy per target), so that training can
pack a user's targets into one pass; `examples()` expands them into (user, position) pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from peso.data.blocks import Block


@dataclass
class BlockSamples:
    number: int
    users: list[str]
    sequences: list[np.ndarray]  # item indices, earlier blocks then this block
    block_start: np.ndarray  # per user: position where this block's items begin
    history: int
    empty_history: bool = True  # position 0 (no history) is a training target

    def __len__(self) -> int:
        return len(self.users)

    def train_positions(self, u: int) -> range:
        # every position of the block but the last two; the sequence's first item only with empty_history
        first = int(self.block_start[u]) if self.empty_history else max(int(self.block_start[u]), 1)
        return range(first, len(self.sequences[u]) - 2)

    def valid_position(self, u: int) -> int:
        return len(self.sequences[u]) - 2

    def test_position(self, u: int) -> int:
        return len(self.sequences[u]) - 1

    def window(self, u: int, pos: int) -> np.ndarray:
        """The history window before the target at `pos`."""
        return self.sequences[u][max(0, pos - self.history) : pos]

    def target(self, u: int, pos: int) -> int:
        return int(self.sequences[u][pos])

    def examples(self, split: str) -> list[tuple[int, int]]:
        """(user, target position) pairs of a split: 'train', 'valid' or 'test'."""
        if split == "train":
            return [(u, p) for u in range(len(self)) for p in self.train_positions(u)]
        pick = self.valid_position if split == "valid" else self.test_position
        return [(u, pick(u)) for u in range(len(self))]

    def train_targets(self) -> np.ndarray:
        return np.array([self.target(u, p) for u, p in self.examples("train")], dtype=np.int64)


def build_samples(
    block: Block,
    item_ids: dict[str, int],
    history: int = 20,
    min_items: int = 3,
    max_users: int | None = None,
    empty_history: bool = True,
) -> BlockSamples:
    """Apply the protocol to one block; `item_ids` maps item id -> index."""
    users, seqs, starts = [], [], []
    for user, prev, cur in zip(block.users, block.previous, block.current, strict=True):
        if len(cur) < min_items:
            continue
        seq = np.fromiter((item_ids[i] for i in (*prev, *cur)), dtype=np.int64, count=len(prev) + len(cur))
        users.append(user)
        seqs.append(seq)
        starts.append(len(prev))
        if max_users is not None and len(users) >= max_users:
            break
    return BlockSamples(block.number, users, seqs, np.array(starts, dtype=np.int64), history, empty_history)
