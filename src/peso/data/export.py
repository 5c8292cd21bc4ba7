"""`peso export`: a DATA_DIR in the PESO release format, `<NAME>.all.block_<t>.json` (+ `<NAME>.index.json`)."""

from __future__ import annotations

import json
from pathlib import Path

from peso.data.prepared import read_prepared
from peso.io import atomic_dir, check_out


def check_export(out: Path, overwrite: bool, inputs: list[Path] | None = None) -> None:
    """Refuse an export folder that holds anything but an earlier `peso export` (and that only with
    --overwrite), or that holds the inputs."""
    check_out(out, "release", overwrite, inputs or [], flag="--export-release" if inputs else "--out")


def export_release(data_dir: str | Path, out_folder: str | Path, overwrite: bool = False) -> list[Path]:
    """Write DATA_DIR in the PESO release format: `<NAME>.all.block_<t>.json` (+ `<NAME>.index.json`).
    Every user with an interaction in a block is listed there, so no interaction is lost; readers take the
    users with fewer than 3 items in a block (the release lists none) as history only."""
    out = Path(out_folder)
    check_out(out, "release", overwrite, [Path(data_dir)])
    data = read_prepared(data_dir, every_user=True)
    written = []
    with atomic_dir(out, kind="release") as tmp:
        for b in data.blocks:
            rec = {
                u: {"previous_block": p, "current_block": c}
                for u, p, c in zip(b.users, b.previous, b.current, strict=True)
            }
            name = f"{data.name}.all.block_{b.number}.json"
            (tmp / name).write_text(json.dumps(rec, separators=(",", ":")), encoding="utf-8")
            written.append(out / name)
        if data.index:
            name = f"{data.name}.index.json"
            (tmp / name).write_text(json.dumps(data.index, separators=(",", ":")), encoding="utf-8")
            written.append(out / name)
    return written
