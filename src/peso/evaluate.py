"""Evaluation of one block: decode every test user (sharded over processes), score the lists against the
test targets, and save them as recommendations.csv."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from peso import dist
from peso.data.samples import BlockSamples
from peso.decode import recommend
from peso.inputs import Encoded, TokenSpace
from peso.io import write_text
from peso.metrics import per_user
from peso.settings import DecodeConfig
from peso.tokenize.items import ItemIndex
from peso.tokenize.trie import Trie


class Evaluator:
    def __init__(
        self, index: ItemIndex, tries: list[Trie], samples: list[BlockSamples], decode: DecodeConfig
    ):
        self.index, self.tries, self.samples, self.decode_cfg = index, tries, samples, decode
        groups: dict[int, list[str]] = {}
        for item, g in zip(index.items, index.sid.tolist(), strict=True):
            groups.setdefault(g, []).append(item)
        self.sid_items = {g: "|".join(items) for g, items in groups.items()}  # what one generated ID names

    def decode(
        self, model: torch.nn.Module, space: TokenSpace, enc: Encoded, t: int, desc: str
    ) -> np.ndarray:
        """(users, top_k) semantic-ID groups of block position t's test users, every process its shard."""
        d = self.decode_cfg
        mine = dist.shard(len(enc.prompts))
        prompts = [enc.prompts[i] for i in mine]
        ranked = recommend(
            model, prompts, space, self.tries[t], d.beam, d.top_k, d.batch_size, desc, d.merge, d.compile
        )
        return dist.gather_rows(ranked)

    def score(self, ranked: np.ndarray, t: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Block metrics and their per-user values."""
        s = self.samples[t]
        targets = self.index.sid[[s.target(u, s.test_position(u)) for u in range(len(s))]]
        users = per_user(ranked, targets)
        return {m: float(v.mean()) for m, v in users.items()}, users

    def save(self, ranked: np.ndarray, t: int, folder: Path) -> None:
        """recommendations.csv: user, test target, top-k list (items sharing a semantic ID joined by '|')."""
        s, buf = self.samples[t], io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["user", "target", "recommendations"])
        for u, row in enumerate(ranked):
            recs = " ".join(self.sid_items[g] for g in row if g >= 0)
            w.writerow([s.users[u], self.index.items[s.target(u, s.test_position(u))], recs])
        write_text(folder / "recommendations.csv", buf.getvalue())
