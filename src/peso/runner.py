"""`peso run`, a recipe over small components: seeds x methods x blocks.

Per seed, each standalone method runs its blocks; then the adapter strategies share one model: block 0 is
trained once, and each strategy starts from it and runs blocks 1.. through its own `run_block`. Every block
of every method is a unit: it is evaluated on the block's test targets, recorded (`ResultsLog`) and saved
with its block state (`UnitStore`), so a killed run resumes at the block it was in (`peso run --resume`).

Everything that can be checked is checked before RUN_DIR is touched (`peso.dataset.prepare`), and every
file in RUN_DIR is written atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import yaml
from rich.console import Console

from peso import dist
from peso.config import RunConfig, with_added_methods
from peso.dataset import Prepared, prepare
from peso.evaluate import Evaluator
from peso.inputs import Encoded, TokenSpace, encode
from peso.io import Replacement, atomic_dir, check_out, file_digests, mark, write_text
from peso.model import attach_lora, load_backbone, save_base, save_item_rows
from peso.pack import Packed, normalised, pack
from peso.params import ParamSets
from peso.report import ResultsLog, Trained, console_table, plot
from peso.runfolder import BLOCK0, Unit, unit_name
from peso.settings import MethodSettings, item_softmax_at, method_train
from peso.strategies import (
    AdapterStrategy,
    Block,
    BlockData,
    Method,
    RunContext,
    StandaloneMethod,
    State,
    create,
)
from peso.strategies.base import save_adapter
from peso.train import BlockReport, block_trainer, validation_loss
from peso.units import (
    UnitStore,
    check_same_config,
    load_resumable,
    remove_partial_writes,
    rng_state,
    set_rng_state,
    write_progress,
)

console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)  # logs keep whole table rows


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
        # the CPU kernels torch dispatches to (e.g. AVX2, AVX512): the same commit and packages on another
        # capability give slightly different floats, which long trainings amplify (docs/results.md)
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "packages": pkgs,
        "dataset": prep.name,
        "data_sha256": file_digests(Path(cfg.data.path)),  # across checkouts, tells data from float noise
        "items": len(prep.index.items),
        "semantic_ids": prep.index.n_sids,
        "levels": prep.index.level_sizes,
        "collisions": prep.index.collisions(),
        "blocks": {int(s.number): len(s) for s in prep.samples},
        **({"simulation": prep.simulation} if prep.simulation else {}),
    }


def export_block(strategy_export, model, space: TokenSpace, out_dir: Path) -> int:
    """The adapter in PEFT's format plus the item rows alone (safetensors), as one atomic folder. The rows'
    metadata names the item softmax the block trained and decodes under (`item_softmax_at`)."""
    with atomic_dir(out_dir) as tmp:
        nbytes = strategy_export(model, tmp)
        save_item_rows(model, space, tmp / "item_rows.safetensors")
    return nbytes


@dataclass
class Encodings:
    """One block's inputs for the LLM: packed training and validation targets, encoded test prompts."""

    train: Packed
    valid: Packed
    test: Encoded


@dataclass
class Backbone:
    """A seed's model for the adapter strategies, its blocks' inputs and its parameter sets: "adapter" (what
    continual blocks train), "block0" (what block 0 trains: every weight of `tiny`, else the adapter),
    snapshots "init" (before block 0) and "after0"."""

    model: torch.nn.Module
    space: TokenSpace
    params: ParamSets
    blocks: list[Encodings]
    full: bool  # block 0 trains every weight: the backbone is saved as a checkpoint


def _trained(report: BlockReport) -> Trained:
    return Trained(report.seconds, report.best_epoch, report.targets_per_second, report.valid_loss)


class Run:
    """The units of one run folder, in order."""

    def __init__(self, cfg: RunConfig, prep: Prepared, out: Path, store: UnitStore, log: ResultsLog) -> None:
        self.cfg, self.prep, self.out, self.store, self.log = cfg, prep, out, store, log
        self.evaluator = Evaluator(prep.index, prep.tries, prep.samples, cfg.decode)
        self.context = RunContext(
            cfg.train.temperature, cfg.train.autocast == "bf16", cfg.train.batch_size, cfg.data.history
        )
        self.seconds0, self.start = 0.0, time.perf_counter()
        self.on_commit = lambda: None

    # --- units ---------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.seconds0 + time.perf_counter() - self.start

    def units(self) -> list[str]:
        """Every unit of the run, in the order it runs them."""
        methods = [create(m, self.context) for m in self.cfg.methods]
        numbers = [int(s.number) for s in self.prep.samples]
        out = []
        for seed in self.cfg.seeds:
            out += [
                unit_name(seed, m.label, f"block_{n}")
                for m in methods
                if not m.uses_backbone
                for n in numbers
            ]
            adapters = [m for m in methods if m.uses_backbone]
            if adapters:
                out.append(unit_name(seed, BLOCK0))
                out += [unit_name(seed, m.label, f"block_{n}") for m in adapters for n in numbers[1:]]
        return out

    @contextlib.contextmanager
    def unit(self, name: str, folders: list[Path], supersedes: str | None = None):
        """A unit's work; on failure (bad input, divergence, a crash) nothing of it stays recorded.
        `supersedes`: the unit whose block state this one's makes unnecessary (the previous block)."""
        mark_, start = self.log.mark(), time.perf_counter()
        record = Unit([], [], {}, 0.0, {})
        try:
            yield record
        except BaseException:
            self.log.rollback(mark_)
            if dist.is_main():
                for f in folders:
                    shutil.rmtree(f, ignore_errors=True)
            raise
        record.rows, record.train_log, record.per_user = self.log.since(mark_)
        record.seconds, record.rng = time.perf_counter() - start, rng_state()
        self.store.save(name, record, self.elapsed(), supersedes)
        self.log.flush()
        self.on_commit()
        self.log.report(len(self.store.completed), len(self.units()))

    def replay(self, name: str, with_state: bool = False) -> Unit | None:
        """A completed unit's records, and the RNG states it ended with; None if not done."""
        if not self.store.done(name):
            return None
        unit = self.store.load(name, with_state)
        self.log.extend(
            int(name.split("/")[0].removeprefix("seed_")), unit.rows, unit.train_log, unit.per_user
        )
        set_rng_state(unit.rng)
        console.print(f"  {name}: done before, restored")
        return unit

    def record(
        self, labels: list[str], seed: int, t: int, ranked: np.ndarray, folder: Path, trained=None, nbytes=0
    ) -> None:
        """Save the lists, score them, and add a results row for each method they stand for."""
        s = self.prep.samples[t]
        self.evaluator.save(ranked, t, folder)
        metrics, users = self.evaluator.score(ranked, t)
        for label in labels:
            self.log.add(label, seed, int(s.number), len(s), metrics, users["ndcg@10"], trained, nbytes)
            console.print(
                f"  {label:>10} seed {seed} block {s.number}: hit@10 {metrics['hit@10']:.4f} "
                f"ndcg@10 {metrics['ndcg@10']:.4f} ({len(s)} users)"
            )

    # --- one seed ------------------------------------------------------------------------------------
    def seed(self, seed: int) -> None:
        methods = [create(m, self.context) for m in self.cfg.methods]
        for m in methods:
            if not m.uses_backbone:  # they need no model: first, as they always ran
                self.standalone(seed, m)
        adapters = [m for m in methods if m.uses_backbone]
        names = [unit_name(seed, BLOCK0)] + [self._name(seed, m, t) for m in adapters for t in self._later()]
        if not adapters:
            return
        if all(self.store.done(n) for n in names):  # nothing to train: no model needed
            for n in names:
                self.replay(n)
            return
        backbone = self.backbone(seed)
        self.block0(seed, backbone, adapters)
        for m in adapters:
            self.adapter(seed, m, backbone)

    def _later(self) -> range:
        return range(1, len(self.prep.samples))

    def _name(self, seed: int, m: Method, t: int) -> str:
        return unit_name(seed, m.label, f"block_{self.prep.samples[t].number}")

    def _folder(self, seed: int, m: Method, t: int) -> Path:
        return self.out / f"seed_{seed}" / m.label / f"block_{self.prep.samples[t].number}"

    def _resume_point(self, seed: int, m: Method, blocks: range) -> tuple[list[int], Unit | None]:
        """The method's blocks still to run, and the completed unit (with its state) it continues from."""
        done = [t for t in blocks if self.store.done(self._name(seed, m, t))]
        last = None
        for t in done:
            last = self.replay(self._name(seed, m, t), with_state=t == done[-1])
        return [t for t in blocks if t not in done], last

    def standalone(self, seed: int, m: StandaloneMethod) -> None:
        blocks = range(len(self.prep.samples))
        todo, last = self._resume_point(seed, m, blocks)
        if not todo:
            return
        rng = rng_state()
        m.start(seed, self.prep.catalogue())
        if last is not None:
            m.load_state(State(last.tensors, last.meta), self.prep.samples[: todo[0]])
            set_rng_state(rng)  # as the last block left it, whatever `start` and `load_state` drew
        for t in todo:
            s, folder = self.prep.samples[t], self._folder(seed, m, t)
            previous = self._name(seed, m, t - 1) if t > 0 else None
            with self.unit(self._name(seed, m, t), [folder], previous) as record:
                seconds = m.fit_block(t, s)
                trained = None
                if seconds is not None:
                    n = m.trained_targets or len(s.examples("train"))
                    trained = Trained(seconds, m.best_epoch or None, n / max(seconds, 1e-9))
                self.record([m.label], seed, t, m.rank(t, s, self.cfg.decode.top_k), folder, trained)
                state = m.state()
                record.tensors, record.meta = state.tensors, state.meta

    def backbone(self, seed: int) -> Backbone:
        cfg = self.cfg
        torch.manual_seed(seed)
        np.random.seed(seed)
        model, space = load_backbone(cfg.model, self.prep.index, self.prep.codebooks)
        model = attach_lora(model, cfg.model, space).to(dist.device())
        full = cfg.train.full_block0 if cfg.train.full_block0 is not None else cfg.model.name == "tiny"
        adapter = {n for n, p in model.named_parameters() if p.requires_grad}
        block0 = {n for n, p in model.named_parameters() if full or n in adapter}
        params = ParamSets(model, adapter=adapter, block0=block0)
        params.snapshot("init", "block0")  # where `retrain` starts every block from
        encs = [
            Encodings(
                pack(s, space, "train", share=cfg.train.packing, trie=trie),
                pack(s, space, "valid", trie=trie),
                encode(s, space, "test"),
            )
            for s, trie in zip(self.prep.samples, self.prep.tries, strict=True)
        ]
        return Backbone(model, space, params, encs, full)

    def trainer(self, seed: int, t: int, label: str, settings: MethodSettings | None = None):
        """The run's training loop for block position t (with the method's own continual schedule, if it has
        one), its epochs logged to training.csv."""
        tc = method_train(settings, self.cfg.train)
        return block_trainer(tc, seed, t, label, lambda r: self.log.training(label, seed, t, r))

    def block0(self, seed: int, bb: Backbone, adapters: list[AdapterStrategy]) -> None:
        """Block 0, shared: tiny models learn every weight here (they start from random), LLMs the adapter."""
        name, seed_dir = unit_name(seed, BLOCK0), self.out / f"seed_{seed}"
        if replayed := self.replay(name, with_state=True):
            self._share_block0(seed, name, replayed, [m.label for m in adapters])
            bb.params.load(replayed.params)
            bb.model.eval()  # as training leaves it
        else:
            with self.unit(name, [seed_dir / "block_0", seed_dir / "base"]) as record:
                with bb.params.training("block0"):
                    enc = bb.blocks[0]
                    report = self.trainer(seed, 0, "block0")(bb.model, enc.train, enc.valid, continual=False)
                ranked = self.evaluator.decode(bb.model, bb.space, enc.test, 0, f"seed {seed} block 0 decode")
                if bb.full:
                    with atomic_dir(seed_dir / "base") as tmp:
                        save_base(bb.model, tmp)
                nbytes = export_block(save_adapter, bb.model, bb.space, seed_dir / "block_0" / "adapter")
                labels = [m.label for m in adapters]  # one row per method: each continues from this block
                self.record(labels, seed, 0, ranked, seed_dir / "block_0", _trained(report), nbytes)
                record.params = bb.params.values("block0")
        bb.params.snapshot("after0", "block0")

    def _share_block0(self, seed: int, name: str, unit: Unit, labels: list[str]) -> None:
        """Methods added to the run after its block 0 (`--add-methods`) continue from it too: each gets the
        block-0 row every method has (the same lists), recorded in the block-0 unit as if it had been listed."""
        number = int(self.prep.samples[0].number)
        have = [m for m, b in unit.per_user if b == number]
        new = [label for label in labels if label not in have]
        if not new or not have:
            return
        first = next(r for r in unit.rows if r["method"] == have[0] and int(r["block"]) == number)
        rows = [{**first, "method": label} for label in new]
        per_user = {(label, number): unit.per_user[(have[0], number)] for label in new}
        self.log.extend(seed, rows, [], per_user)
        unit.rows += rows
        unit.per_user.update(per_user)
        if dist.is_main():
            self.store.rewrite(name, unit)
        console.print(f"  {name}: block 0 shared with {', '.join(new)}")

    def _normalised(self, bb: Backbone, settings: MethodSettings) -> tuple[TokenSpace, list[Encodings]]:
        """The space and block inputs of a method's blocks 1..: every loss of block t (its own, its validation,
        the previous block's for a Fisher) and its decoding under block t's softmax (`item_softmax_at`)."""
        softmax = item_softmax_at(self.cfg.model, self.cfg.train, settings, 1)
        if softmax == bb.space.item_softmax:
            return bb.space, bb.blocks
        space = replace(bb.space, item_softmax=softmax)
        encs = [
            Encodings(normalised(e.train, space, trie), normalised(e.valid, space, trie), e.test)
            for e, trie in zip(bb.blocks, self.prep.tries, strict=True)
        ]
        return space, encs

    def adapter(self, seed: int, m: AdapterStrategy, bb: Backbone) -> None:
        todo, last = self._resume_point(seed, m, self._later())
        if not todo:
            return
        rng = rng_state()
        bb.params.restore("after0")  # every method starts from the same block-0 model
        if last is not None:  # continue from its last completed block
            m.load_state(bb.model, State(last.tensors, last.meta))
            bb.params.load(last.params)
            set_rng_state(rng)
        space, encs = self._normalised(bb, m.settings)
        for t in todo:
            folder = self._folder(seed, m, t)
            previous = self._name(seed, m, t - 1) if t > 1 else None
            with self.unit(self._name(seed, m, t), [folder], previous) as record:
                data = BlockData(encs[t].train, encs[t - 1].train, self.cfg.train.batch_size)
                earlier = lambda t=t: [e.train for e in encs[:t]]  # noqa: E731 (only retraining reads them)
                train = self.trainer(seed, t, m.label, m.settings)
                valid_loss = validation_loss(method_train(m.settings, self.cfg.train), encs[t].valid)
                block = Block(t, data, encs[t].valid, earlier, train, bb.params, valid_loss)
                report = m.run_block(bb.model, block)
                nbytes = export_block(m.export, bb.model, space, folder / "adapter") if report else 0
                desc = f"seed {seed} block {t} {m.label} decode"
                ranked = self.evaluator.decode(bb.model, space, encs[t].test, t, desc)
                self.record([m.label], seed, t, ranked, folder, _trained(report) if report else None, nbytes)
                state = m.state(bb.model)
                record.params, record.tensors, record.meta = (
                    bb.params.changed("block0"),
                    state.tensors,
                    state.meta,
                )
        m.teardown(bb.model)


def set_threads(threads: int | str | None) -> None:
    """torch's CPU threads for `threads` (RunConfig.threads): "auto" leaves a core for the rest of the machine."""
    if threads == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // dist.world() - 1)
    if threads:
        torch.set_num_threads(int(threads))


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
        set_threads(cfg.threads)
        info = manifest(cfg, prep, argv or sys.argv)
        mark(out, "run")
        write_text(out / "config.yaml", yaml.safe_dump(cfg.dump(), sort_keys=False))
        write_text(out / "manifest.json", json.dumps(info, indent=2))
        write_progress(out, [], 0.0, False)
        return _execute(cfg, prep, out, info, UnitStore(out), 0.0, on_commit=replacement.keep)
    except BaseException:
        replacement.undo()  # nothing if a unit was completed: the new run is then resumable
        raise


def resume(
    out: Path, given: RunConfig | None = None, argv: list[str] | None = None, add_methods: str | None = None
) -> list[dict]:
    """Continue a killed run from its completed units; a finished run is only reported again. `given`
    (from --config / --set), if any, must equal the saved config. `add_methods` (a YAML list of method
    entries) extends the run: they run after the methods it has, from the same block 0, as if listed last."""
    dist.world()
    console.quiet = not dist.is_main()
    cfg, progress = load_resumable(out)
    store = UnitStore(out, progress["completed"])
    store.check()
    if given is not None:
        check_same_config(out, cfg, given)
    added = []
    if add_methods is not None:
        extended = with_added_methods(cfg, add_methods)
        added = [m.key for m in extended.methods[len(cfg.methods) :]]
    prep = _prepare_once(extended if added else cfg)  # the added methods' settings checked against the data
    if added:
        cfg = extended
        dist.barrier()
        if dist.is_main():
            write_text(out / "config.yaml", yaml.safe_dump(cfg.dump(), sort_keys=False))
    dist.barrier()  # every process has read progress.json before the main one cleans up
    if dist.is_main():
        remove_partial_writes(out)
    set_threads(cfg.threads)
    try:
        info = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        info = manifest(cfg, prep, argv or sys.argv)
    info.setdefault("resumed", []).append(
        {
            "command": argv or sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "completed_units": len(progress["completed"]),
            **({"added_methods": added} if added else {}),
        }
    )
    write_text(out / "manifest.json", json.dumps(info, indent=2))
    console.print(f"resuming {out}: {len(progress['completed'])} units done before")
    stale = Replacement(out, "run")  # what an --overwrite killed before its first unit left beside
    return _execute(cfg, prep, out, info, store, float(progress.get("seconds", 0.0)), stale.keep)


def _execute(
    cfg: RunConfig,
    prep: Prepared,
    out: Path,
    info: dict,
    store: UnitStore,
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
    log = ResultsLog(out, summary)
    run_ = Run(cfg, prep, out, store, log)
    run_.seconds0, run_.on_commit = seconds, on_commit
    for seed in cfg.seeds:
        run_.seed(seed)
    log.flush()  # a resumed finished run drops rows a killed unit had written
    info["wall_seconds"] = round(run_.elapsed(), 1)  # over every session, up to the last completed unit
    info["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    info["processes"] = dist.world()
    if torch.cuda.is_initialized():
        info["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    write_text(out / "manifest.json", json.dumps(info, indent=2))
    log.summary["wall time"] = f"{info['wall_seconds']} s, peak memory {info['peak_rss_mb']} MiB"
    log.report(len(store.completed), len(run_.units()), final=True)
    plot(log.rows, out / "ndcg10.png", f"{prep.name}: NDCG@10 per block")
    write_progress(out, store.completed, run_.elapsed(), True)
    console.print(console_table(log.rows, f"{prep.name} ({cfg.model.name}), test Hit@10 / NDCG@10"))
    return log.rows
