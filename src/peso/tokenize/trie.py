"""Prefix trie of the valid semantic IDs, stored as tensors so that beam search indexes it in bulk.

Depth d holds the distinct prefixes of length d (depth 0: the root). For each depth:
`allowed[d]` (nodes_d x level_size_d, bool): which codes continue a valid ID from that node;
`child_key[d]` / `child_val[d]`: sorted keys node * level_size_d + code and the node they lead to at depth d+1
(at the last depth, the semantic-ID group). A lookup is one `searchsorted`, no Python per beam.
"""

from __future__ import annotations

import numpy as np
import torch


class Trie:
    def __init__(self, sid_codes: np.ndarray, level_sizes: list[int], sids: np.ndarray | None = None) -> None:
        """`sid_codes[i]` is the ID of group `sids[i]` (default i): a trie over a subset keeps global ids."""
        sids = np.arange(len(sid_codes)) if sids is None else np.asarray(sids, dtype=np.int64)
        self.levels = sid_codes.shape[1]
        self.level_sizes = list(level_sizes)
        self.codes, self.sids = np.asarray(sid_codes), sids  # what it was built from (exports, references)
        self.allowed: list[torch.Tensor] = []
        self.child_key: list[torch.Tensor] = []
        self.child_val: list[torch.Tensor] = []
        node = np.zeros(len(sid_codes), dtype=np.int64)  # node of every sid's prefix at the current depth
        n_nodes = 1
        for d in range(self.levels):
            size = self.level_sizes[d]
            key = node * size + sid_codes[:, d]
            if d == self.levels - 1:
                uniq, inv = key, sids  # last level: the child is the sid itself
                order = np.argsort(uniq, kind="stable")
                uniq, vals = uniq[order], inv[order]
            else:
                uniq, inv = np.unique(key, return_inverse=True)
                vals = np.arange(len(uniq))
            allowed = np.zeros((n_nodes, size), dtype=bool)
            allowed[node, sid_codes[:, d]] = True
            self.allowed.append(torch.from_numpy(allowed))
            self.child_key.append(torch.from_numpy(uniq.astype(np.int64)))
            self.child_val.append(torch.from_numpy(vals.astype(np.int64)))
            if d < self.levels - 1:
                node, n_nodes = inv.reshape(-1), len(uniq)

    def to(self, device: torch.device) -> Trie:
        """Move the tables to `device` (in place: a trie is built once and decoded on one device)."""
        for tables in (self.allowed, self.child_key, self.child_val):
            tables[:] = [t.to(device) for t in tables]
        return self

    def step(self, depth: int, node: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Child of each (node, code) pair at `depth`; -1 where the pair is not in the trie."""
        key = node * self.level_sizes[depth] + code
        keys = self.child_key[depth]
        pos = torch.searchsorted(keys, key).clamp(max=len(keys) - 1)
        found = keys[pos] == key
        return torch.where(found, self.child_val[depth][pos], torch.full_like(key, -1))

    def mask(self, depth: int, node: torch.Tensor) -> torch.Tensor:
        """Valid-code mask (len(node) x level_size) of each node; rows of invalid nodes (-1) are all False."""
        rows = self.allowed[depth][node.clamp(min=0)]
        return rows & (node >= 0).unsqueeze(-1)
