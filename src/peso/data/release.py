"""Reader for the PESO release block format (github.com/hsyoo32/peso, data/).

A folder holds `<NAME>.all.block_<t>.json` (user -> {"previous_block": [...], "current_block": [...]})
and one `<NAME>.index*.json` (item -> list of semantic-ID tokens). Files may be gzipped (`.json.gz`).
Every failure names the file and what to change.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

from peso.data.blocks import Block, BlockSet, select_blocks
from peso.errors import PesoError

_BLOCK_RE = re.compile(r"^(?P<name>.+)\.all\.block_(?P<t>\d+)\.json(\.gz)?$")
_INDEX_RE = re.compile(r"^(?P<name>.+)\.index.*\.json(\.gz)?$")


def _read_json(path: Path) -> object:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise PesoError(
            str(path), f"malformed JSON at line {e.lineno} column {e.colno}", "re-export the file"
        ) from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise PesoError(
            str(path), f"cannot be read ({e.__class__.__name__})", "check the file is complete"
        ) from None


def _str_list(value: object, path: Path, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
        raise PesoError(str(path), f"{where} must be a list of item ids", "write item ids as strings")
    return [str(v) for v in value]


def read_block_file(path: Path, number: int) -> Block:
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise PesoError(str(path), "top level must be an object user -> {previous_block, current_block}")
    if not raw:
        raise PesoError(
            str(path), f"block {number} is empty (no users)", "remove the file or cut blocks differently"
        )
    users, previous, current = [], [], []
    for user, rec in raw.items():
        if not isinstance(rec, dict) or "current_block" not in rec:
            raise PesoError(
                str(path), f"user {user}: missing field 'current_block'", "each user needs current_block"
            )
        users.append(str(user))
        previous.append(_str_list(rec.get("previous_block", []), path, f"user {user}: previous_block"))
        current.append(_str_list(rec["current_block"], path, f"user {user}: current_block"))
    return Block(number=number, users=users, previous=previous, current=current, source=str(path))


def read_index_file(path: Path) -> dict[str, list[str]]:
    raw = _read_json(path)
    if not isinstance(raw, dict) or not raw:
        raise PesoError(
            str(path), "index must be a non-empty object item -> [tokens]", "check the index file"
        )
    index: dict[str, list[str]] = {}
    levels = None
    for item, tokens in raw.items():
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
            raise PesoError(
                str(path),
                f"item {item}: tokens must be a non-empty list of strings",
                'e.g. ["<a_1>", "<b_2>"]',
            )
        if levels is None:
            levels = len(tokens)
        elif len(tokens) != levels:
            raise PesoError(
                str(path),
                f"item {item} has {len(tokens)} tokens, others have {levels}",
                "every item needs the same count",
            )
        index[str(item)] = tokens
    return index


def read_release(folder: str | Path, blocks: list[int] | None = None) -> BlockSet:
    """Read every block file and the index file of a release folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PesoError(str(folder), "data folder not found", "set data.path to a folder of block files")
    found: dict[int, Path] = {}
    names, index_files = set(), []
    for p in sorted(folder.iterdir()):
        if m := _BLOCK_RE.match(p.name):
            found[int(m["t"])] = p
            names.add(m["name"])
        elif _INDEX_RE.match(p.name):
            index_files.append(p)
    if not found:
        raise PesoError(
            str(folder), "no block files <NAME>.all.block_<t>.json", "point data.path at a release folder"
        )
    if len(names) > 1:
        raise PesoError(
            str(folder), f"block files of several datasets {sorted(names)}", "keep one dataset per folder"
        )
    if len(index_files) != 1:
        what = "no index file <NAME>.index*.json" if not index_files else f"{len(index_files)} index files"
        raise PesoError(str(folder), what, "keep exactly one semantic-ID index in the folder")
    numbers = select_blocks(sorted(found), blocks, folder)
    index = read_index_file(index_files[0])
    block_list = [read_block_file(found[t], t) for t in numbers]
    for b in block_list:  # every item must have tokens: an unknown item cannot be generated or scored
        for user, prev, cur in zip(b.users, b.previous, b.current, strict=True):
            for item in (*prev, *cur):
                if item not in index:
                    raise PesoError(
                        b.source,
                        f"user {user}: item {item} is not in the index {index_files[0].name}",
                        "re-tokenize the items or drop the item",
                    )
    return BlockSet(name=names.pop(), blocks=block_list, index=index, index_source=str(index_files[0]))
