"""Model stage: a causal LM (hub id, local path, or the embedded `tiny`), item tokens in its vocabulary,
and a PEFT LoRA adapter whose trainable parameters include the item-token embedding/output rows.

Its `TokenSpace` (`peso.inputs`) turns item histories into token ids: bare item tokens for `tiny`, the
paper's instruction prompt for a pretrained LLM.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from peso.errors import PesoError
from peso.hub import resolve
from peso.inputs import TokenSpace
from peso.settings import ModelConfig
from peso.tokenize.items import ItemIndex

PROMPT = (
    "### Instruction:\nThe user has interacted with items {items} in chronological order. "
    "Can you predict the next possible item that the user may expect?\n### Response:\n"
)
TINY_SPECIALS = ["<pad>", "<s>", "</s>"]  # ids 0, 1, 2 of the tiny vocabulary
# PEFT reads this deprecated transformers attribute on every get_peft_model: a warning per run, not ours
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def _tiny(cfg: ModelConfig, index: ItemIndex) -> tuple[PreTrainedModel, TokenSpace]:
    sizes = index.level_sizes
    offsets = list(np.cumsum([len(TINY_SPECIALS), *sizes[:-1]]))
    t = cfg.tiny
    config = LlamaConfig(
        vocab_size=len(TINY_SPECIALS) + sum(sizes),
        hidden_size=t.hidden,
        intermediate_size=t.intermediate,
        num_hidden_layers=t.layers,
        num_attention_heads=t.heads,
        num_key_value_heads=t.heads,
        max_position_embeddings=t.max_positions,
        attention_dropout=t.dropout,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    space = TokenSpace([int(o) for o in offsets], sizes, index.codes, pad_id=0, eos_id=2, prefix=[1])
    return model, space


def _pretrained(cfg: ModelConfig, index: ItemIndex) -> tuple[PreTrainedModel, TokenSpace]:
    name = cfg.name
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    path = resolve(name)  # an alias (smollm2-135m) -> its converted local folder; anything else as is
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as e:
        reason = str(e).splitlines()[0][:160]
        raise PesoError(
            "model.name",
            f"cannot load '{name}' ({reason})",
            "use 'tiny', smollm2-135m, a local checkpoint folder, or a cached hub id",
        ) from None
    offsets = []
    for toks in index.level_tokens:
        tokenizer.add_tokens(toks)
        ids = tokenizer.convert_tokens_to_ids(toks)
        if ids != list(range(ids[0], ids[0] + len(ids))):
            raise PesoError(
                "model.name",
                f"item tokens of '{name}' are not contiguous in its vocabulary",
                "use item tokens the tokenizer does not know yet",
            )
        offsets.append(ids[0])
    model.resize_token_embeddings(len(tokenizer))
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    use_prompt = True if cfg.prompt is None else cfg.prompt
    space = TokenSpace(offsets, index.level_sizes, index.codes, pad_id=pad, eos_id=eos, append_eos=use_prompt)
    if use_prompt:
        head, tail = PROMPT.split("{items}")
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        space.prefix = bos + tokenizer(head, add_special_tokens=False)["input_ids"]
        space.separator = tokenizer(", ", add_special_tokens=False)["input_ids"]
        space.suffix = tokenizer(tail, add_special_tokens=False)["input_ids"]
    return model, space


def load_backbone(
    cfg: ModelConfig, index: ItemIndex, codebooks: list[np.ndarray] | None = None
) -> tuple[PreTrainedModel, TokenSpace]:
    """The base causal LM with the item tokens in its vocabulary (not yet adapted); with `codebooks`, their
    rows start from them (`init_item_rows`)."""
    model, space = _tiny(cfg, index) if cfg.name == "tiny" else _pretrained(cfg, index)
    space.item_softmax = cfg.item_softmax
    if codebooks is not None:
        init_item_rows(model, space, index, codebooks)
    return model, space


def init_item_rows(
    model: PreTrainedModel, space: TokenSpace, index: ItemIndex, codebooks: list[np.ndarray]
) -> None:
    """Each code's row starts as its centroid (centred per level) through one fixed Gaussian projection, which
    keeps the centroids' geometry, scaled to the std the model's own init gave that level's rows: items near
    in the codebooks' space start near. Levels without a codebook (de-duplication) keep their init."""
    if len(codebooks) > index.levels:
        raise PesoError(
            "model.item_init", f"{len(codebooks)} codebooks for {index.levels} levels", "re-tokenize"
        )
    weights = [model.get_input_embeddings().weight]
    if not _is_tied(model):
        weights.append(model.get_output_embeddings().weight)
    dim = codebooks[0].shape[1]
    proj = torch.randn(dim, weights[0].shape[1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for level, book in enumerate(codebooks):
            numbers = [re.search(r"(\d+)\D*$", t) for t in index.level_tokens[level]]
            if any(m is None or int(m.group(1)) >= len(book) for m in numbers):
                raise PesoError(
                    "model.item_init",
                    f"level {level}'s tokens do not name rows of its codebook ({len(book)} codes)",
                    "use the codebooks `peso tokenize` wrote with this index, or model.item_init: random",
                )
            rows = torch.as_tensor(book, dtype=torch.float32)[[int(m.group(1)) for m in numbers]]
            rows = (rows - rows.mean(0)) @ proj
            ids = slice(space.level_offsets[level], space.level_offsets[level] + len(numbers))
            for w in weights:
                w[ids] = (rows * (w[ids].std() / rows.std())).to(w.dtype)


def _is_tied(model: PreTrainedModel) -> bool:
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def _module_name(model: torch.nn.Module, module: torch.nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module).split(".")[-1]


def check_lora_targets(cfg: ModelConfig) -> None:
    """Refuse LoRA target modules the backbone does not have, before a run writes anything: the backbone's
    skeleton on the meta device (no weights, no memory) names its linear layers."""
    from transformers import AutoConfig

    with torch.device("meta"):
        if cfg.name == "tiny":
            model = _tiny(cfg, ItemIndex.from_tokens({"i": ["<a_0>"]}))[0]
        else:
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve(cfg.name)))
    linear = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [t for t in cfg.lora.target_modules if t not in linear]
    if missing:
        raise PesoError(
            "model.lora.target_modules",
            f"{missing} name no linear layer of '{cfg.name}'",
            f"choose among {', '.join(sorted(linear - {'lm_head'}))}",
        )


def attach_lora(model: PreTrainedModel, cfg: ModelConfig, space: TokenSpace) -> PeftModel:
    """Wrap the backbone in a PEFT LoRA model; item-token rows train through PEFT's trainable tokens."""
    item_ids = space.all_item_token_ids()
    if _is_tied(model):
        tokens: list[int] | dict[str, list[int]] = item_ids
    else:
        tokens = {
            _module_name(model, model.get_input_embeddings()): item_ids,
            _module_name(model, model.get_output_embeddings()): item_ids,
        }
    lc = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        trainable_token_indices=tokens,
        task_type="CAUSAL_LM",
    )
    logging.getLogger("peft").setLevel(logging.ERROR)
    try:
        return get_peft_model(model, lc)
    except ValueError as e:
        raise PesoError(
            "model.lora.target_modules",
            str(e).splitlines()[0][:200],
            "name modules the model has, e.g. q_proj,v_proj",
        ) from None


def lora_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter, torch.nn.Parameter]]:
    """(module name, A, B) of every LoRA-adapted module of the active adapter."""
    from peft.tuners.lora import LoraLayer

    out = []
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            out.append((name, module.lora_A["default"].weight, module.lora_B["default"].weight))
    return out


@contextmanager
def merged(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """LoRA folded into the base weights while inside (one matmul per adapted layer instead of three, for
    decoding). On exit the exact weights come back from a saved copy, not by subtracting the update again,
    so nothing drifts however many blocks merge and unmerge."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and not m.merged and m.active_adapters]
    # a strategy may hang more terms on a LoRA layer (e.g. frozen past adapters): a child with
    # `merge_delta(layer)` (its weight) and a `folded` flag its hooks honour; those fold in too
    extras = [(m, e) for m in layers for e in m.children() if callable(getattr(e, "merge_delta", None))]
    saved = [m.get_base_layer().weight.detach().clone() for m in layers]
    try:
        for m in layers:
            m.merge()
        with torch.no_grad():
            for m, e in extras:
                weight = m.get_base_layer().weight
                weight.add_(e.merge_delta(m).to(weight.dtype))
                e.folded = True
        yield model
    finally:
        for _, e in extras:
            e.folded = False
        with torch.no_grad():
            for m, w in zip(layers, saved, strict=True):
                if m.merged:
                    m.unmerge()
                m.get_base_layer().weight.copy_(w)


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


def save_item_rows(model: torch.nn.Module, space: TokenSpace, path: Path) -> None:
    """`item_rows` as safetensors; the metadata names the item softmax they rank under (`space.item_softmax`)."""
    save_file(item_rows(model, space), str(path), metadata={"item_softmax": space.item_softmax})


def base_state_dict(model: PeftModel) -> dict[str, torch.Tensor]:
    """The backbone's own weights, without adapter parameters, under the plain model's key names."""
    out = {}
    for key, value in model.state_dict().items():
        if "lora_" in key or "trainable_tokens" in key:
            continue
        clean = key.removeprefix("base_model.model.").replace(".base_layer", "").replace(".token_adapter", "")
        out[clean] = value
    return out


def save_base(model: PeftModel, out_dir: Path) -> None:
    """Save the (block-0 trained) backbone as a normal HF checkpoint that PeftModel.from_pretrained accepts."""
    base = model.get_base_model()
    plain = type(base)(base.config)
    missing, unexpected = plain.load_state_dict(base_state_dict(model), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"backbone keys do not match: missing {missing[:3]}, unexpected {unexpected[:3]}")
    plain.save_pretrained(out_dir)
