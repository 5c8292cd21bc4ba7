"""Items as semantic IDs: a fixed number of levels, each a code from that level's token set.

Several items may carry the same semantic ID (the release leaves 546 such collisions in CDs). Decoding
generates semantic IDs, so ranking and metrics work on ID groups ("sids"): a generated ID is a hit for any
item that carries it, as in the paper's code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from peso.errors import PesoError

_NUM = re.compile(r"(\d+)")


def _token_sort_key(tok: str) -> tuple:
    # "<a_2>" before "<a_10>": numeric order keeps code = the number in the token where there is one
    return tuple(int(p) if p.isdigit() else p for p in _NUM.split(tok))


@dataclass
class ItemIndex:
    items: list[str]  # item ids, in index order
    codes: np.ndarray  # (n_items, levels) code of each level, 0..level_size-1
    level_tokens: list[list[str]]  # token strings of each level, position = code
    sid: np.ndarray  # (n_items,) semantic-ID group of each item
    sid_codes: np.ndarray  # (n_sids, levels) codes of each group

    @classmethod
    def from_tokens(cls, index: dict[str, list[str]], source: str = "index") -> ItemIndex:
        items = list(index)
        levels = len(next(iter(index.values())))
        level_tokens = []
        for d in range(levels):
            toks = sorted({index[i][d] for i in items}, key=_token_sort_key)
            level_tokens.append(toks)
        seen = {}
        for d, toks in enumerate(level_tokens):
            for t in toks:
                if t in seen and seen[t] != d:
                    raise PesoError(
                        source,
                        f"token {t} appears at level {seen[t]} and level {d}",
                        "use level-specific tokens",
                    )
                seen[t] = d
        lookup = [{t: c for c, t in enumerate(toks)} for toks in level_tokens]
        codes = np.array([[lookup[d][index[i][d]] for d in range(levels)] for i in items], dtype=np.int64)
        sid_codes, sid = np.unique(codes, axis=0, return_inverse=True)
        return cls(items, codes, level_tokens, sid.reshape(-1).astype(np.int64), sid_codes)

    @property
    def levels(self) -> int:
        return self.codes.shape[1]

    @property
    def level_sizes(self) -> list[int]:
        return [len(t) for t in self.level_tokens]

    @property
    def n_sids(self) -> int:
        return len(self.sid_codes)

    def item_ids(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.items)}

    def collisions(self) -> dict[str, int]:
        """Semantic IDs carried by more than one item, and how many items share them."""
        counts = np.bincount(self.sid, minlength=self.n_sids)
        return {"shared_ids": int((counts > 1).sum()), "items_in_shared_ids": int(counts[counts > 1].sum())}
