"""Experiment runner: blocks x methods x seeds. Block 0 is trained once per seed and shared by every
adapter strategy; each strategy then adapts block by block and is evaluated on each block's test targets.

Everything that can be checked (config, data, methods, model name) is checked before RUN_DIR is touched,
and every file in RUN_DIR is written atomically.

Runs resume (`peso run --resume RUN_DIR`) at method granularity; `peso.units` says how.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import yaml
from rich.console import Console
from safetensors.torch import save_file

from peso import dist
from peso.compare import compare_methods
from peso.config import RunConfig
from peso.data.load import read_blocks
from peso.data.samples import BlockSamples, build_samples
from peso.decode import recommend
from peso.errors import PesoError
from peso.io import Replacement, atomic_dir, check_out, mark, write_text
from peso.metrics import per_user
from peso.model import TokenSpace, attach_lora, check_lora_targets, load_backbone, save_base
from peso.pack import concat, pack
from peso.report import console_table, markdown, plot, write_csv
from peso.strategies import AdapterStrategy, StandaloneMethod, create
from peso.strategies.base import BlockData, Catalogue, save_adapter
from peso.strategies.peso import sweep as peso_sweep
from peso.tokenize.items import ItemIndex
from peso.tokenize.trie import Trie
from peso.train import BlockReport, Encoded, encode, train_block
from peso.units import (
    BLOCK0,
    Unit,
    check_same_config,
    check_units,
    load_resumable,
    load_unit,
    remove_partial_writes,
    rng_state,
    save_unit,
    set_rng_state,
    unit_dir,
    write_progress,
)

console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)  # logs keep whole table rows


@dataclass
class Prepared:
    """Validated inputs of a run: data, item index, trie and per-block samples."""

    name: str
    index: ItemIndex
    tries: list[Trie]  # per block: the IDs of the items seen up to that block (the catalogue grows)
    samples: list[BlockSamples]
    methods: list[str]
    simulation: dict | None = None  # `peso simulate`'s parameters, when the data came from it
    known: list[np.ndarray] = field(default_factory=list)  # per block: sorted item indices seen so far


def prepare(cfg: RunConfig) -> Prepared:
    for name in cfg.methods:
        create(name, cfg)  # unknown names fail here, before anything is written
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
        s = build_samples(block, ids, cfg.data.history, cfg.data.min_items, cfg.data.max_users)
        if len(s) == 0:
            raise PesoError(
                block.source,
                f"block {block.number} has no user with >= {cfg.data.min_items} items",
                "lower data.min_items or merge blocks",
            )
        samples.append(s)
    return Prepared(
        data.name, index, tries, samples, list(cfg.methods), data.meta.get("simulation"), known_items
    )


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return (
            out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def manifest(cfg: RunConfig, prep: Prepared, argv: list[str]) -> dict:
    pkgs = {}
    for p in ("peso", "torch", "transformers", "peft", "accelerate", "numpy", "safetensors", "pydantic"):
        try:
            pkgs[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pkgs[p] = None
    return {
        "command": argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seeds": cfg.seeds,
        "git_commit": _git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "packages": pkgs,
        "dataset": prep.name,
        "items": len(prep.index.items),
        "semantic_ids": prep.index.n_sids,
        "levels": prep.index.level_sizes,
        "collisions": prep.index.collisions(),
        "blocks": {int(s.number): len(s) for s in prep.samples},
        **({"simulation": prep.simulation} if prep.simulation else {}),
    }


def item_rows(model: torch.nn.Module, space: TokenSpace) -> dict[str, torch.Tensor]:
    """The effective item-token rows of the input embedding and the output layer."""
    ids = torch.tensor(space.all_item_token_ids())

    def weight(module: torch.nn.Module) -> torch.Tensor:
        if hasattr(module, "token_adapter"):
            return module.token_adapter.get_merged_weights(module.token_adapter.active_adapters)
        return module.weight

    return {
        "token_ids": ids,
        "embed_tokens": weight(model.get_input_embeddings())[ids].detach().contiguous(),
        "lm_head": weight(model.get_output_embeddings())[ids].detach().contiguous(),
    }


def export_block(strategy_export, model, space: TokenSpace, out_dir: Path) -> int:
    """The adapter in PEFT's format plus the item rows alone (safetensors), as one atomic folder."""
    with atomic_dir(out_dir) as tmp:
        nbytes = strategy_export(model, tmp)
        save_file(item_rows(model, space), str(tmp / "item_rows.safetensors"))
    return nbytes


@dataclass(frozen=True)
class Trained:
    """What a results row records of one block's training, for adapter and standalone methods alike."""

    seconds: float
    best_epoch: int | None  # None: no epoch was picked on validation (fixed epochs)
    targets_per_second: float

    @classmethod
    def of(cls, report: BlockReport) -> Trained:
        return cls(report.seconds, report.best_epoch, report.targets_per_second)


class Run:
    def __init__(
        self,
        cfg: RunConfig,
        prep: Prepared,
        out: Path,
        completed: list[str] | None = None,
        seconds: float = 0.0,
        on_commit=lambda: None,
        summary: dict | None = None,
    ) -> None:
        self.cfg, self.prep, self.out = cfg, prep, out
        self.on_commit, self.summary = on_commit, summary or {}
        self.completed: list[str] = list(completed or [])  # units done, "seed_<s>/<unit>", in order
        self.seconds0, self.start = seconds, time.perf_counter()  # earlier sessions' time, this one's start
        self.rows: list[dict] = []
        self.per_user: dict[tuple[str, int, int], np.ndarray] = {}  # (method, seed, block) -> NDCG@10
        self.last_users: dict[str, np.ndarray] = {}
        self.train_log: list[dict] = []
        groups: dict[int, list[str]] = {}
        for item, g in zip(prep.index.items, prep.index.sid.tolist(), strict=True):
            groups.setdefault(g, []).append(item)
        self.sid_items = {g: "|".join(items) for g, items in groups.items()}

    # --- shared pieces -------------------------------------------------------------------------------
    def _targets(self, s: BlockSamples) -> np.ndarray:
        return self.prep.index.sid[[s.target(u, s.test_position(u)) for u in range(len(s))]]

    def _eval(self, model, space, enc: Encoded, t: int, desc: str, out_dir: Path) -> dict[str, float]:
        d, s = self.cfg.decode, self.prep.samples[t]
        mine = dist.shard(len(enc.prompts))  # each process decodes its own users; all are gathered back
        ranked = recommend(
            model,
            [enc.prompts[i] for i in mine],
            space,
            self.prep.tries[t],
            d.beam,
            d.top_k,
            d.batch_size,
            desc,
            d.merge,
        )
        ranked = dist.gather_rows(ranked)
        self._save_recs(s, ranked, out_dir)
        return self._score(ranked, s)

    def _score(self, ranked: np.ndarray, s: BlockSamples) -> dict[str, float]:
        """Block metrics; the per-user values wait in `last_users` for the row that records them."""
        self.last_users = per_user(ranked, self._targets(s))
        return {m: float(v.mean()) for m, v in self.last_users.items()}

    def _save_recs(self, s: BlockSamples, ranked: np.ndarray, out_dir: Path) -> None:
        """user, test target, top-k list (items sharing a semantic ID joined by '|')."""
        index, buf = self.prep.index, io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["user", "target", "recommendations"])
        for u, row in enumerate(ranked):
            recs = " ".join(self.sid_items[g] for g in row if g >= 0)
            w.writerow([s.users[u], index.items[s.target(u, s.test_position(u))], recs])
        write_text(out_dir / "recommendations.csv", buf.getvalue())

    def _train(self, model, strategy: AdapterStrategy | None, t: int, seed: int, enc, label: str):
        tc = self.cfg.train
        continual = t > 0 and not (
            strategy and strategy.retrains
        )  # retraining is block 0 again, on more data
        torch.manual_seed(seed * 1000 + t)
        report = train_block(
            model,
            enc["train"],
            enc["valid"],
            lr=tc.lr * (tc.continual_lr_scale if continual else 1.0),
            epochs=(tc.continual_epochs or tc.epochs) if continual else tc.epochs,
            batch_size=tc.batch_size,
            warmup_steps=tc.warmup_steps,
            warmup_ratio=tc.warmup_ratio,
            weight_decay=tc.weight_decay,
            temperature=tc.temperature,
            grad_clip=tc.grad_clip,
            seed=seed * 1000 + t,
            autocast=tc.autocast == "bf16",
            extra_loss=(strategy.extra_loss if strategy else (lambda m, s: None)),
            desc=f"seed {seed} method {label} block {t}",
        )
        for e in range(report.epochs):
            self.train_log.append(
                {
                    "method": label,
                    "seed": seed,
                    "block": t,
                    "epoch": e + 1,
                    "train_ce": report.train_ce[e],
                    "proximal": report.train_penalty[e],
                    "proximal_share": report.train_penalty[e]
                    / (report.train_ce[e] + report.train_penalty[e]),
                    "valid_loss": report.valid_losses[e],
                    "best": int(e + 1 == report.best_epoch),
                }
            )
        return report

    def _row(
        self,
        method: str,
        seed: int,
        s: BlockSamples,
        metrics: dict,
        trained: Trained | None = None,
        nbytes: int = 0,
    ) -> None:
        row = {
            "method": method,
            "seed": seed,
            "block": int(s.number),
            "users": len(s),
            **metrics,
            "train_seconds": trained.seconds if trained else 0.0,
            "best_epoch": trained.best_epoch if trained and trained.best_epoch is not None else "",
            "targets_per_s": round(trained.targets_per_second, 1) if trained else "",
            "adapter_bytes": nbytes,
        }
        self.rows.append(row)
        self.per_user[(method, seed, int(s.number))] = self.last_users["ndcg@10"]
        console.print(
            f"  {method:>10} seed {seed} block {s.number}: hit@10 {metrics['hit@10']:.4f} "
            f"ndcg@10 {metrics['ndcg@10']:.4f} ({len(s)} users)"
        )
        self.flush()

    def flush(self) -> None:
        """Results so far, rewritten atomically after every block: a killed run leaves a readable table."""
        write_csv(self.rows, self.out / "results.csv")
        if self.train_log:
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=list(self.train_log[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(self.train_log)
            write_text(self.out / "training.csv", buf.getvalue())
        elif (self.out / "training.csv").exists() and dist.is_main():
            (self.out / "training.csv").unlink()

    # --- resumable units -----------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.seconds0 + time.perf_counter() - self.start

    def write_progress(self, finished: bool = False) -> None:
        write_progress(self.out, self.completed, self.elapsed(), finished)

    def _begin(self) -> tuple[int, int, int, float]:
        """Where this unit's rows, training log and per-user arrays start, and when it started."""
        return len(self.rows), len(self.train_log), len(self.per_user), time.perf_counter()

    def _commit(
        self, seed: int, unit: str, mark: tuple[int, int, int, float], state: dict | None = None
    ) -> None:
        """Save what the unit added, then list it in progress.json (`peso.units`)."""
        keys = list(self.per_user)[mark[2] :]
        record = Unit(
            self.rows[mark[0] :],
            self.train_log[mark[1] :],
            {(m, b): self.per_user[(m, s, b)] for m, s, b in keys},
            time.perf_counter() - mark[3],
            rng_state(),
            state,
        )
        save_unit(unit_dir(self.out, seed, unit), record)
        self.completed.append(f"seed_{seed}/{unit}")
        self.write_progress()
        self.on_commit()
        self.report()

    @contextlib.contextmanager
    def _unit(self, folders: list[Path]):
        """A unit's work: if it fails (bad input, divergence, a crash), nothing of it stays recorded."""
        mark = self._begin()
        try:
            yield mark
        except BaseException:
            del self.rows[mark[0] :], self.train_log[mark[1] :]
            for k in list(self.per_user)[mark[2] :]:
                del self.per_user[k]
            self.flush()
            if dist.is_main():
                for f in folders:
                    shutil.rmtree(f, ignore_errors=True)
            raise

    def units(self) -> list[str]:
        """Every unit of the run, in order ("seed_<s>/<unit>")."""
        methods = [create(n, self.cfg) for n in self.prep.methods] + peso_sweep(self.cfg)
        standalone = [m.name for m in methods if isinstance(m, StandaloneMethod)]
        adapters = [m.name for m in methods if isinstance(m, AdapterStrategy)]
        names = standalone + ([BLOCK0, *adapters] if adapters else [])
        return [f"seed_{s}/{u}" for s in self.cfg.seeds for u in names]

    def report(self, final: bool = False) -> None:
        """results.md from the rows so far; an unfinished run says so at its top."""
        summary = dict(self.summary)
        if not final:
            total = len(self.units())
            summary = {
                "incomplete": f"{len(self.completed)} of {total} units (resume with "
                f"`peso run --resume {self.out}`)",
                **summary,
            }
        shares: dict[str, list[float]] = {}
        for r in self.train_log:
            if r["block"] > 0 and r["proximal"] > 0:
                shares.setdefault(r["method"], []).append(r["proximal_share"])
        if shares:  # how much the extra term weighs: lambda is only meaningful against it
            summary["extra term's share of the training loss (mean over continual epochs)"] = ", ".join(
                f"{m} {np.mean(v):.2e}" for m, v in shares.items()
            )
        write_text(self.out / "results.md", markdown(self.rows, summary, compare_methods(self.per_user)))

    def _replay(self, seed: int, unit: str) -> Unit | None:
        """A completed unit's rows, log, per-user arrays and end RNG state, from RUN_DIR; None if not done."""
        if f"seed_{seed}/{unit}" not in self.completed:
            return None
        record = load_unit(unit_dir(self.out, seed, unit), with_state=unit == BLOCK0)
        self.rows.extend(record.rows)
        self.train_log.extend(record.train_log)
        for (m, b), v in record.per_user.items():
            self.per_user[(m, seed, b)] = v
        set_rng_state(record.rng)
        console.print(f"  seed {seed} {unit}: done before, {len(record.rows)} rows restored")
        self.flush()  # drops the rows a killed unit had written
        return record

    # --- one seed ------------------------------------------------------------------------------------
    def seed(self, seed: int) -> None:
        cfg, prep = self.cfg, self.prep
        methods = [create(n, cfg) for n in prep.methods] + peso_sweep(cfg)
        adapters = [m for m in methods if isinstance(m, AdapterStrategy)]
        for m in methods:
            if isinstance(m, StandaloneMethod) and not self._replay(seed, m.name):
                with self._unit([self.out / f"seed_{seed}" / m.name]) as mark:
                    index = prep.index
                    m.start(seed, Catalogue(index.sid, len(index.items), index.n_sids, prep.known))
                    for t, s in enumerate(prep.samples):
                        seconds = m.fit_block(t, s)
                        ranked = m.rank(t, s, cfg.decode.top_k)
                        self._save_recs(s, ranked, self.out / f"seed_{seed}" / m.name / f"block_{s.number}")
                        trained = None
                        if seconds is not None:
                            n = m.trained_targets or len(s.examples("train"))
                            trained = Trained(seconds, m.best_epoch or None, n / max(seconds, 1e-9))
                        self._row(m.name, seed, s, self._score(ranked, s), trained)
                    self._commit(seed, m.name, mark)
        if not adapters:
            return
        units = [BLOCK0] + [m.name for m in adapters]
        if all(f"seed_{seed}/{u}" in self.completed for u in units):  # nothing to train: no model needed
            for u in units:
                self._replay(seed, u)
            return
        torch.manual_seed(seed)
        np.random.seed(seed)
        backbone, space = load_backbone(cfg.model, prep.index)
        model = attach_lora(backbone, cfg.model, space).to(dist.device())
        encs = [
            {
                "train": pack(s, space, "train", share=cfg.train.packing),
                "valid": pack(s, space, "valid"),
                "test": encode(s, space, "test"),
            }
            for s in prep.samples
        ]
        seed_dir = self.out / f"seed_{seed}"

        # block 0, shared: tiny models learn every weight here (they start from random), LLMs only the adapter
        s0 = prep.samples[0]
        full = cfg.train.full_block0 if cfg.train.full_block0 is not None else cfg.model.name == "tiny"
        adapter_params = {n for n, p in model.named_parameters() if p.requires_grad}
        block0 = {n for n, p in model.named_parameters() if full or p.requires_grad}  # what block 0 trains
        init = {n: p.detach().clone() for n, p in model.named_parameters() if n in block0}  # for `retrain`
        params = dict(model.named_parameters())
        if replayed := self._replay(seed, BLOCK0):
            after0 = replayed.state
            _load(params, after0)
            model.eval()  # as training leaves it
        else:
            with self._unit([seed_dir / "block_0", seed_dir / "base"]) as mark:
                for n, p in model.named_parameters():
                    p.requires_grad_(n in block0)
                report0 = self._train(model, None, 0, seed, encs[0], "block0")
                for n, p in model.named_parameters():
                    p.requires_grad_(n in adapter_params)
                metrics0 = self._eval(
                    model, space, encs[0]["test"], 0, f"seed {seed} block 0 decode", seed_dir / "block_0"
                )
                if full:
                    with atomic_dir(seed_dir / "base") as tmp:
                        save_base(model, tmp)
                nbytes0 = export_block(save_adapter, model, space, seed_dir / "block_0" / "adapter")
                after0 = {n: p.detach().clone() for n, p in model.named_parameters() if n in block0}
                for m in adapters:
                    self._row(m.name, seed, s0, metrics0, Trained.of(report0), nbytes0)
                self._commit(seed, BLOCK0, mark, after0)

        for m in adapters:
            if self._replay(seed, m.name):
                continue
            with self._unit([seed_dir / m.name]) as mark:
                _load(params, after0)  # every method starts from the same block-0 model
                for t, s in enumerate(prep.samples[1:], start=1):
                    report, nbytes = None, 0
                    block_dir = seed_dir / m.name / f"block_{s.number}"
                    if (
                        m.retrains
                    ):  # from the block-0 starting point, on every block so far, as block 0 trains
                        _load(params, init)
                        for n, p in params.items():
                            p.requires_grad_(n in block0)
                        data = {
                            "train": concat([encs[i]["train"] for i in range(t + 1)]),
                            "valid": encs[t]["valid"],
                        }
                        report = self._train(model, m, t, seed, data, m.name)
                        for n, p in params.items():
                            p.requires_grad_(n in adapter_params)
                        nbytes = export_block(m.export, model, space, block_dir / "adapter")
                    elif m.trains:
                        m.setup_block(
                            model, t, BlockData(encs[t]["train"], encs[t - 1]["train"], cfg.train.batch_size)
                        )
                        report = self._train(model, m, t, seed, encs[t], m.name)
                        m.end_block(model, t)
                        nbytes = export_block(m.export, model, space, block_dir / "adapter")
                    metrics = self._eval(
                        model, space, encs[t]["test"], t, f"seed {seed} block {t} {m.name} decode", block_dir
                    )
                    self._row(m.name, seed, s, metrics, Trained.of(report) if report else None, nbytes)
                m.teardown(model)
                self._commit(seed, m.name, mark)


def _prepare_once(cfg: RunConfig) -> Prepared:
    """`prepare` in every process, the main one first: converting a model alias into the cache happens once."""
    dist.world()  # starts the process group, if launched as several
    console.quiet = not dist.is_main()
    if not dist.is_main():
        dist.barrier()
    prep = prepare(cfg)
    if dist.is_main():
        dist.barrier()
    return prep


def _load(params: dict[str, torch.nn.Parameter], state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, v in state.items():
            params[n].copy_(v)


def run(
    cfg: RunConfig,
    out: Path,
    overwrite: bool = False,
    argv: list[str] | None = None,
    inputs: list[Path] | None = None,
) -> list[dict]:
    """Validate, then run every seed and method; returns the result rows. `inputs`: files the command read
    (the config), which --out may not hold. With --overwrite the old run folder is put back if the new run
    fails before its first unit is complete."""
    prep = _prepare_once(cfg)
    model_dir = [Path(cfg.model.name)] if Path(cfg.model.name).exists() else []
    check_out(out, "run", overwrite, [Path(cfg.data.path), *model_dir, *(inputs or [])])
    dist.barrier()  # every process has looked before the main one moves the old run aside
    replacement = Replacement(out, "run")
    replacement.begin()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        info = manifest(cfg, prep, argv or sys.argv)
        mark(out, "run")
        write_text(out / "config.yaml", yaml.safe_dump(cfg.dump(), sort_keys=False))
        write_text(out / "manifest.json", json.dumps(info, indent=2))
        write_progress(out, [], 0.0, False)
        return _execute(cfg, prep, out, info, [], 0.0, on_commit=replacement.keep)
    except BaseException:
        replacement.undo()  # nothing if a unit was completed: the new run is then resumable
        raise


def resume(out: Path, given: RunConfig | None = None, argv: list[str] | None = None) -> list[dict]:
    """Continue a killed run from its completed units (see the module docstring); a finished run is only
    reported again. `given` (from --config / --set), if any, must equal the saved config."""
    dist.world()
    console.quiet = not dist.is_main()
    cfg, progress = load_resumable(out)
    check_units(out, progress["completed"])
    if given is not None:
        check_same_config(out, cfg, given)
    prep = _prepare_once(cfg)
    dist.barrier()  # every process has read progress.json before the main one cleans up
    if dist.is_main():
        remove_partial_writes(out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        info = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        info = manifest(cfg, prep, argv or sys.argv)
    info.setdefault("resumed", []).append(
        {
            "command": argv or sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "completed_units": len(progress["completed"]),
        }
    )
    write_text(out / "manifest.json", json.dumps(info, indent=2))
    console.print(f"resuming {out}: {len(progress['completed'])} units done before")
    stale = Replacement(out, "run")  # what an --overwrite killed before its first unit left beside
    return _execute(
        cfg, prep, out, info, progress["completed"], float(progress.get("seconds", 0.0)), stale.keep
    )


def _execute(
    cfg: RunConfig,
    prep: Prepared,
    out: Path,
    info: dict,
    completed: list[str],
    seconds: float,
    on_commit=lambda: None,
) -> list[dict]:
    col = info["collisions"]
    console.print(
        f"[bold]{prep.name}[/]: {len(prep.index.items)} items, {prep.index.n_sids} semantic IDs "
        f"({col['shared_ids']} shared by {col['items_in_shared_ids']} items), blocks "
        + ", ".join(f"{k}: {v} users" for k, v in info["blocks"].items())
    )
    summary = {
        "dataset": prep.name,
        "model": cfg.model.name,
        "seeds": cfg.seeds,
        "semantic-ID collisions": f"{col['shared_ids']} IDs shared by {col['items_in_shared_ids']} items "
        "(a generated ID is a hit for any item carrying it)",
    }
    run_ = Run(cfg, prep, out, completed, seconds, on_commit, summary)
    for seed in cfg.seeds:
        run_.seed(seed)
    info["wall_seconds"] = round(run_.elapsed(), 1)  # over every session, up to the last completed unit
    info["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    info["processes"] = dist.world()
    if torch.cuda.is_initialized():
        info["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    write_text(out / "manifest.json", json.dumps(info, indent=2))
    run_.summary["wall time"] = f"{info['wall_seconds']} s, peak memory {info['peak_rss_mb']} MiB"
    run_.report(final=True)
    plot(run_.rows, out / "ndcg10.png", f"{prep.name}: NDCG@10 per block")
    run_.write_progress(finished=True)
    console.print(console_table(run_.rows, f"{prep.name} ({cfg.model.name}), test Hit@10 / NDCG@10"))
    return run_.rows
