"""The other proximal terms the paper compares PESO with, one short class each. Every term starts from the
adapter inherited from the last block (as PESO does) and anchors to it as it is when the block starts.

l2          lam * mean_m ( ||A - A_prev||_F + ||B - B_prev||_F )                (Frobenius norms, not squared)
orthogonal  lam * mean_m ( ||A A_prev^T||_F^2 + ||B^T B_prev||_F^2 )           (O-LoRA style)
output-kl   lam * mean over target tokens of KL(p_current || p_previous)          (function space)
ewc         lam * sum_i F_i (theta_i - theta_prev_i)^2 / 2 over LoRA A/B entries   (Fisher of the last block,
            from per-target gradients)
peso-all    PESO's softmax-KL averaged over the adapters at the start of every block 1..t (not the latest only)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from safetensors.torch import save_file

from peso.model import lora_layers
from peso.pack import Step, forward_targets
from peso.settings import AdapterSettings, MethodSettings
from peso.strategies.base import AdapterStrategy, BlockData, RunContext, State, register, save_adapter
from peso.strategies.peso import Peso, PesoSettings, proximal_term

Pair = tuple[torch.Tensor, torch.Tensor]


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@contextmanager
def _swapped(model: torch.nn.Module, values: dict[int, torch.Tensor]) -> Iterator[None]:
    """Every parameter slot holding a parameter with id in `values` holds that tensor instead, while inside.
    Slots are replaced, nothing is written in place: the current step's autograd graph stays valid. (Not
    torch.func.functional_call: it restores a module that PEFT shares between tied layers wrongly.)"""
    saved = [
        (module, key, param)
        for module in model.modules()  # each module once, however many paths lead to it
        for key, param in module._parameters.items()
        if param is not None and id(param) in values
    ]
    try:
        for module, key, param in saved:
            module._parameters[key] = values[id(param)]
        yield
    finally:
        for module, key, param in saved:
            module._parameters[key] = param


class _WeightSpace(AdapterStrategy):
    """A per-module term of (A, B) against (A_prev, B_prev), the detached adapter at the block start, in
    float32 whatever the model's dtype."""

    def __init__(self, settings: MethodSettings, context: RunContext) -> None:
        super().__init__(settings, context)
        self.lam = settings.lam
        self.prev: dict[str, Pair] = {}

    def setup_block(self, model: torch.nn.Module, block: int, data: BlockData | None) -> None:
        self.prev = {
            n: (a.detach().float().clone(), b.detach().float().clone()) for n, a, b in lora_layers(model)
        }

    def extra_loss(self, model: torch.nn.Module, step: Step | None) -> torch.Tensor | None:
        if not self.prev or self.lam == 0:
            return None
        terms = [self.term(a.float(), b.float(), *self.prev[name]) for name, a, b in lora_layers(model)]
        return (self.lam * torch.stack(terms).mean()).float()

    def term(self, a: torch.Tensor, b: torch.Tensor, a0: torch.Tensor, b0: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class L2Settings(AdapterSettings):
    lam: float = Field(1.0, ge=0, description="weight of mean_m (||A - A_prev||_F + ||B - B_prev||_F)")


@register
class L2(_WeightSpace):
    name = "l2"
    Settings = L2Settings

    def term(self, a: torch.Tensor, b: torch.Tensor, a0: torch.Tensor, b0: torch.Tensor) -> torch.Tensor:
        # torch's norm has gradient 0 at 0, so the first step of a block (A == A_prev) is not NaN
        return torch.linalg.matrix_norm(a - a0) + torch.linalg.matrix_norm(b - b0)


class OrthogonalSettings(AdapterSettings):
    lam: float = Field(
        0.5, ge=0, description="weight of mean_m (||A A_prev^T||_F^2 + ||B^T B_prev||_F^2) (O-LoRA)"
    )


@register
class Orthogonal(_WeightSpace):
    """A (r x in) and B (out x r) pushed into subspaces orthogonal to the last block's: not toward it, so
    with an inherited adapter the term is largest at the block start."""

    name = "orthogonal"
    Settings = OrthogonalSettings

    def term(self, a: torch.Tensor, b: torch.Tensor, a0: torch.Tensor, b0: torch.Tensor) -> torch.Tensor:
        return (a @ a0.T).square().sum() + (b.T @ b0).square().sum()


class OutputKLSettings(AdapterSettings):
    lam: float = Field(
        1.0, ge=0, description="weight of KL(current || previous model) of next-token distributions"
    )


@register
class OutputKL(AdapterStrategy):
    """KL(current || previous) of the next-token distributions at the step's target positions. The previous
    model is this model with every trainable parameter as it was at the block start (LoRA A/B and the
    item-token rows: the whole adapter) swapped in. It runs in eval mode (a deterministic reference, no
    dropout), under bf16 autocast when the step's logits came from it."""

    name = "output-kl"
    Settings = OutputKLSettings

    def __init__(self, settings: OutputKLSettings, context: RunContext) -> None:
        super().__init__(settings, context)
        self.lam = settings.lam
        self.prev: dict[int, torch.Tensor] = {}  # by id of the live parameter

    def setup_block(self, model: torch.nn.Module, block: int, data: BlockData | None) -> None:
        self.prev = {id(p): p.detach().clone() for p in model.parameters() if p.requires_grad}

    def previous_logits(self, model: torch.nn.Module, step: Step) -> torch.Tensor:
        low = step.logits.dtype == torch.bfloat16
        with (
            torch.no_grad(),
            _eval_mode(model),
            torch.autocast(step.logits.device.type, dtype=torch.bfloat16, enabled=low),
            _swapped(model, self.prev),
        ):
            return model(**step.inputs).logits

    def extra_loss(self, model: torch.nn.Module, step: Step) -> torch.Tensor | None:
        if not self.prev or self.lam == 0:
            return None
        logp = F.log_softmax(step.logits.float(), dim=-1)
        logq = F.log_softmax(step.restrict(self.previous_logits(model, step)).float(), dim=-1)
        return self.lam * (logp.exp() * (logp - logq)).sum(-1).mean()


def diagonal_fisher(
    model: torch.nn.Module,
    params: dict[str, torch.Tensor],
    data: BlockData,
    max_targets: int,
    temperature: float,
    autocast: bool = False,
) -> dict[str, torch.Tensor]:
    """The empirical diagonal Fisher: the mean over the previous block's first `max_targets` training targets
    of g_n^2, g_n = the gradient of target n's negative log-likelihood (its tokens' cross-entropy on logits /
    temperature, summed), at the current weights, in eval mode. One forward pass per packed segment, then one
    backward pass per target of it (`retain_graph`): exact per-target gradients, so the estimate does not
    depend on how the targets are batched. (torch.func's vmap of the backward was
    ~100x slower here and held gigabytes: SDPA's backward has no batching rule.)"""
    names, tensors = list(params), list(params.values())
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}  # bf16 would round
    n_targets = 0
    rows = [r for batch in data.batches("previous", max_targets) for r in batch]
    with _eval_mode(model):
        for row in rows:  # one segment at a time: each target's backward runs through its segment only
            step = forward_targets(model, data.previous, np.array([row]), autocast)
            ce = F.cross_entropy(step.logits.float() / temperature, step.labels, reduction="none")
            losses = ce.view(-1, _tokens_per_target(data.previous, [row], len(ce))).sum(-1)
            for k in range(len(losses)):
                grads = torch.autograd.grad(losses[k], tensors, retain_graph=k < len(losses) - 1)
                for n, g in zip(names, grads, strict=True):
                    fisher[n].add_(g.float().square())
            n_targets += len(losses)
    return {n: f / max(n_targets, 1) for n, f in fisher.items()}


def _tokens_per_target(packed, rows, tokens: int) -> int:
    """Every target carries the same number of tokens (its item's ID, plus EOS for prompted models)."""
    n = int(packed.targets[rows].sum())
    if tokens % n:
        raise ValueError(f"{tokens} target tokens for {n} targets")
    return tokens // n


class EWCSettings(AdapterSettings):
    lam: float = Field(100.0, ge=0, description="weight of sum_i F_i (theta_i - theta_prev_i)^2 / 2")
    targets: int = Field(
        2048, ge=1, description="previous-block training targets whose gradients estimate the Fisher"
    )


@register
class EWC(AdapterStrategy):
    """Elastic weight consolidation on the LoRA A/B entries only: the same parameters the other proximal
    terms (and PESO) constrain, so the comparison is like for like; the item-token rows train freely, as
    under every strategy. The Fisher comes from the previous block alone (not accumulated over blocks), from
    per-target gradients (`diagonal_fisher`)."""

    name = "ewc"
    Settings = EWCSettings

    def __init__(self, settings: EWCSettings, context: RunContext) -> None:
        super().__init__(settings, context)
        self.lam = settings.lam
        self.prev: list[torch.Tensor] = []
        self.fisher: list[torch.Tensor] = []

    @staticmethod
    def params(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        return {f"{n}.{k}": p for n, a, b in lora_layers(model) for k, p in (("A", a), ("B", b))}

    def setup_block(self, model: torch.nn.Module, block: int, data: BlockData) -> None:
        params = self.params(model)
        self.prev = [p.detach().clone() for p in params.values()]
        c = self.context
        fisher = diagonal_fisher(model, params, data, self.settings.targets, c.temperature, c.autocast)
        self.fisher = list(fisher.values())

    def extra_loss(self, model: torch.nn.Module, step: Step | None) -> torch.Tensor | None:
        if not self.prev or self.lam == 0:
            return None
        params = self.params(model).values()
        total = sum(
            (f * (p - p0).square()).sum() for f, p, p0 in zip(self.fisher, params, self.prev, strict=True)
        )
        return (self.lam * total / 2).float()


@register
class PesoAll(Peso):
    """PESO anchored to every past adapter (the start of blocks 1..t), the mean of the terms: the paper's
    latest-vs-all ablation. Settings as PESO's."""

    name = "peso-all"
    Settings = PesoSettings

    def __init__(self, settings: PesoSettings, context: RunContext) -> None:
        super().__init__(settings, context)
        self.past: list[dict[str, Pair]] = []
        self.past_weights: list[dict[str, torch.Tensor]] = []  # the same anchors as A/B: what is kept

    def setup_block(self, model: torch.nn.Module, block: int, data: BlockData | None) -> None:
        super().setup_block(model, block, data)  # self.anchors: the adapter as it is now
        weights = {
            f"{n}.{k}": w.detach().clone() for n, a, b in lora_layers(model) for k, w in (("A", a), ("B", b))
        }
        # block 1 starts a new run of blocks (every method starts from the block-0 model)
        self.past = [self.anchors] if block == 1 else [*self.past, self.anchors]
        self.past_weights = [weights] if block == 1 else [*self.past_weights, weights]

    def state(self, model: torch.nn.Module) -> State:
        return State(self._past_tensors())  # the count is the tensors' own (load_state)

    def load_state(self, model: torch.nn.Module, state: State) -> None:
        # the count from the tensors themselves, so a block's export (past_anchors.safetensors) loads alone
        starts = len({k.split(".", 1)[0] for k in state.tensors if k.startswith("block_start_")})
        self.past_weights = [
            {k.split(".", 1)[1]: v for k, v in state.tensors.items() if k.startswith(f"block_start_{i + 1}.")}
            for i in range(starts)
        ]
        self.past = [
            {
                n: (
                    F.log_softmax(ws[f"{n}.A"].reshape(-1).double() / self.tau, 0),
                    F.log_softmax(ws[f"{n}.B"].reshape(-1).double() / self.tau, 0),
                )
                for n, _, _ in lora_layers(model)
            }
            for ws in self.past_weights
        ]

    def _past_tensors(self) -> dict[str, torch.Tensor]:
        return {
            f"block_start_{i + 1}.{k}": w.contiguous().cpu()
            for i, ws in enumerate(self.past_weights)
            for k, w in ws.items()
        }

    def export(self, model: torch.nn.Module, out_dir: Path) -> int:
        """The adapter, plus the A/B of every earlier block start (the next block's own anchor is the adapter
        itself): the state peso-all keeps grows by one adapter's A/B per block, unlike PESO's."""
        nbytes = save_adapter(model, out_dir)  # counts the PEFT files only: written before ours
        path = out_dir / "past_anchors.safetensors"
        save_file(self._past_tensors(), str(path))
        return nbytes + path.stat().st_size

    def extra_loss(self, model: torch.nn.Module, step: Step | None) -> torch.Tensor | None:
        if not self.past or self.lam == 0:
            return None
        return (self.lam * torch.stack([proximal_term(model, a, self.tau) for a in self.past]).mean()).float()
