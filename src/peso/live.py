"""The live path: deploy a finished run's method as a model store, update it with new interactions, and
recommend from it. An update is one continual block of the deployed method, continued from the saved
block state exactly as `peso run` continues it, so the two paths give the same results.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import numpy as np
import polars as pl
import torch
import yaml
from scipy.spatial.distance import jensenshannon

from peso import dist
from peso.config import RunConfig
from peso.data.blocks import Block as DataBlock
from peso.data.load import read_codebooks
from peso.data.prepare import dedupe
from peso.data.prepared import _block
from peso.data.samples import BlockSamples, build_samples
from peso.decode import beam_search_batch
from peso.errors import PesoError
from peso.evaluate import Evaluator
from peso.inputs import TokenSpace, encode
from peso.io import atomic_dir, check_out, write_text
from peso.metrics import METRICS, per_user
from peso.model import attach_lora, load_backbone, merged, save_item_rows
from peso.pack import Packed, pack
from peso.params import ParamSets
from peso.runfolder import CONFIG, read_csv, read_progress, read_unit, unit_dir, unit_name
from peso.settings import item_softmax_at, method_train
from peso.store import (
    CURRENT,
    FORMAT,
    INTERACTIONS,
    ITEMS,
    REPORT,
    SCHEMA,
    STORE_JSON,
    TOKENIZER_DIR,
    VERSION_JSON,
    VERSIONS,
    Store,
    save_state,
)
from peso.strategies import AdapterStrategy, Block, BlockData, RunContext, State, create
from peso.strategies.base import Catalogue
from peso.strategies.popular import Popular
from peso.tokenize.assign import assign_new_items, load_assigner
from peso.tokenize.items import ItemIndex
from peso.tokenize.trie import Trie
from peso.train import block_trainer, validation_loss
from peso.units import rng_state, set_rng_state

K = 10  # metrics go to Hit@10 / NDCG@10


def _packages() -> dict:
    out = {}
    for p in ("peso", "torch", "transformers", "peft"):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


# --- a version loaded ----------------------------------------------------------------------------------


@dataclass
class Loaded:
    """A version as a working recommender: its config, index, model, method and the data it has seen."""

    store: Store
    number: int
    cfg: RunConfig
    index: ItemIndex
    space: TokenSpace
    model: torch.nn.Module
    method: AdapterStrategy
    params: ParamSets
    interactions: pl.DataFrame
    rng: dict

    @property
    def block(self) -> int:
        """The block position this version's state is the end of."""
        return int(self.store.version(self.number)["block"])

    def trie(self, interactions: pl.DataFrame | None = None) -> Trie:
        """The items seen so far (a live system recommends only items it has met)."""
        df = self.interactions if interactions is None else interactions
        ids = self.index.item_ids()
        seen = np.zeros(len(self.index.items), dtype=bool)
        seen[[ids[i] for i in df["item"].unique().to_list()]] = True
        known = np.unique(self.index.sid[seen])
        return Trie(self.index.sid_codes[known], self.index.level_sizes, known)

    def histories(self, users: list[str]) -> dict[str, list[str]]:
        df = self.interactions.filter(pl.col("user").is_in(users)).group_by("user", maintain_order=True)
        return {u: items for u, items in df.agg(pl.col("item")).iter_rows()}


def _context(cfg: RunConfig) -> RunContext:
    return RunContext(
        cfg.train.temperature, cfg.train.autocast == "bf16", cfg.train.batch_size, cfg.data.history
    )


def load_params(params: dict[str, torch.nn.Parameter], saved: dict[str, torch.Tensor]) -> None:
    """Saved values into the model's parameters; where new items grew the vocabulary, the saved rows fill
    the first rows (new tokens come last) and the new rows keep their initialisation."""
    with torch.no_grad():
        for n, v in saved.items():
            p = params[n]
            if p.shape == v.shape:
                p.copy_(v)
            elif p.shape[1:] == v.shape[1:] and p.shape[0] > v.shape[0]:
                p[: v.shape[0]].copy_(v)
            else:
                raise PesoError(
                    n, f"saved shape {tuple(v.shape)} does not fit {tuple(p.shape)}", "deploy again"
                )


def load_version(store: Store, n: int, index: dict[str, list[str]] | None = None) -> Loaded:
    """Version n as a model (with `index`, a grown item index, if given)."""
    info, cfg = store.info, store.config()
    seed = int(info["seed"])
    index_dict = index if index is not None else store.index(n)
    item_index = ItemIndex.from_tokens(index_dict, str(store.folder(n) / ITEMS))
    torch.manual_seed(seed)  # as the run builds its model: `retrain`'s starting point is this draw
    np.random.seed(seed)
    books = read_codebooks(cfg.data.path) if cfg.model.item_init == "codebook" else None  # as the run began
    backbone, space = load_backbone(cfg.model, item_index, books)
    model = attach_lora(backbone, cfg.model, space).to(dist.device())
    full = cfg.train.full_block0 if cfg.train.full_block0 is not None else cfg.model.name == "tiny"
    adapter = {p for p, q in model.named_parameters() if q.requires_grad}
    params = ParamSets(
        model, adapter=adapter, block0={p for p, _ in model.named_parameters() if full or p in adapter}
    )
    params.snapshot("init", "block0")
    method = create(info["settings"], _context(cfg))
    # decoded as the block that left it was trained (train.continual_item_softmax)
    block = int(store.version(n)["block"])
    space.item_softmax = item_softmax_at(cfg.model, cfg.train, method.settings, block)
    state = store.state(n)
    method.load_state(model, State(state.tensors, state.meta))
    load_params(dict(model.named_parameters()), state.params)
    model.eval()
    return Loaded(store, n, cfg, item_index, space, model, method, params, store.interactions(n), state.rng)


# --- deploy --------------------------------------------------------------------------------------------


def _run_interactions(
    cfg: RunConfig, last_block: int
) -> tuple[pl.DataFrame, pl.DataFrame | None, Path | None]:
    """Every interaction of the run's data up to its last block, in time order; the item table; the
    DATA_DIR (None for a release folder)."""
    folder = Path(cfg.data.path)
    if (folder / "stats.json").is_file():
        df = pl.read_parquet(folder / "interactions.parquet").select(list(SCHEMA)).cast(SCHEMA)
        items = pl.read_parquet(folder / "items.parquet") if (folder / "items.parquet").is_file() else None
        data_dir = folder
    else:
        from peso.data.raw import Columns, read_release_folder

        df = read_release_folder([folder], Columns(None, None, None)).interactions.cast(SCHEMA)
        items, data_dir = None, None
    return df.filter(pl.col("block") <= last_block), items, data_dir


def deploy(run_dir: Path, label: str, seed: int | None, out: Path) -> Path:
    """Version 1 of a store: method `label`'s state after the run's last block."""
    cfg = RunConfig.model_validate(yaml.safe_load((run_dir / CONFIG).read_text()))
    entry = next((m for m in cfg.methods if m.key == label), None)
    if entry is None:
        raise PesoError(
            "--method",
            f"'{label}' is not a method of {run_dir}",
            f"choose from {', '.join(m.key for m in cfg.methods)}",
        )
    method = create(entry)
    if not method.uses_backbone:
        raise PesoError(
            "--method",
            f"'{label}' is a standalone method: the store serves the LLM",
            "deploy an adapter strategy",
        )
    seed = cfg.seeds[0] if seed is None else seed
    if seed not in cfg.seeds:
        raise PesoError("--seed", f"{seed} is not a seed of {run_dir} ({cfg.seeds})", "choose one of them")
    from peso.dataset import prepare

    prep = prepare(cfg)
    numbers = [int(s.number) for s in prep.samples]
    completed = set(read_progress(run_dir)["completed"])
    missing = [n for n in numbers[1:] if unit_name(seed, label, f"block_{n}") not in completed]
    if missing:
        raise PesoError(
            str(run_dir),
            f"{label} seed {seed} has not finished block(s) {missing}",
            f"finish it: peso run --resume {run_dir}",
        )
    check_out(out, "store", overwrite=False, inputs=[run_dir, Path(cfg.data.path)])
    unit = read_unit(unit_dir(run_dir, unit_name(seed, label, f"block_{numbers[-1]}")), with_state=True)
    df, items_table, data_dir = _run_interactions(cfg, numbers[-1])
    index = prep.index
    index_dict = {
        item: [index.level_tokens[d][int(c)] for d, c in enumerate(row)]
        for item, row in zip(index.items, index.codes, strict=True)
    }
    items = pl.DataFrame({"item": list(index_dict), "tokens": [json.dumps(t) for t in index_dict.values()]})
    titles = items_table.select("item", "title", "description") if items_table is not None else None
    items = (
        items.join(titles, on="item", how="left")
        if titles is not None
        else items.with_columns(
            pl.lit(None, pl.String).alias("title"), pl.lit(None, pl.String).alias("description")
        )
    )
    row = next(
        r
        for r in read_csv(run_dir / "results.csv")
        if r["method"] == label and r["seed"] == seed and r["block"] == numbers[-1]
    )
    with atomic_dir(out, kind="store") as tmp:
        (tmp / TOKENIZER_DIR).mkdir()
        assigner = load_assigner(data_dir, index_dict, tmp / TOKENIZER_DIR)
        info = {
            "format": FORMAT,
            "peso": _packages()["peso"],
            "method": label,
            "settings": entry.model_dump(mode="json"),
            "seed": seed,
            "config": cfg.dump(),
            "tokenizer": assigner,
            "source": {"run": str(run_dir.resolve()), "block": numbers[-1]},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_text(tmp / STORE_JSON, json.dumps(info, indent=2))
        v = tmp / VERSIONS / "1"
        v.mkdir(parents=True)
        df.write_parquet(v / INTERACTIONS)
        items.write_parquet(v / ITEMS)
        save_state(v, unit.params, unit.tensors, unit.meta, unit.rng)
        adapter = run_dir / f"seed_{seed}" / label / f"block_{numbers[-1]}" / "adapter"
        if adapter.is_dir():
            shutil.copytree(adapter, v / "adapter")
        version = {
            "version": 1,
            "parent": None,
            "block": len(numbers) - 1,
            "block_number": numbers[-1],
            "created": info["created"],
            "method": label,
            "data_up_to": int(df["timestamp"].max()),
            "users": int(df["user"].n_unique()),
            "items": int(df["item"].n_unique()),
            "metrics": {m: row[m] for m in ["users", *METRICS]},
            "published": True,
            "packages": _packages(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # as in a run's manifest
        }
        write_text(v / VERSION_JSON, json.dumps(version, indent=2))
        write_text(tmp / CURRENT, "1\n")
    return out


# --- update --------------------------------------------------------------------------------------------


@dataclass
class Slice:
    rows: pl.DataFrame  # user, item, timestamp, block, evaluated: the new block
    stats: dict
    new_items: pl.DataFrame  # item, tokens, title, description


def read_slice(store: Store, n: int, inputs: list[str], fmt: str, allow_late: bool, index: dict) -> Slice:
    """The new interactions, checked as `peso prepare` checks a log, against what version n has seen."""
    from peso.data.raw import Columns, detect_format, read_raw

    fmt = detect_format(inputs) if fmt == "auto" else fmt
    raw = read_raw(inputs, fmt, Columns(None, None, None))
    where = ", ".join(raw.sources) or "input"
    df = raw.interactions
    if df.is_empty():
        raise PesoError(where, "the slice holds no interaction", "give a file with new interactions")
    read = df.height
    df = dedupe(df.select("user", "item", "timestamp"))
    repeats_in_slice = read - df.height
    seen = store.interactions(n)
    known_pairs = df.join(seen.select("user", "item"), on=["user", "item"], how="semi").height
    df = df.join(seen.select("user", "item"), on=["user", "item"], how="anti")
    watermark = int(store.version(n)["data_up_to"])
    late = df.filter(pl.col("timestamp") < watermark)
    if late.height and not allow_late:
        first = late.row(0, named=True)
        raise PesoError(
            where,
            f"{late.height} interactions are older than the store's data (up to {watermark}), e.g. user "
            f"{first['user']} item {first['item']} at {first['timestamp']}",
            "give newer interactions, or pass --allow-late",
        )
    if df.is_empty():
        raise PesoError(
            where, "every interaction of the slice is already in the store", "give new interactions"
        )
    cfg = store.config()
    block = int(store.version(n)["block_number"]) + 1
    rows = df.with_columns(pl.lit(block, pl.Int32).alias("block"))
    rows = rows.with_columns((pl.len().over("user") >= cfg.data.min_items).alias("evaluated"))
    if not rows["evaluated"].any():
        raise PesoError(
            where,
            f"no user has >= {cfg.data.min_items} interactions in the slice: nothing to evaluate or train on",
            "give a larger slice",
        )
    new = [i for i in rows["item"].unique(maintain_order=True).to_list() if i not in index]
    text = raw.items
    new_items = pl.DataFrame({"item": new}, schema={"item": pl.String})
    if text is not None:
        table = text.select("item", *[c for c in ("title", "description") if c in text.columns])
        new_items = new_items.join(table.unique("item", keep="first"), on="item", how="left")
    for c in ("title", "description"):
        if c not in new_items.columns:
            new_items = new_items.with_columns(pl.lit(None, pl.String).alias(c))
    users_before = set(seen["user"].unique().to_list())
    stats = {
        "interactions": rows.height,
        "users": int(rows["user"].n_unique()),
        "evaluated_users": int(rows.filter("evaluated")["user"].n_unique()),
        "new_users": len(set(rows["user"].unique().to_list()) - users_before),
        "new_items": len(new),
        "dropped_repeats": repeats_in_slice + known_pairs,
        "late": late.height,
        "time_range": [int(rows["timestamp"].min()), int(rows["timestamp"].max())],
        "format": fmt,
        "inputs": raw.sources,
    }
    return Slice(rows.select(list(SCHEMA)).cast(SCHEMA), stats, new_items)


def _samples(df: pl.DataFrame, block: int, cfg: RunConfig, index: ItemIndex) -> BlockSamples:
    b: DataBlock = _block(df.with_row_index("_r"), block, "slice")
    d = cfg.data
    return build_samples(b, index.item_ids(), d.history, d.min_items, d.max_users, d.empty_history)


def _drift(previous: pl.DataFrame, current: pl.DataFrame) -> float:
    """Jensen-Shannon distance (base 2) between two blocks' item distributions."""
    a = previous.group_by("item").len()
    b = current.group_by("item").len()
    both = a.join(b, on="item", how="full", coalesce=True).fill_null(0)
    return float(jensenshannon(both["len"].to_numpy(), both["len_right"].to_numpy(), base=2))


def _metrics(ranked: np.ndarray, targets: np.ndarray) -> dict:
    users = per_user(ranked, targets)
    return {"users": len(targets), **{m: float(v.mean()) for m, v in users.items()}}


def update(
    store: Store,
    inputs: list[str],
    fmt: str = "auto",
    allow_late: bool = False,
    guard: str = "no-worse",
    tolerance: float = 0.0,
    dry_run: bool = False,
) -> dict:
    """One continual block of the store's method on a slice of new interactions; returns the report."""
    start = time.perf_counter()
    if dist.is_main():  # the lock holder: what an update killed mid-write left goes
        for leftover in store.path.glob(f"{VERSIONS}/.*.tmp"):
            shutil.rmtree(leftover, ignore_errors=True)
    n = store.current()
    cfg = store.config()
    info = store.info
    index = store.index(n)
    sl = read_slice(store, n, inputs, fmt, allow_late, index)
    new_tokens = assign_new_items(
        store.path / TOKENIZER_DIR, info["tokenizer"], index, sl.new_items, store.interactions(n), sl.rows
    )
    grown = {**index, **new_tokens}
    live = load_version(store, n, grown)
    seed, t = int(info["seed"]), live.block + 1
    everything = pl.concat([live.interactions, sl.rows])
    current = _samples(everything, int(sl.rows["block"][0]), cfg, live.index)
    last = int(store.version(n)["block_number"])
    previous = _samples(live.interactions, last, cfg, live.index)
    if len(current) == 0:
        raise PesoError(
            ", ".join(map(str, inputs)),
            f"no user has >= {cfg.data.min_items} items in the slice",
            "give a larger slice",
        )
    tc = method_train(live.method.settings, cfg.train)
    space, model = (
        replace(live.space, item_softmax=item_softmax_at(cfg.model, cfg.train, live.method.settings, t)),
        live.model,
    )
    trie = live.trie(everything)
    train = pack(current, space, "train", share=cfg.train.packing, trie=trie)
    valid = pack(current, space, "valid", trie=trie)
    evaluator = Evaluator(live.index, [trie], [current], cfg.decode)
    test_enc, valid_enc = encode(current, space, "test"), encode(current, space, "valid")
    sid = live.index.sid
    test_targets = sid[[current.target(u, current.test_position(u)) for u in range(len(current))]]
    valid_targets = sid[[current.target(u, current.valid_position(u)) for u in range(len(current))]]

    def evaluate(label: str, space: TokenSpace) -> tuple[np.ndarray, dict, dict]:
        ranked = evaluator.decode(model, space, test_enc, 0, f"{label} test")
        ranked_valid = evaluator.decode(model, space, valid_enc, 0, f"{label} validation")
        return ranked, _metrics(ranked, test_targets), _metrics(ranked_valid, valid_targets)

    _, before, before_valid = evaluate("previous", live.space)  # as the previous version serves
    popular = Popular(Popular.Settings(name="popular"), _context(cfg))
    popular.start(seed, _catalogue(live.index, trie))
    popular.fit_block(0, current)
    popular_metrics = _metrics(popular.rank(0, current, cfg.decode.top_k), test_targets)

    set_rng_state(live.rng)  # as the last block left them
    prev_pack = pack(previous, space, "train", share=cfg.train.packing, trie=live.trie())
    label = info["method"]
    earlier = lambda: _earlier(live, cfg, space)  # noqa: E731 (only retraining reads them)
    block = Block(
        t,
        BlockData(train, prev_pack, cfg.train.batch_size),
        valid,
        earlier,
        block_trainer(tc, seed, t, label),
        live.params,
        validation_loss(tc, valid),
    )
    report_train = live.method.run_block(model, block)
    ranked, after, after_valid = evaluate("new", space)
    rng = rng_state()
    state = live.method.state(model)
    passed = guard == "none" or after_valid["ndcg@10"] >= before_valid["ndcg@10"] - tolerance
    number = store.next_number()
    report = {
        "version": number,
        "parent": n,
        "block": t,
        "metrics": {"new": after, "previous": before, "popular": popular_metrics},
        "validation": {"new": after_valid, "previous": before_valid, "metric": "ndcg@10"},
        "slice": sl.stats,
        "drift_js": _drift(live.interactions.filter(pl.col("block") == last), sl.rows),
        "guard": {"rule": guard, "tolerance": tolerance, "passed": bool(passed)},
        "published": bool(passed and not dry_run),
        "dry_run": dry_run,
        "train_seconds": round(report_train.seconds, 2) if report_train is not None else 0.0,
    }
    if dry_run:
        report["seconds"] = round(time.perf_counter() - start, 2)
        return report
    new_items = sl.new_items.with_columns(
        pl.Series(
            "tokens", [json.dumps(new_tokens[i]) for i in sl.new_items["item"].to_list()], dtype=pl.String
        )
    )
    with atomic_dir(store.folder(number)) as tmp:
        sl.rows.write_parquet(tmp / INTERACTIONS)
        new_items.select("item", "tokens", "title", "description").write_parquet(tmp / ITEMS)
        save_state(tmp, live.params.changed("block0"), state.tensors, state.meta, rng)
        if report_train is not None:
            (tmp / "adapter").mkdir()
            live.method.export(model, tmp / "adapter")
            save_item_rows(model, space, tmp / "adapter" / "item_rows.safetensors")  # as `peso run` exports
        evaluator.save(ranked, 0, tmp)
        version = {
            "version": number,
            "parent": n,
            "block": t,
            "block_number": int(sl.rows["block"][0]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "method": label,
            "data_up_to": max(int(sl.rows["timestamp"].max()), int(store.version(n)["data_up_to"])),
            "users": int(everything["user"].n_unique()),
            "items": int(everything["item"].n_unique()),
            "metrics": after,
            "published": report["published"],
            "command": sys.argv,
            "packages": _packages(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # as in a run's manifest
        }
        report["seconds"] = round(time.perf_counter() - start, 2)
        write_text(tmp / REPORT, json.dumps(report, indent=2))
        write_text(tmp / VERSION_JSON, json.dumps(version, indent=2))
    if passed and dist.is_main():  # the one writer
        store.publish(number)
    return report


def _earlier(live: Loaded, cfg: RunConfig, space: TokenSpace) -> list[Packed]:
    blocks, trie = sorted(set(live.interactions["block"].to_list())), live.trie()
    return [
        pack(_samples(live.interactions, b, cfg, live.index), space, "train", cfg.train.packing, trie)
        for b in blocks
    ]


def _catalogue(index: ItemIndex, trie: Trie) -> Catalogue:
    """One block's catalogue: the items known now (what `popular` ranks among)."""
    known = np.flatnonzero(np.isin(index.sid, trie.sids))
    return Catalogue(index.sid, len(index.items), index.n_sids, [known])


# --- reading a store -----------------------------------------------------------------------------------


def recommend(
    store: Store,
    users: list[str] | None = None,
    histories: list[list[str]] | None = None,
    k: int = 10,
    exclude_history: bool = False,
    version: int | None = None,
    cold_start: bool = False,
) -> tuple[int, list[list[tuple[str, float]]]]:
    """Top-k (item group, score) lists for known users (their whole history) or given histories; an empty
    history (or, with `cold_start`, an unknown user) is answered by the empty-history beam search."""
    n = store.current() if version is None else version
    live = load_version(store, n)
    if users is not None:
        known = live.histories(users)
        unknown = [u for u in users if u not in known]
        if unknown and not cold_start:
            raise PesoError(
                "--user",
                f"unknown user(s) {unknown[:5]}",
                "give a user the store has seen, --history, or --cold-start",
            )
        histories = [known.get(u, []) for u in users]
    ids = live.index.item_ids()
    for h in histories:
        missing = [i for i in h if i not in ids]
        if missing:
            raise PesoError("--history", f"unknown item(s) {missing[:5]}", "give items the store knows")
    trie = live.trie()
    space, w = live.space, live.cfg.data.history
    prompts = [space.prompt(np.array([ids[i] for i in h[-w:]], dtype=np.int64)) for h in histories]
    d = live.cfg.decode
    top = d.beam if exclude_history else max(k, d.top_k)  # the whole beam: the history is filtered out after

    groups: dict[int, list[str]] = {}
    for item, g in zip(live.index.items, live.index.sid.tolist(), strict=True):
        groups.setdefault(g, []).append(item)
    out = []
    with merged(live.model) if live.cfg.decode.merge else contextlib.nullcontext():
        for start in range(0, len(prompts), live.cfg.decode.batch_size):
            batch = prompts[start : start + live.cfg.decode.batch_size]
            sids, scores = beam_search_batch(live.model, batch, space, trie, d.beam, top)
            for r, (row, sc) in enumerate(zip(sids.tolist(), scores.tolist(), strict=True)):
                seen = set(histories[start + r]) if exclude_history else set()
                lst = [
                    ("|".join(groups[g]), s)
                    for g, s in zip(row, sc, strict=True)
                    if g >= 0 and not set(groups[g]) & seen
                ]
                out.append(lst[:k])
    return n, out
