"""PESO: one evolving adapter held near its last frozen state by a per-module softmax-KL proximal term.

L = CE + lambda * mean_m [ KL(softmax(vec A_m) || softmax(vec A_m^prev)) + KL(softmax(vec B_m) || softmax(vec B_m^prev)) ]
with one softmax over all entries of each flattened matrix and prev = the adapter at the end of the last block.
Option (not in the paper): softmax(vec / tau). Near uniform the KL is ~ Var_p(delta) / (2 tau^2), so a small tau
makes the term scale-aware for small adapter entries; tau = 1 is the paper.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from peso.model import lora_layers
from peso.pack import Packed, Step
from peso.progress import note
from peso.settings import AdapterSettings
from peso.strategies.base import AdapterStrategy, Block, BlockData, RunContext, State, register


def softmax_kl(current: torch.Tensor, anchor_logp: torch.Tensor) -> torch.Tensor:
    """KL(softmax(vec current) || p_anchor), with log p_anchor given (flattened).

    In float64: near a uniform softmax the KL is ~ Var_p(delta) / 2, far below float32's rounding of
    log-probabilities (~1e-7 each), so in float32 the sum is noise and can even come out negative.
    """
    logp = F.log_softmax(current.reshape(-1).double(), dim=0)
    return torch.sum(logp.exp() * (logp - anchor_logp))


def proximal_term(
    model: torch.nn.Module, anchors: dict[str, tuple[torch.Tensor, torch.Tensor]], tau: float = 1.0
) -> torch.Tensor:
    """Mean over adapted modules of KL_A + KL_B against the anchors' log-softmaxes (of entries / tau)."""
    terms = [
        softmax_kl(a / tau, anchors[name][0]) + softmax_kl(b / tau, anchors[name][1])
        for name, a, b in lora_layers(model)
    ]
    return torch.stack(terms).mean()


class ProximalSettings(AdapterSettings):
    """What PESO's term is over; lambda is each method's own (a setting, a rule, a choice)."""

    tau: float = Field(
        1.0, gt=0, description="softmax temperature on the adapter entries, softmax(v / tau); 1 = the paper"
    )
    rows: Literal["none", "matrix", "row"] = Field(
        "none",
        description="the item-token rows under the term too (not in the paper; they carry much of a continual "
        "update): none; matrix: each trainable row matrix one more module; row: every row a module",
    )


class PesoSettings(ProximalSettings):
    lam: float = Field(5.0, ge=0, description="lambda, weight of the softmax-KL proximal term")


@register
class Peso(AdapterStrategy):
    name = "peso"
    Settings = PesoSettings

    def __init__(self, settings: PesoSettings, context: RunContext) -> None:
        super().__init__(settings, context)
        self.lam, self.tau = self.first_lam(), settings.tau
        self.anchors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.row_anchors: dict[str, torch.Tensor] = {}

    def first_lam(self) -> float:
        """lambda before any block has set it (subclasses that choose it per block start elsewhere)."""
        return self.settings.lam

    def setup_block(self, model: torch.nn.Module, block: int, data: BlockData) -> None:
        # the adapter inherits last block's state, so the anchor is the adapter as it is now: the term starts at 0
        self.anchors = anchors(model, self.tau)
        self.row_anchors = {n: self._rows_logp(p.detach()) for n, p in item_row_params(model)}

    def _rows_logp(self, rows: torch.Tensor) -> torch.Tensor:
        if self.settings.rows == "matrix":
            return F.log_softmax(rows.reshape(-1).double() / self.tau, 0)
        return F.log_softmax(rows.double() / self.tau, -1)  # one softmax per row

    def extra_loss(self, model: torch.nn.Module, step: Step) -> torch.Tensor | None:
        if not self.anchors or self.lam == 0:
            return None
        if self.settings.rows == "none":
            return (self.lam * proximal_term(model, self.anchors, self.tau)).float()
        terms = [
            softmax_kl(a / self.tau, self.anchors[name][0]) + softmax_kl(b / self.tau, self.anchors[name][1])
            for name, a, b in lora_layers(model)
        ]
        for name, rows in item_row_params(model):
            if self.settings.rows == "matrix":
                terms.append(softmax_kl(rows / self.tau, self.row_anchors[name]))
            else:
                logp = F.log_softmax(rows.double() / self.tau, -1)
                terms.extend((logp.exp() * (logp - self.row_anchors[name])).sum(-1))  # each row a module
        return (self.lam * torch.stack(terms).mean()).float()


def item_row_params(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The trainable item-token rows (PEFT's trainable-token deltas of the embedding and output layers)."""
    return [(n, p) for n, p in model.named_parameters() if "trainable_tokens_delta" in n]


def anchors(model: torch.nn.Module, tau: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per adapted module, log-softmax(vec A / tau) and log-softmax(vec B / tau) of the adapter as it is."""
    return {
        name: (
            F.log_softmax(a.detach().reshape(-1).double() / tau, 0),
            F.log_softmax(b.detach().reshape(-1).double() / tau, 0),
        )
        for name, a, b in lora_layers(model)
    }


class AdaptiveSettings(PesoSettings):
    lam: float = Field(
        1.3e3, ge=0, description="lambda when the block holds nothing new to learn (gain <= 0)"
    )
    kappa: float = Field(
        2.0,
        ge=0,
        description="how fast lambda falls with the gain: lambda_t = lam * exp(-kappa * gain_t) (0: PESO)",
    )
    alpha: float = Field(1.0, gt=0, description="add-alpha smoothing of the item counts behind the gain")


@register
class PesoAdaptive(Peso):
    """PESO with lambda set per block, before training, from how much the block has to teach that the past
    does not already say (beyond the paper, which names an adaptive lambda as future work):

        gain_t = held-out log-likelihood gain, in nats per target, of this block's item popularity over the
                 previous block's (`popularity_gain`);   lambda_t = lam * exp(-kappa * max(gain_t, 0)).

    A block whose own popularity predicts its held-out targets no better than the last block's (a diffuse fad,
    noise) keeps the anchor's full weight: stability. A block with something concentrated and new (hot
    items, arrivals) frees the adapter: plasticity. Model-free and cheap: counts of target IDs.

    Designed on the simulator only (docs/results.md), at the continual schedule the dataset configs use (full
    rate, <= 4 epochs, patience 1): gain_t is 0.10-0.16 nats in sim-noisy, where lambda 1e3 was the best fixed
    value, and 1.8-2.0 in sim-trending, where 10-100 were; lam 1.3e3 and kappa 2 give lambda_t of about
    950-1070 and 23-36 there. At the old 0.1x rate the same fit gave lam 2e5, kappa 4. A first rule,
    lambda_t = lam * (1 - JS_t) ** kappa on the Jensen-Shannon distance between the two blocks' distributions,
    failed: JS_t is high for both worlds (0.5-0.6 and 0.8-0.9) because it cannot tell a diffuse change from a
    learnable one."""

    name = "peso-adaptive"
    Settings = AdaptiveSettings

    def setup_block(self, model: torch.nn.Module, block: int, data: BlockData) -> None:
        super().setup_block(model, block, data)
        self.gain = popularity_gain(data.previous, data.current, self.settings.alpha)
        self.lam = self.settings.lam * math.exp(-self.settings.kappa * max(self.gain, 0.0))
        note(f"peso-adaptive block {block}: popularity gain {self.gain:.3f} nats, lambda {self.lam:.4g}")


def target_ids(packed: Packed) -> list[list[tuple[int, ...]]]:
    """Each segment's targets as tuples of target tokens (its item's semantic ID)."""
    out = []
    for s in packed.segments:
        labels = s.labels[s.labels >= 0]
        width = len(labels) // max(s.targets, 1)
        out.append([tuple(labels[k * width : (k + 1) * width].tolist()) for k in range(s.targets)])
    return out


def popularity_gain(previous: Packed, current: Packed, alpha: float = 1.0) -> float:
    """Mean log p_now(id) - log p_before(id) over the current block's targets, cross-fitted: its segments in
    two folds (even, odd), each fold's targets scored under the other fold's counts (p_now) and under the
    previous block's (p_before), both add-alpha smoothed over the IDs either block holds plus one unseen.
    0 if a fold is empty."""
    before: Counter = Counter(k for seg in target_ids(previous) for k in seg)
    folds: list[Counter] = [Counter(), Counter()]
    for i, seg in enumerate(target_ids(current)):
        folds[i % 2].update(seg)
    if not folds[0] or not folds[1]:
        return 0.0
    vocab = len(set(before) | set(folds[0]) | set(folds[1])) + 1

    def mean_logp(counts: Counter, held: Counter) -> float:
        total = sum(counts.values()) + alpha * vocab
        return sum(n * math.log((counts[k] + alpha) / total) for k, n in held.items()) / sum(held.values())

    gains = [mean_logp(folds[1 - f], folds[f]) - mean_logp(before, folds[f]) for f in (0, 1)]
    return float(sum(gains) / 2)


class SelectSettings(ProximalSettings):
    lams: list[float] = Field(
        [0.0, 100.0, 1000.0],
        min_length=1,
        description="the lambdas each block trains with in turn; it keeps the one of lowest validation loss "
        "(ties: the first)",
    )

    @field_validator("lams")
    @classmethod
    def _non_negative(cls, v: list[float]) -> list[float]:
        if any(not math.isfinite(x) or x < 0 for x in v):
            raise ValueError(f"every lambda must be finite and >= 0, got {v}")
        return v


@register
class PesoSelect(Peso):
    """PESO with lambda chosen per block on the block's own validation targets (beyond the paper): block t
    trains once per lambda in `lams`, each from the same start with the same batches and seed, and keeps the
    one of lowest best-epoch validation loss. Test targets are never read. A block costs len(lams) trainings
    (all counted in its seconds); training.csv holds one epoch series per lambda, in `lams` order
    (`pass` 1, 2, ...).

    Why (docs/results.md, issue 18 section 4): no drift statistic of the data tells the real blocks from the
    simulator's noisy world, yet lambda 1e3, the best fixed value there, costs on real data; what decides is
    how much this model still gains from the block, which only training on it measures. The default grid is
    the simulator's best fixed lambdas at the full rate (1e3 in sim-noisy, 1e2 in sim-trending) and 0
    (`single`); it was fixed before any real data ran with this method."""

    name = "peso-select"
    Settings = SelectSettings

    def __init__(self, settings: SelectSettings, context: RunContext) -> None:
        super().__init__(settings, context)
        self.chosen: list[float] = []  # lambda of blocks 1.. so far

    def first_lam(self) -> float:
        return self.settings.lams[0]

    def run_block(self, model: torch.nn.Module, block: Block) -> Any:
        self.setup_block(model, block.t, block.data)
        params = [p for p in model.parameters() if p.requires_grad]
        start = [p.detach().clone() for p in params]
        best: tuple[float, float, Any, list[torch.Tensor]] | None = None
        seconds, targets = 0.0, 0
        for lam in self.settings.lams:
            with torch.no_grad():
                for p, s in zip(params, start, strict=True):
                    p.copy_(s)
            self.lam = lam
            report = block.train(
                model, block.data.current, block.valid, extra_loss=self.extra_loss, continual=True
            )
            seconds, targets = seconds + report.seconds, targets + report.targets
            loss = min(report.valid_losses)
            note(f"peso-select block {block.t}: lambda {lam:g}, best validation loss {loss:.4f}")
            if best is None or loss < best[0]:
                best = (loss, lam, report, [p.detach().clone() for p in params])
        loss, self.lam, report, kept = best
        with torch.no_grad():
            for p, s in zip(params, kept, strict=True):
                p.copy_(s)
        self.chosen.append(self.lam)
        note(f"peso-select block {block.t}: kept lambda {self.lam:g}")
        report.seconds, report.targets = seconds, targets  # the block's cost: every training
        return report

    def state(self, model: torch.nn.Module) -> State:
        return State(meta={"lambdas": list(self.chosen)})

    def load_state(self, model: torch.nn.Module, state: State) -> None:
        self.chosen = [float(x) for x in state.meta.get("lambdas", [])]
