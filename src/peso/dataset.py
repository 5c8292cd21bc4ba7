"""A run's validated inputs: the blocks as samples, the item index, and per block the trie of the items seen
so far. Everything that can be checked (data, methods, model name, LoRA targets) is checked here, before a
run folder is touched."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from peso.config import RunConfig
from peso.data.load import read_blocks, read_codebooks
from peso.data.samples import BlockSamples, build_samples
from peso.errors import PesoError
from peso.model import check_lora_targets
from peso.strategies.base import Catalogue
from peso.tokenize.items import ItemIndex
from peso.tokenize.trie import Trie


@dataclass
class Prepared:
    name: str
    index: ItemIndex
    tries: list[Trie]  # per block: the IDs of the items seen up to that block (the catalogue grows)
    samples: list[BlockSamples]
    simulation: dict | None = None  # `peso simulate`'s parameters, when the data came from it
    known: list[np.ndarray] = field(default_factory=list)  # per block: sorted item indices seen so far
    codebooks: list[np.ndarray] | None = None  # per level, when model.item_init is 'codebook'

    def catalogue(self) -> Catalogue:
        return Catalogue(self.index.sid, len(self.index.items), self.index.n_sids, self.known)


def prepare(cfg: RunConfig) -> Prepared:
    if cfg.model.name != "tiny":
        from peso.hub import check_model

        check_model(cfg.model.name)
    check_lora_targets(cfg.model)
    data = read_blocks(cfg.data.path, cfg.data.blocks)  # DATA_DIR or release folder
    index = ItemIndex.from_tokens(data.index, data.index_source)
    ids = index.item_ids()
    samples, tries, known_items, seen = [], [], [], np.zeros(len(index.items), dtype=bool)
    for block in data.blocks:
        for items in (*block.previous, *block.current):
            seen[[ids[i] for i in items]] = True
        known_items.append(np.flatnonzero(seen))
        known = np.unique(index.sid[seen])
        tries.append(Trie(index.sid_codes[known], index.level_sizes, known))
        s = build_samples(
            block, ids, cfg.data.history, cfg.data.min_items, cfg.data.max_users, cfg.data.empty_history
        )
        if len(s) == 0:
            raise PesoError(
                block.source,
                f"block {block.number} has no user with >= {cfg.data.min_items} items",
                "lower data.min_items or merge blocks",
            )
        samples.append(s)
    books = read_codebooks(cfg.data.path) if cfg.model.item_init == "codebook" else None
    return Prepared(data.name, index, tries, samples, data.meta.get("simulation"), known_items, books)
