"""The method interface and registry.

A method is a short class with its own typed settings (`Settings`, a `MethodSettings`), registered by name
and chosen in `methods: [...]`. It is either an *adapter strategy*, which adapts the shared LLM block by
block through `run_block` (hooks below, in the spirit of PEFT's LoRA variants), or a *standalone*
recommender that needs no backbone (e.g. `popular`). A method receives its own settings and the few
run-wide values it needs (`RunContext`), never the whole run configuration.

What a method carries from one block to the next beyond the model's parameters (anchors, past adapters,
bases, a standalone model) is its `State`: tensors for safetensors and JSON for the rest. With the
parameters and the RNG states it makes up the block state that resume and the live path continue from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import ValidationError

from peso.data.samples import BlockSamples
from peso.pack import Packed, Step
from peso.params import ParamSets
from peso.settings import AdapterSettings, MethodSettings

REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if cls.name in REGISTRY:
        raise ValueError(f"method {cls.name} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def method_settings(entry: Any, where: str = "methods") -> MethodSettings:
    """A `methods:` entry (a name, or a mapping with `name` and the method's settings) as its typed
    settings; a ValueError names the entry, the method and the key."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ValueError(f"{where}: {entry!r} is neither a method name nor a mapping with 'name'")
    name = entry["name"]
    if name not in REGISTRY:
        raise ValueError(f"{where}: unknown method '{name}' (choose from {', '.join(sorted(REGISTRY))})")
    cls = REGISTRY[name].Settings
    try:
        return cls.model_validate(entry)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        problem = "unknown setting" if first["type"] == "extra_forbidden" else first["msg"]
        known = ", ".join(f for f in cls.model_fields if f != "name")
        raise ValueError(f"{where} ({name}): '{key}': {problem} (its settings: {known})") from None


@dataclass(frozen=True)
class RunContext:
    """The run-wide values a method may need."""

    temperature: float = 0.8  # of the training cross-entropy (train.temperature)
    autocast: bool = False  # bf16 autocast in training (train.autocast)
    batch_size: int = 64  # targets per training batch (train.batch_size)
    history: int = 20  # items of history before each target (data.history)


def create(entry: Any, context: RunContext | None = None) -> Method:
    """A method from a `methods:` entry or its settings."""
    settings = entry if isinstance(entry, MethodSettings) else method_settings(entry)
    return REGISTRY[settings.name](settings, context or RunContext())


@dataclass
class State:
    """A method's own state between blocks: tensors (safetensors) and plain values (JSON)."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def save_adapter(model: torch.nn.Module, out_dir: Path) -> int:
    """The adapter in PEFT's own format (adapter_config.json + adapter_model.safetensors)."""
    # the item rows travel as PEFT trainable-token deltas; without this PEFT would also copy the whole
    # (resized) embedding matrices into every block's adapter: ~500 MB each for a 1B model
    model.save_pretrained(out_dir, save_embedding_layers=False)
    return sum(f.stat().st_size for f in out_dir.iterdir() if f.suffix == ".safetensors")


class Method:
    name: ClassVar[str]
    Settings: ClassVar[type[MethodSettings]] = MethodSettings
    uses_backbone: ClassVar[bool]

    def __init__(self, settings: MethodSettings, context: RunContext) -> None:
        self.settings, self.context = settings, context

    @property
    def label(self) -> str:
        """Its name in results and folders (a λ sweep lists one method under several labels)."""
        return self.settings.key


@dataclass
class BlockData:
    """The training data a strategy may look at when a block starts: this block's and the previous one's."""

    current: Packed
    previous: Packed
    batch_size: int  # targets per batch

    def batches(self, which: str = "current", max_targets: int | None = None) -> Iterator[np.ndarray]:
        """Segment rows of `which` ('current' / 'previous') in batches, in order, up to `max_targets`."""
        packed = self.current if which == "current" else self.previous
        before = np.cumsum(packed.targets) - packed.targets  # targets ahead of each segment
        rows = np.arange(len(packed))
        if max_targets is not None:
            rows = rows[before < max_targets]
        yield from np.split(rows, np.flatnonzero(np.diff(before[rows] // self.batch_size)) + 1)


# train(model, train data, validation data, extra_loss, continual) -> the block's training report
Trainer = Callable[..., Any]


@dataclass
class Block:
    """One continual block t as a strategy sees it."""

    t: int
    data: BlockData  # this block's training data and the previous block's
    valid: Packed  # this block's validation targets
    earlier: Callable[[], list[Packed]]  # training data of blocks 0..t-1 (retraining reads them)
    train: Trainer  # the run's training loop: train(model, train, valid, extra_loss=..., continual=...)
    params: ParamSets  # "block0": what block 0 trains; snapshot "init": the block-0 starting point
    # the model's loss on `valid` as it stands, as training measures it (LSAT's fused model); None in tests
    valid_loss: Callable[[torch.nn.Module], float] | None = None


class AdapterStrategy(Method):
    """Continual adaptation of one LoRA adapter. Block 0 is shared by all strategies of a seed; each block
    after it runs through `run_block`: set up, train with the extra term, finish."""

    uses_backbone = True
    Settings: ClassVar[type[MethodSettings]] = AdapterSettings

    def run_block(self, model: torch.nn.Module, block: Block) -> Any:
        """Adapt the model to block t; returns the training report (None: nothing trained)."""
        self.setup_block(model, block.t, block.data)
        report = block.train(
            model, block.data.current, block.valid, extra_loss=self.extra_loss, continual=True
        )
        self.end_block(model, block.t)
        return report

    def setup_block(self, model: torch.nn.Module, block: int, data: BlockData) -> None:
        """Before training block `block` (>= 1): take anchors, add modules, estimate a Fisher, etc."""

    def extra_loss(self, model: torch.nn.Module, step: Step) -> torch.Tensor | None:
        """A term added to the cross-entropy at every step (None: nothing). `step`: this step's inputs and
        logits, for terms in function space."""
        return None

    def end_block(self, model: torch.nn.Module, block: int) -> None:
        """After the best epoch of block `block` is restored."""

    def export(self, model: torch.nn.Module, out_dir: Path) -> int:
        """Save the adapter state after a block for users; returns the bytes of its weights."""
        return save_adapter(model, out_dir)

    def state(self, model: torch.nn.Module) -> State:
        """What the strategy carries into the next block beyond the model's parameters."""
        return State()

    def load_state(self, model: torch.nn.Module, state: State) -> None:
        """Continue from a saved `state` on a model at the block-0 parameters: add what `setup_block` would
        have added (modules, anchors); the parameters themselves are loaded after."""

    def teardown(self, model: torch.nn.Module) -> None:
        """After the method's last block: remove whatever it added, so the next method starts clean."""


@dataclass
class Catalogue:
    """What a standalone method may know about the items."""

    sid: np.ndarray  # item index -> semantic-ID group (what evaluation scores: one group, one answer)
    n_items: int
    n_sids: int
    known: list[np.ndarray]  # per block position t: sorted item indices seen in blocks 0..t (the candidates)


def top_groups(
    scores: np.ndarray | torch.Tensor, catalogue: Catalogue, t: int, k: int, batch: int = 256
) -> np.ndarray:
    """(n_users, k) semantic-ID groups, best first, from (n_users, n_items) item scores.

    Only items known at block position t compete (as the LLM's trie); a group scores as its best item, so
    the list is the items in score order with each group kept at its first occurrence. Ties: lower group
    id first. Padded with -1 when fewer than k groups are known. Shared by every standalone model, so they
    all rank exactly as the evaluation scores (by group) and never recommend an unseen item.
    """
    scores = torch.as_tensor(scores).detach().cpu()
    if scores.ndim != 2 or scores.shape[1] != catalogue.n_items:
        raise ValueError(f"scores must be (n_users, {catalogue.n_items}), got {tuple(scores.shape)}")
    known = torch.as_tensor(catalogue.known[t], dtype=torch.long)
    groups = torch.as_tensor(catalogue.sid, dtype=torch.long)[known]
    k_eff = min(k, int(torch.unique(groups).numel()))
    out = np.full((scores.shape[0], k), -1, dtype=np.int64)
    if k_eff == 0:
        return out
    if not scores.is_floating_point():
        scores = scores.double()
    floor = torch.finfo(scores.dtype).min  # -inf / NaN items still rank, below every real score
    for lo in range(0, scores.shape[0], batch):
        s = torch.nan_to_num(scores[lo : lo + batch, known], nan=floor, posinf=None, neginf=floor)
        g = torch.full((s.shape[0], catalogue.n_sids), -torch.inf, dtype=s.dtype)  # -inf: no known item
        g.scatter_reduce_(1, groups.expand_as(s), s, "amax")
        kth = torch.topk(g, k_eff, dim=1).values[:, -1].tolist()  # the k-th best group score of each row
        g = g.numpy()
        for r, row in enumerate(g):
            cand = np.flatnonzero(row >= kth[r])  # the top k and anything tied with the k-th
            out[lo + r, :k_eff] = cand[np.lexsort((cand, -row[cand]))[:k_eff]]  # by score, ties by group id
    return out


class StandaloneMethod(Method):
    """A recommender without the LLM: fit on a block's training targets, rank semantic-ID groups over the
    items known so far (`top_groups`). Per seed: `start`, then per block position t `fit_block` and
    `rank`; `state` / `load_state` carry it across a resume."""

    uses_backbone = False
    # optional, set by fit_block for results.csv: the best epoch, and the targets per epoch it trained on
    best_epoch: int | None = None
    trained_targets: int | None = None

    def start(self, seed: int, catalogue: Catalogue) -> None:
        """Before a seed's first block: reset all state, seed RNGs."""
        self.seed, self.catalogue = seed, catalogue

    def fit_block(self, t: int, s: BlockSamples) -> float | None:
        """Train on block position t's samples (train targets only: `s.examples("train")` and `s.window`);
        returns the training seconds, None if the method does not train."""
        raise NotImplementedError

    def rank(self, t: int, s: BlockSamples, k: int) -> np.ndarray:
        """(len(s), k) semantic-ID groups best first for each user's test target (history =
        `s.window(u, s.test_position(u))`), -1 padding if fewer."""
        raise NotImplementedError

    def state(self) -> State:
        """Everything `fit_block` and `rank` of the next block need, after block t."""
        return State()

    def load_state(self, state: State, blocks: list[BlockSamples]) -> None:
        """Continue after `start` from a saved `state`; `blocks`: the samples of blocks 0..t."""
