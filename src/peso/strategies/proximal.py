"""The other proximal terms the paper compares PESO with, one short class each. Every term starts from the
adapter inherited from the last block (as PESO does) and anchors to it as it is when the block starts.

l2          lam * mean_m ( ||A - A_prev||_F + ||B - B_prev||_F )                (Frobenius norms, not squared)
orthogonal  lam * mean_m ( ||A A_prev^T||_F^2 + ||B^T B_prev||_F^2 )           (O-LoRA style)
output-kl   lam * mean over target tokens of KL(p_current || p_previous)          (function space)
ewc         lam * sum_i F_i (theta_i - theta_prev_i)^2 / 2 over LoRA A/B entries   (Fisher of the last block)
peso-all    PESO's softmax-KL averaged over the adapters at the start of every block 1..t (not the latest only)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from peso.config import RunConfig
from peso.model import lora_layers
from peso.pack import Step
from peso.strategies.base import AdapterStrategy, BlockData, register, save_adapter
from peso.strategies.peso import Peso, proximal_term
from peso.train import forward_targets

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

    setting: ClassVar[str]  # field of cfg.baselines holding lambda

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.lam = getattr(cfg.baselines, self.setting)
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


@register
class L2(_WeightSpace):
    name = "l2"
    setting = "l2"

    def term(self, a: torch.Tensor, b: torch.Tensor, a0: torch.Tensor, b0: torch.Tensor) -> torch.Tensor:
        # torch's norm has gradient 0 at 0, so the first step of a block (A == A_prev) is not NaN
        return torch.linalg.matrix_norm(a - a0) + torch.linalg.matrix_norm(b - b0)


@register
class Orthogonal(_WeightSpace):
    """A (r x in) and B (out x r) pushed into subspaces orthogonal to the last block's: not toward it, so
    with an inherited adapter the term is largest at the block start."""

    name = "orthogonal"
    setting = "orthogonal"

    def term(self, a: torch.Tensor, b: torch.Tensor, a0: torch.Tensor, b0: torch.Tensor) -> torch.Tensor:
        return (a @ a0.T).square().sum() + (b.T @ b0).square().sum()


@register
class OutputKL(AdapterStrategy):
    """KL(current || previous) of the next-token distributions at the step's target positions. The previous
    model is this model with every trainable parameter as it was at the block start (LoRA A/B and the
    item-token rows: the whole adapter) swapped in. It runs in eval mode (a deterministic reference, no
    dropout), under bf16 autocast when the step's logits came from it."""

    name = "output-kl"

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.lam = cfg.baselines.output_kl
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
        logq = F.log_softmax(self.previous_logits(model, step).float(), dim=-1)
        return self.lam * (logp.exp() * (logp - logq)).sum(-1).mean()


def diagonal_fisher(
    model: torch.nn.Module,
    params: list[torch.Tensor],
    data: BlockData,
    max_targets: int,
    temperature: float,
    autocast: bool = False,
) -> list[torch.Tensor]:
    """Mean over batches of the previous block's training data of the squared gradient of the batch's
    cross-entropy (logits / temperature, the training loss), at the current weights, in eval mode."""
    fisher = [torch.zeros_like(p, dtype=torch.float32) for p in params]  # bf16 would round the sums
    batches = 0
    with _eval_mode(model):
        for rows in data.batches("previous", max_targets):
            if len(rows) == 0:  # a block without training targets
                continue
            step = forward_targets(model, data.previous, rows, autocast)
            ce = F.cross_entropy(step.logits.float() / temperature, step.labels)
            for f, g in zip(fisher, torch.autograd.grad(ce, params), strict=True):
                f.add_(g.detach().float().square())
            batches += 1
    return [f / max(batches, 1) for f in fisher]


@register
class EWC(AdapterStrategy):
    """Elastic weight consolidation on the LoRA A/B entries only: the same parameters the other proximal
    terms (and PESO) constrain, so the comparison is like for like; the item-token rows train freely, as
    under every strategy. The Fisher comes from the previous block alone (not accumulated over blocks)."""

    name = "ewc"

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.lam = cfg.baselines.ewc
        self.prev: list[torch.Tensor] = []
        self.fisher: list[torch.Tensor] = []

    @staticmethod
    def params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
        return [p for _, a, b in lora_layers(model) for p in (a, b)]

    def setup_block(self, model: torch.nn.Module, block: int, data: BlockData) -> None:
        params = self.params(model)
        self.prev = [p.detach().clone() for p in params]
        tc = self.cfg.train
        self.fisher = diagonal_fisher(
            model, params, data, self.cfg.baselines.ewc_targets, tc.temperature, tc.autocast == "bf16"
        )

    def extra_loss(self, model: torch.nn.Module, step: Step | None) -> torch.Tensor | None:
        if not self.prev or self.lam == 0:
            return None
        params = self.params(model)
        total = sum(
            (f * (p - p0).square()).sum() for f, p, p0 in zip(self.fisher, params, self.prev, strict=True)
        )
        return (self.lam * total / 2).float()


@register
class PesoAll(Peso):
    """PESO anchored to every past adapter (the start of blocks 1..t), the mean of the terms: the paper's
    latest-vs-all ablation. Weight: cfg.peso.lam."""

    name = "peso-all"

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.past: list[dict[str, Pair]] = []
        self.past_weights: list[dict[str, torch.Tensor]] = []  # the same anchors as A/B: what is kept

    def setup_block(self, model: torch.nn.Module, block: int, data: BlockData | None) -> None:
        super().setup_block(model, block, data)  # self.anchors: the adapter as it is now
        weights = {
            f"{n}.{k}": w.detach().clone() for n, a, b in lora_layers(model) for k, w in (("A", a), ("B", b))
        }
        # block 1 starts a new run of blocks (the runner restores block 0 before each method)
        self.past = [self.anchors] if block == 1 else [*self.past, self.anchors]
        self.past_weights = [weights] if block == 1 else [*self.past_weights, weights]

    def export(self, model: torch.nn.Module, out_dir: Path) -> int:
        """The adapter, plus the A/B of every earlier block start (the next block's own anchor is the adapter
        itself): the state peso-all keeps grows by one adapter's A/B per block, unlike PESO's."""
        nbytes = save_adapter(model, out_dir)  # counts the PEFT files only: written before ours
        path = out_dir / "past_anchors.safetensors"
        tensors = {
            f"block_start_{i + 1}.{k}": w.contiguous().cpu()
            for i, ws in enumerate(self.past_weights)
            for k, w in ws.items()
        }
        save_file(tensors, str(path))
        return nbytes + path.stat().st_size

    def extra_loss(self, model: torch.nn.Module, step: Step | None) -> torch.Tensor | None:
        if not self.past or self.lam == 0:
            return None
        return (self.lam * torch.stack([proximal_term(model, a, self.tau) for a in self.past]).mean()).float()
