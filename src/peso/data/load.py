"""One entry point for `peso run`'s data: a DATA_DIR from `peso prepare` or a PESO release folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from peso.data.blocks import BlockSet
from peso.errors import PesoError


def read_blocks(path: str | Path, blocks: list[int] | None = None) -> BlockSet:
    """A folder with stats.json is a DATA_DIR; anything else is read as the release format.

    A run needs every item's semantic-ID tokens, so a DATA_DIR without index.json stops here.
    """
    from peso.data.prepare import INDEX, STATS

    folder = Path(path)
    if (folder / STATS).is_file():
        from peso.data.prepared import read_prepared

        if not (folder / INDEX).is_file():
            raise PesoError(
                str(folder),
                "no semantic-ID index (index.json): its items have no tokens yet",
                "run `peso tokenize` on this DATA_DIR, or point data.path at a release-format folder",
            )
        return read_prepared(folder, blocks)
    from peso.data.release import read_release

    return read_release(folder, blocks)


CODEBOOKS = (
    "codebooks.safetensors"  # `peso tokenize`'s residual k-means centroids, one (codes, dim) per level
)


def read_codebooks(path: str | Path) -> list[np.ndarray]:
    """The data folder's codebooks, level by level (what `model.item_init: codebook` starts the rows from)."""
    from safetensors.numpy import load_file

    file = Path(path) / CODEBOOKS
    if not file.is_file():
        raise PesoError(
            str(file),
            "model.item_init is 'codebook' but the data has no codebooks (release folders carry codes only)",
            "tokenize the data with `peso tokenize --method text`, or set model.item_init: random",
        )
    books = load_file(str(file))
    return [books[k] for k in sorted(books, key=lambda k: int(k.rsplit("_", 1)[1]))]
