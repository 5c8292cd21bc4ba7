"""`peso export-model`: a store's version as files that need no peso to load.

OUT/
  merged/     a plain Hugging Face checkpoint: LoRA (and any strategy's extra terms) folded into the weights,
              the item tokens' learned rows in the embedding and output layers
  base/       the same backbone with the item rows in it but the LoRA not merged ...
  adapter/    ... and the LoRA on linear layers only, in PEFT's format (no trainable token rows and no
              modules_to_save, which vLLM refuses: its issues 9280, 36501). Only for methods whose state is
              one LoRA; cumulative methods keep past adapters beside it and export merged/ alone.
  trie.json   how to constrain decoding to real items: the token ids of each level's codes, the ID of every
              known item group, the prompt's fixed tokens, and what each level's softmax is over
  items.json  item -> token ids and title; group -> items
  export.json what was written, from which store and version
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from peso.io import atomic_dir, check_out, write_text
from peso.live import Loaded, load_version
from peso.model import base_state_dict, item_rows, merged
from peso.store import Store


def _plain(live: Loaded, fold: bool) -> torch.nn.Module:
    """The backbone as a plain transformers model with the item rows learned; `fold`: LoRA folded in."""
    model = live.model
    with merged(model) if fold else torch.no_grad():
        state = {k: v.detach().clone() for k, v in base_state_dict(model).items()}  # merged() restores after
    base = model.get_base_model()
    plain = type(base)(base.config)
    plain.load_state_dict(state, strict=False)
    rows = item_rows(model, live.space)
    ids = rows["token_ids"]
    with torch.no_grad():
        plain.get_input_embeddings().weight[ids] = rows["embed_tokens"]
        out = plain.get_output_embeddings()
        if out.weight is not plain.get_input_embeddings().weight:
            out.weight[ids] = rows["lm_head"]
    return plain.eval()


def _tokenizer(live: Loaded):
    """The backbone's tokenizer with the item tokens added (pretrained models; `tiny` has none)."""
    if live.cfg.model.name == "tiny":
        return None
    from transformers import AutoTokenizer

    from peso.hub import resolve

    tok = AutoTokenizer.from_pretrained(resolve(live.cfg.model.name))
    for toks in live.index.level_tokens:
        tok.add_tokens(toks)
    return tok


def _one_lora(live: Loaded) -> bool:
    """The method's state is the LoRA alone (no past adapters or magnitudes hooked beside it)."""
    return not any(callable(getattr(m, "merge_delta", None)) for m in live.model.modules())


def export_model(store: Store, out: Path, version: int | None = None) -> Path:
    n = store.current() if version is None else version
    store.check_loadable(n)
    check_out(out, "model-export", overwrite=False, inputs=[store.path])
    live = load_version(store, n)
    space, index, trie = live.space, live.index, live.trie()
    tokenizer = _tokenizer(live)
    lora = live.cfg.model.lora
    with atomic_dir(out, kind="model-export") as tmp:
        _plain(live, fold=True).save_pretrained(tmp / "merged")
        written = ["merged"]
        if _one_lora(live):
            base = _plain(live, fold=False)
            base.save_pretrained(tmp / "base")
            config = LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
            )
            peft = get_peft_model(_plain(live, fold=False), config)
            ours = dict(live.model.named_parameters())
            with torch.no_grad():
                for name, p in peft.named_parameters():
                    if "lora_" in name:
                        p.copy_(ours[name])
            peft.save_pretrained(tmp / "adapter")
            written += ["base", "adapter"]
        if tokenizer is not None:
            for folder in written:
                if folder != "adapter":
                    tokenizer.save_pretrained(tmp / folder)
        level_ids = [
            [space.level_offsets[d] + c for c in range(size)] for d, size in enumerate(space.level_sizes)
        ]
        trie_json = {
            "levels": index.levels,
            "level_token_ids": level_ids,  # token id of code c at level d
            "groups": [
                [int(c) for c in index.sid_codes[g]] for g in trie.sids.tolist()
            ],  # codes of every known ID
            "group_ids": trie.sids.tolist(),
            "eos_id": space.eos_id
            if space.append_eos
            else None,  # the response ends with EOS (prompted models)
            "pad_id": space.pad_id,
            "prompt": {"prefix": space.prefix, "separator": space.separator, "suffix": space.suffix},
            "history": live.cfg.data.history,
            # "trie": each level's log-softmax is over the allowed codes alone (model.item_softmax), not
            # the vocabulary's masked log-softmax that `generate` with prefix_allowed_tokens_fn computes
            "item_softmax": space.item_softmax,
        }
        write_text(tmp / "trie.json", json.dumps(trie_json))
        titles = store.titles(n)
        groups: dict[int, list[str]] = {}
        for item, g in zip(index.items, index.sid.tolist(), strict=True):
            groups.setdefault(g, []).append(item)
        items_json = {
            "items": {
                item: {"tokens": space.item_tokens(k), "title": titles.get(item)}
                for k, item in enumerate(index.items)
            },
            "groups": {str(g): members for g, members in groups.items()},
        }
        write_text(tmp / "items.json", json.dumps(items_json))
        info = {
            "store": str(store.path.resolve()),
            "version": n,
            "method": store.info["method"],
            "written": written,
            "adapter": None
            if "adapter" in written
            else "not written: the method keeps past adapters beside its LoRA",
        }
        write_text(tmp / "export.json", json.dumps(info, indent=2))
    return out
