"""The model stage: tiny and local Hugging Face checkpoints, item tokens, prompt, LoRA + item rows."""

import csv

import numpy as np
import torch
import yaml

from peso.cli import main
from peso.config import ModelConfig
from peso.model import attach_lora, load_backbone
from tests.conftest import CDS, small_index


def test_tiny_puts_item_tokens_after_the_specials_and_trains_their_rows():
    index = small_index()
    cfg = ModelConfig.model_validate(
        {"name": "tiny", "tiny": {"hidden": 16, "layers": 1, "heads": 2, "intermediate": 32}}
    )
    backbone, space = load_backbone(cfg, index)
    assert backbone.config.vocab_size == 3 + sum(index.level_sizes)
    assert space.level_offsets == [3, 3 + index.level_sizes[0], 3 + sum(index.level_sizes[:2])]
    assert space.prompt(np.array([0, 1])) == [1, *space.item_tokens(0), *space.item_tokens(1)]  # bare tokens
    assert space.target(5) == space.item_tokens(5)  # no EOS without a prompt
    model = attach_lora(backbone, cfg, space)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sum("lora_A" in n for n in trainable) == 7  # q,k,v,o,gate,up,down of the one layer
    assert any("trainable_tokens_delta" in n for n in trainable)
    assert not any("base_layer" in n or n.endswith("embed_tokens.weight") for n in trainable)


def test_tiny_dropout_is_attention_dropout_in_training_only():
    index = small_index()
    tiny = {"hidden": 16, "layers": 1, "heads": 2, "intermediate": 32}
    cfg = ModelConfig.model_validate({"name": "tiny", "tiny": {**tiny, "dropout": 0.5}})
    torch.manual_seed(0)
    backbone, space = load_backbone(cfg, index)
    assert backbone.config.attention_dropout == 0.5
    ids = torch.tensor([space.prompt(np.array([0, 1, 2, 3]))])
    backbone.train()
    with torch.no_grad():
        a, b = backbone(ids).logits, backbone(ids).logits
    assert not torch.allclose(a, b)  # a fresh mask per forward
    backbone.eval()
    with torch.no_grad():
        off = backbone(ids).logits
        assert torch.equal(off, backbone(ids).logits)
    # evaluation equals the same weights built without dropout
    plain, _ = load_backbone(ModelConfig.model_validate({"name": "tiny", "tiny": tiny}), index)
    plain.load_state_dict(backbone.state_dict())
    with torch.no_grad():
        assert torch.allclose(plain.eval()(ids).logits, off, atol=1e-6)


def test_codebook_init_starts_each_code_row_from_its_centroid():
    """Rows of a level with a codebook are one linear image of its centred centroids (equal centroids, equal
    rows), at the scale of the model's own init; the level without a codebook keeps the plain init."""
    index = small_index()  # levels of 4, 3 and 5 codes; the last plays the de-duplication level
    cfg = ModelConfig.model_validate(
        {"name": "tiny", "tiny": {"hidden": 32, "layers": 1, "heads": 2, "intermediate": 32}}
    )
    rng = np.random.default_rng(0)
    books = [rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=(3, 6)).astype(np.float32)]
    books[0][3] = books[0][1]  # two codes with the same centroid
    torch.manual_seed(0)
    plain, space = load_backbone(cfg, index)
    torch.manual_seed(0)
    init, _ = load_backbone(cfg, index, books)
    w0, w = plain.get_input_embeddings().weight.detach(), init.get_input_embeddings().weight.detach()
    for level, book in enumerate(books):
        ids = slice(space.level_offsets[level], space.level_offsets[level] + len(book))
        centred = torch.as_tensor(book - book.mean(0))
        fit = torch.linalg.lstsq(centred, w[ids]).solution  # rows = centred @ X for one X
        assert torch.allclose(centred @ fit, w[ids], atol=1e-5)
        assert torch.allclose(w[ids].std(), w0[ids].std(), rtol=1e-4)
        assert not torch.allclose(w[ids], w0[ids])
    assert torch.equal(w[space.level_offsets[0] + 1], w[space.level_offsets[0] + 3])
    last = slice(space.level_offsets[2], space.level_offsets[2] + index.level_sizes[2])
    assert torch.equal(w[last], w0[last]) and torch.equal(w[:3], w0[:3])  # dedup level and specials


def test_local_checkpoint_gets_the_instruction_prompt_and_untied_item_rows(local_checkpoint):
    index = small_index()
    cfg = ModelConfig.model_validate(
        {"name": str(local_checkpoint), "lora": {"target_modules": ["q_proj", "v_proj"]}}
    )
    backbone, space = load_backbone(cfg, index)
    n_words = 26
    assert space.level_offsets[0] == n_words  # item tokens appended to the tokenizer, contiguous
    assert backbone.get_input_embeddings().weight.shape[0] == n_words + sum(index.level_sizes)
    prompt = space.prompt(np.array([3, 4]))
    assert prompt[0] == 1 and 0 not in prompt  # BOS, and every instruction word known
    assert space.target(3)[-1] == 2  # the response ends with EOS
    model = attach_lora(backbone, cfg, space)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    # untied: both the input embedding and the output layer get trainable item rows
    assert any("embed_tokens" in n and "delta" in n for n in names) and any(
        "lm_head" in n and "delta" in n for n in names
    )


def test_peso_run_on_a_local_checkpoint(local_checkpoint, tmp_path):
    cfg = {
        "data": {"path": str(CDS), "max_users": 8, "blocks": [0, 1]},
        "model": {"name": str(local_checkpoint), "lora": {"target_modules": ["q_proj", "v_proj"]}},
        "train": {"epochs": 1, "batch_size": 16, "lr": 1e-3},
        "decode": {"beam": 10, "top_k": 10, "batch_size": 8},
        "methods": ["peso", "single"],
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "run")]) == 0
    rows = list(csv.DictReader((tmp_path / "run" / "results.csv").open()))
    assert {(r["method"], r["block"]) for r in rows} == {
        ("peso", "0"),
        ("peso", "1"),
        ("single", "0"),
        ("single", "1"),
    }
    assert not (
        tmp_path / "run" / "seed_0" / "base"
    ).exists()  # a pretrained backbone is not trained or copied
    assert (
        tmp_path / "run" / "seed_0" / "peso" / "block_1" / "adapter" / "adapter_model.safetensors"
    ).is_file()


def test_adapter_of_a_resized_pretrained_model_stays_small(local_checkpoint, tmp_path):
    from safetensors.torch import load_file

    from peso.strategies.base import save_adapter

    index = small_index()
    cfg = ModelConfig.model_validate({"name": str(local_checkpoint), "lora": {"target_modules": ["q_proj"]}})
    backbone, space = load_backbone(cfg, index)
    model = attach_lora(backbone, cfg, space)
    save_adapter(model, tmp_path / "adapter")
    keys = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors")).keys()
    assert not any("base_layer" in k for k in keys)  # no copy of the (resized) embedding matrices
    assert any("trainable_tokens_delta" in k for k in keys)  # the item rows are in it


def test_merged_decoding_gives_the_same_outputs_and_restores_the_exact_weights(tiny_lora):
    from peso.model import merged

    model, space, _ = tiny_lora
    ids = torch.tensor([space.prompt(np.array([1, 2, 3, 4]))])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    want = model(input_ids=ids).logits
    with merged(model):
        lora = [m for m in model.modules() if hasattr(m, "merged") and hasattr(m, "lora_A")]
        assert lora and all(m.merged for m in lora)
        got = model(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert not any(m.merged for m in lora)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n  # bit for bit: restored, not un-added
