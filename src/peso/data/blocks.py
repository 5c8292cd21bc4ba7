"""In-memory chronological blocks, whatever file format they came from."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Block:
    """One chronological block: per user, the items of earlier blocks and the items inside this block."""

    number: int
    users: list[str]
    previous: list[list[str]]
    current: list[list[str]]
    source: str = ""

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class BlockSet:
    """The blocks of one dataset plus its item index (item id -> semantic-ID tokens)."""

    name: str
    blocks: list[Block]
    index: dict[str, list[str]]
    index_source: str = ""
    meta: dict = field(default_factory=dict)
