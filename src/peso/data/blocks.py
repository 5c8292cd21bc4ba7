"""In-memory chronological blocks, whatever file format they came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from peso.errors import PesoError


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


def select_blocks(found: list[int], blocks: list[int] | None, folder: Path) -> list[int]:
    """The block numbers a run uses: all found, or the listed ones; a continual run needs two or more."""
    numbers = sorted(found)
    if blocks is not None:
        if len(set(blocks)) != len(blocks):
            raise PesoError("data.blocks", f"a block is listed twice: {blocks}", "list each block once")
        missing = sorted(set(blocks) - set(found))
        if missing:
            raise PesoError(
                "data.blocks", f"blocks {missing} not in {folder} (found {numbers})", "list existing blocks"
            )
        numbers = sorted(blocks)
    else:
        gaps = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers)) if numbers else []
        if gaps:  # a continual run over a gap would adapt across two slices as if they were one
            raise PesoError(
                str(folder),
                f"block(s) {gaps} missing between blocks {numbers[0]} and {numbers[-1]} (found {numbers})",
                "add the missing block, or list the blocks to use in data.blocks",
            )
    if len(numbers) < 2:
        raise PesoError(
            str(folder), f"only block(s) {numbers}: a continual run needs a base block and at least one more"
        )
    return numbers
