"""Cumulative-adapter baselines: a trainable LoRA plus frozen adapters of earlier blocks, summed.

SumLoRA  y = W x + sum_i s x (A_i/||A_i||_F)^T (B_i/||B_i||_F)^T + s x A^T B^T
SD-LoRA  y = W x + sum_i m_i s x (A_i/||A_i||_F)^T (B_i/||B_i||_F)^T + m s x A^T B^T   (m_i, m learnable, init 1)
InfLoRA  y = W x + sum_i s x A_i^T B_i^T + s x A^T B^T, A fixed orthogonal to earlier blocks' inputs, B trained

s = the LoRA scaling (alpha / r); A, B = PEFT's "default" adapter; (A_i, B_i) = that adapter as it stood at the
end of each earlier block (block 0 included). `all` keeps every past adapter, `latest` only the last one; the
new adapter is re-initialised each block (A kaiming-uniform as PEFT does, B = 0) or inherited (`-inherit`).

The past adapters of a LoRA layer live in a `PastAdapters` child of that layer, added to its output by a
forward hook; SD-LoRA's magnitudes are parameters of that child, so the optimizer, the best-epoch restore
and `peso.model.merged` all see them.

Settings: SD-LoRA's `magnitude_init` (the magnitudes' start, 1 as the paper); InfLoRA's `energy` / `targets`
(how much of earlier inputs' energy the protected basis covers, and from how many training targets it is
estimated).

Deviations from the official code: SD-LoRA's older past adapters keep their learned magnitudes from block to
block, and a newly frozen one starts at `magnitude_init` (the official code re-initialises none of them); the
past adapters live in the LoRA layers' forward hooks rather than in separate PEFT adapters.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import torch
from pydantic import Field
from safetensors.torch import save_file
from torch import nn

from peso.model import lora_layers
from peso.pack import forward_targets
from peso.settings import AdapterSettings, MethodSettings
from peso.strategies.base import AdapterStrategy, BlockData, RunContext, State, register, save_adapter

CHILD = "cumulative_past"  # attribute name of the PastAdapters child on each LoRA layer (no "lora_": PEFT
# filters its state dicts by that prefix, and these tensors are saved by `export` instead)


def _unit(t: torch.Tensor) -> torch.Tensor:
    """t / ||t||_F; an all-zero matrix (an untrained B) stays zero instead of NaN."""
    return t / t.norm().clamp_min(torch.finfo(t.dtype).tiny)


class PastAdapters(nn.Module):
    """The frozen past adapters of one LoRA layer: it adds sum_i c_i (x A_i^T) B_i^T to the layer's output,
    c_i = s (x the learnable magnitude m_i for SD-LoRA). For SD-LoRA it also scales the current adapter's
    term by a learnable magnitude m, through a hook on its lora_B."""

    def __init__(self, layer: nn.Module, magnitudes: bool, init: float = 1.0) -> None:
        super().__init__()
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        self.scaling = float(layer.scaling["default"])
        self.rank = a.shape[0]
        self.register_buffer("A", a.new_zeros(0, *a.shape), persistent=False)  # (n, r, in)
        self.register_buffer("B", b.new_zeros(0, *b.shape), persistent=False)  # (n, out, r)
        self.magnitudes = nn.Parameter(a.new_zeros(0)) if magnitudes else None  # m_i, one per past adapter
        self.init = init  # start of m and of each newly frozen m_i (SD-LoRA's magnitude_init)
        self.current = nn.Parameter(a.new_full((), init)) if magnitudes else None  # m of the current adapter
        self.folded = False  # True while `merged` holds this term in the base weight: the hook adds nothing
        self.handles = [layer.register_forward_hook(self._add)]
        if magnitudes:
            self.handles.append(layer.lora_B["default"].register_forward_hook(self._scale_current))
        layer.add_module(CHILD, self)

    def push(self, a: torch.Tensor, b: torch.Tensor, normalise: bool, keep_latest: bool) -> None:
        """Freeze (A, B) as the newest past adapter (Frobenius-normalised if asked); its magnitude and the current
        one start at `init` (1 in the paper), the older ones keep theirs (SD-LoRA learns them on)."""
        a, b = a.detach().clone(), b.detach().clone()
        if normalise:
            a, b = _unit(a), _unit(b)
        keep = slice(len(self.A), None) if keep_latest else slice(None)  # `latest`: drop the older ones
        self.A = torch.cat([self.A[keep], a[None]])
        self.B = torch.cat([self.B[keep], b[None]])
        if self.magnitudes is not None:
            old = self.magnitudes.detach()[keep]
            self.magnitudes = nn.Parameter(torch.cat([old, old.new_full((1,), self.init)]))
            with torch.no_grad():
                self.current.fill_(self.init)

    def coefficients(self) -> torch.Tensor:
        """c_i per past adapter."""
        ones = self.A.new_ones(len(self.A))
        return self.scaling * (ones if self.magnitudes is None else self.magnitudes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, r = self.A.shape[0], self.rank
        # all past adapters in one pair of matmuls: x [A_1; ..; A_n]^T, scaled per adapter, times [B_1 .. B_n]^T
        h = x.to(self.A.dtype) @ self.A.reshape(n * r, -1).T
        h = h * self.coefficients().repeat_interleave(r)
        return h @ self.B.permute(1, 0, 2).reshape(self.B.shape[1], n * r).T

    def _add(self, layer: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        if self.folded or len(self.A) == 0:
            return out
        return out + self(args[0]).to(out.dtype)

    def _scale_current(self, lora_b: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return out * self.current

    def merge_delta(self, layer: nn.Module) -> torch.Tensor:
        """What this adds, as a weight (out, in): sum_i c_i B_i A_i, plus (m - 1) s B A for SD-LoRA (PEFT's merge
        folds s B A already). `peso.model.merged` adds it to the base weight and sets `folded`."""
        c = self.coefficients()
        delta = torch.einsum("n,nor,nri->oi", c, self.B, self.A)
        if self.current is not None:
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            delta = delta + (self.current - 1) * self.scaling * (b @ a)
        return delta.detach()

    def remove(self, layer: nn.Module) -> None:
        for h in self.handles:
            h.remove()
        delattr(layer, CHILD)

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {f"{prefix}.A": self.A, f"{prefix}.B": self.B}
        if self.magnitudes is not None:
            out[f"{prefix}.magnitudes"] = self.magnitudes.detach()
            out[f"{prefix}.current"] = self.current.detach().reshape(1)
        return {k: v.contiguous().cpu() for k, v in out.items()}

    def load(self, tensors: dict[str, torch.Tensor], prefix: str) -> None:
        """The past adapters (and magnitudes) that `tensors` saved under `prefix`."""
        device = self.A.device
        self.A, self.B = tensors[f"{prefix}.A"].to(device), tensors[f"{prefix}.B"].to(device)
        if self.magnitudes is not None:
            self.magnitudes = nn.Parameter(tensors[f"{prefix}.magnitudes"].to(device).clone())
            with torch.no_grad():
                self.current.copy_(tensors[f"{prefix}.current"].reshape(()))


def lora_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> PEFT LoRA layer, for every module adapted by the "default" adapter."""
    modules = dict(model.named_modules())
    return {name: modules[name] for name, _, _ in lora_layers(model)}


class Cumulative(AdapterStrategy):
    """A new trainable adapter each block over the frozen adapters of earlier blocks."""

    keep_latest: ClassVar[bool] = False  # `latest`: only the last past adapter; else all of them
    inherit: ClassVar[bool] = False  # the new adapter starts from the last one; else re-initialised
    normalise: ClassVar[bool] = True  # past adapters enter Frobenius-normalised (SumLoRA, SD-LoRA)
    magnitudes: ClassVar[bool] = False  # learnable magnitudes (SD-LoRA)

    def __init__(self, settings: MethodSettings, context: RunContext) -> None:
        super().__init__(settings, context)
        self.past: dict[str, PastAdapters] = {}
        self.requires_grad: dict[str, bool] = {}  # the model's flags before the first block, for teardown

    def _attach(self, model: torch.nn.Module) -> None:
        """A PastAdapters child on every LoRA layer, once."""
        if not self.past:
            self.requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
            init = getattr(self.settings, "magnitude_init", 1.0)
            layers = lora_modules(model)
            self.past = {name: PastAdapters(layer, self.magnitudes, init) for name, layer in layers.items()}

    def setup_block(self, model: torch.nn.Module, block: int, data: BlockData) -> None:
        layers = lora_modules(model)
        self._attach(model)
        for name, layer in layers.items():
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            self.past[name].push(a, b, self.normalise, self.keep_latest)
            self.new_adapter(name, layer)

    def new_adapter(self, name: str, layer: nn.Module) -> None:
        """The trainable adapter of the new block."""
        if not self.inherit:
            layer.reset_lora_parameters("default", True)  # PEFT's own init: A kaiming-uniform, B = 0

    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        for name, past in self.past.items():
            tensors.update(past.tensors(name))
        return tensors

    def export(self, model: torch.nn.Module, out_dir: Path) -> int:
        nbytes = save_adapter(model, out_dir)  # counts the PEFT files only: written before ours
        path = out_dir / "past_adapters.safetensors"
        save_file(self._tensors(), str(path))
        return nbytes + path.stat().st_size

    def state(self, model: torch.nn.Module) -> State:
        # which parameters train (InfLoRA fixes A): restored with the rest
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        return State(self._tensors(), {"requires_grad": flags, "before": self.requires_grad})

    def load_state(self, model: torch.nn.Module, state: State) -> None:
        self._attach(model)
        self.requires_grad = dict(state.meta["before"])
        for name, past in self.past.items():
            past.load(state.tensors, name)
        flags = state.meta["requires_grad"]
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, p.requires_grad))

    def teardown(self, model: torch.nn.Module) -> None:
        layers = lora_modules(model)
        for name, past in self.past.items():
            past.remove(layers[name])
        for n, p in model.named_parameters():
            p.requires_grad_(self.requires_grad.get(n, p.requires_grad))
        self.past, self.requires_grad = {}, {}


@register
class SumLoraAll(Cumulative):
    name = "sumlora-all"


@register
class SumLoraLatest(Cumulative):
    name = "sumlora-latest"
    keep_latest = True


@register
class SumLoraAllInherit(Cumulative):
    name = "sumlora-all-inherit"
    inherit = True


@register
class SumLoraLatestInherit(Cumulative):
    name = "sumlora-latest-inherit"
    keep_latest = inherit = True


class SdLoraSettings(AdapterSettings):
    magnitude_init: float = Field(
        1.0,
        gt=0,
        description="start value of the current adapter's magnitude and of each newly frozen past adapter's "
        "(1: the paper); older past adapters keep their learned magnitudes",
    )


@register
class SdLoraAll(Cumulative):
    name = "sdlora-all"
    Settings = SdLoraSettings
    magnitudes = True


@register
class SdLoraLatest(Cumulative):
    name = "sdlora-latest"
    Settings = SdLoraSettings
    magnitudes = keep_latest = True


@register
class SdLoraAllInherit(Cumulative):
    name = "sdlora-all-inherit"
    Settings = SdLoraSettings
    magnitudes = inherit = True


@register
class SdLoraLatestInherit(Cumulative):
    name = "sdlora-latest-inherit"
    Settings = SdLoraSettings
    magnitudes = keep_latest = inherit = True


# --- InfLoRA (Liang & Li, CVPR 2024) ---------------------------------------------------------------------


@torch.no_grad()
def input_grams(model: nn.Module, data: BlockData, which: str, max_targets: int) -> dict[str, torch.Tensor]:
    """Per LoRA layer, the Gram matrix H H^T (in x in) of its inputs over the real (non-padding) tokens of the
    first `max_targets` training targets of `which`: all InfLoRA needs of the input matrix H."""
    packed = data.current if which == "current" else data.previous
    layers = lora_modules(model)
    device = next(model.parameters()).device
    grams = {
        n: layer.lora_A["default"].weight.new_zeros(layer.in_features, layer.in_features)
        for n, layer in layers.items()
    }
    tokens = {"valid": torch.ones(0, dtype=torch.bool)}  # this batch's real tokens (B, W), set per forward

    def collect(name: str):
        def hook(layer: nn.Module, args: tuple, out: torch.Tensor) -> None:
            x = args[0][tokens["valid"]].float()  # (tokens, in)
            grams[name].addmm_(x.T, x)

        return hook

    handles = [layer.register_forward_hook(collect(n)) for n, layer in layers.items()]
    was_training = model.training
    model.eval()
    try:
        lengths = torch.from_numpy(packed.lengths)
        for rows in data.batches(which, max_targets):
            seg = lengths[rows]
            tokens["valid"] = (torch.arange(int(seg.max())) < seg[:, None]).to(device)
            forward_targets(model, packed, rows)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return grams


def _linalg_dtype(t: torch.Tensor) -> torch.dtype:
    # float64 where it is cheap (CPU); on an accelerator an (8192 x 8192) eigh in float32 is fast enough
    return torch.float64 if t.device.type == "cpu" else torch.float32


def complement(basis: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis (d, d - k) of the orthogonal complement of orthonormal `basis` (d, k)."""
    d, k = basis.shape
    if k == 0:
        return torch.eye(d, dtype=basis.dtype, device=basis.device)
    q, _ = torch.linalg.qr(basis, mode="complete")
    return q[:, k:]


def top_directions(gram: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-directions (d, d - k) of the inputs projected out of span(basis), strongest first, with their
    energies (eigenvalues of the projected Gram). Computed inside the complement's coordinates, so every
    direction is orthogonal to the basis to rounding error."""
    comp = complement(basis)
    evals, evecs = torch.linalg.eigh(comp.T @ gram @ comp)
    return comp @ evecs.flip(-1), evals.flip(-1).clamp_min(0)


def extend_basis(basis: torch.Tensor, gram: torch.Tensor, energy: float, keep_free: int) -> torch.Tensor:
    """GPM's update (Saha et al. 2021, as InfLoRA keeps it): add the strongest new input directions until the
    basis covers `energy` of the inputs' total energy trace(H H^T); at least `keep_free` dimensions stay
    outside, so a rank-`keep_free` A orthogonal to the basis still exists."""
    gram = gram.to(basis.dtype)
    total = torch.trace(gram)
    dirs, evals = top_directions(gram, basis)
    missing = energy * total - (total - evals.sum())  # what the basis already covers: total - residual
    k = int((torch.cumsum(evals, 0) < missing).sum()) + 1 if missing > 0 else 0
    k = max(0, min(k, gram.shape[0] - keep_free - basis.shape[1]))
    return torch.cat([basis, dirs[:, :k]], dim=1)


class InfLoraSettings(AdapterSettings):
    energy: float = Field(
        0.97,
        gt=0,
        le=1,
        description="share of earlier blocks' layer-input energy the protected basis covers "
        "(GPM / InfLoRA use 0.95-0.99; higher protects more and leaves fewer free directions)",
    )
    targets: int = Field(
        512, ge=1, description="training targets per block whose layer inputs estimate the subspace"
    )


@register
class InfLora(Cumulative):
    """Each block's A spans the current inputs' dominant directions outside earlier blocks' input subspace;
    only B trains (from 0); past adapters are summed as they are. Not in the released code: built from the
    InfLoRA paper (Liang & Li, CVPR 2024), with the inputs' Gram matrices in place of its input matrices."""

    name = "inflora"
    Settings = InfLoraSettings
    normalise = False

    def __init__(self, settings: InfLoraSettings, context: RunContext) -> None:
        super().__init__(settings, context)
        self.basis: dict[str, torch.Tensor] = {}  # per layer, orthonormal (in, k) basis of earlier inputs
        self.grams: dict[str, torch.Tensor] = {}

    def setup_block(self, model: torch.nn.Module, block: int, data: BlockData) -> None:
        # the model as it stands: the end of block t-1 (its default adapter not yet frozen, the same function)
        st = self.settings
        previous = input_grams(model, data, "previous", st.targets)
        self.grams = input_grams(model, data, "current", st.targets)
        for name, layer in lora_modules(model).items():
            a = layer.lora_A["default"].weight
            g = previous[name].to(_linalg_dtype(previous[name]))
            basis = self.basis.get(name, g.new_zeros(g.shape[0], 0))
            self.basis[name] = extend_basis(basis, g, st.energy, keep_free=a.shape[0])
        super().setup_block(model, block, data)
        self.grams = {}

    def state(self, model: torch.nn.Module) -> State:
        state = super().state(model)
        state.tensors.update({f"basis.{n}": b.contiguous().cpu() for n, b in self.basis.items()})
        return state

    def load_state(self, model: torch.nn.Module, state: State) -> None:
        super().load_state(model, state)
        self.basis = {k.removeprefix("basis."): v for k, v in state.tensors.items() if k.startswith("basis.")}

    def new_adapter(self, name: str, layer: nn.Module) -> None:
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        basis = self.basis[name]
        dirs, _ = top_directions(self.grams[name].to(basis.dtype), basis)
        with torch.no_grad():
            # rows of norm 1/sqrt(3), the expected row norm of PEFT's kaiming-uniform A (as InfLoRA's code)
            a.copy_(dirs[:, : a.shape[0]].T / math.sqrt(3))
            b.zero_()
        a.requires_grad_(False)

    def teardown(self, model: torch.nn.Module) -> None:
        super().teardown(model)
        self.basis = {}
