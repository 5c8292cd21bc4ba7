"""Shared fixtures: a tiny model over a small multi-level item index."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from peso.cli import main
from peso.config import ModelConfig
from peso.data.raw import Columns, read_release_folder
from peso.model import attach_lora, load_backbone
from peso.tokenize.items import ItemIndex

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # CI reaches no hub: fail at once instead of retrying

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CDS = SHARED / "peso-release" / "CDs_and_Vinyl_cl_0.6_0_5_3_0"
QUICKSTART = Path(__file__).resolve().parents[1] / "data" / "quickstart" / "ml-100k"


class TwoTastes:
    """Interactions of two tastes: odd users choose items a0..a19, even users b0..b19 (new users also a few
    new items, na* or nb*), each row (user, item, time) with increasing times, drawn from one seeded RNG."""

    def __init__(self, seed: int = 0) -> None:
        self.rng, self.t = np.random.default_rng(seed), 0
        self.a, self.b = [f"a{k}" for k in range(20)], [f"b{k}" for k in range(20)]
        self.new_a, self.new_b = [f"na{k}" for k in range(6)], [f"nb{k}" for k in range(6)]

    def _pick(self, user: str, pool: list[str], n: int, out: list) -> None:
        for item in self.rng.choice(pool, n, replace=False):
            out.append((user, str(item), self.t))
            self.t += 1

    def old_users(self, users: int, each: int, out: list) -> None:
        for u in range(users):
            self._pick(f"old{u}", self.a if u % 2 else self.b, each, out)

    def new_users(self, users: int, each: int, out: list) -> None:
        """New users, each of one taste, choosing among its first 6 items and its new ones."""
        for u in range(users):
            pool = (self.a[:6] + self.new_a) if u % 2 else (self.b[:6] + self.new_b)
            self._pick(f"new{u}", pool, each, out)


def small_index(n_items: int = 60, sizes=(4, 3, 5), seed: int = 0) -> ItemIndex:
    """Random 3-level semantic IDs with shared prefixes and a few collisions."""
    rng = np.random.default_rng(seed)
    names = "abcdefgh"
    index = {}
    for i in range(n_items):
        index[str(i)] = [f"<{names[d]}_{int(rng.integers(s))}>" for d, s in enumerate(sizes)]
    # make sure every code of every level occurs, so level sizes are as given
    for d, s in enumerate(sizes):
        for c in range(s):
            index[f"cover{d}_{c}"] = [f"<{names[e]}_{c % sizes[e]}>" for e in range(len(sizes))]
    return ItemIndex.from_tokens(index)


@pytest.fixture
def tiny_lora():
    """A randomly initialised tiny Llama with LoRA over `small_index()`, adapter B randomised (not zero)."""
    torch.manual_seed(0)
    index = small_index()
    cfg = ModelConfig.model_validate(
        {"name": "tiny", "tiny": {"hidden": 32, "layers": 2, "heads": 4, "intermediate": 64}}
    )
    return adapted(cfg, index)


def adapted(cfg: ModelConfig, index: ItemIndex):
    """Backbone + LoRA with B randomised (not PEFT's zero), in eval mode: no dropout, gradients still flow."""
    backbone, space = load_backbone(cfg, index)
    model = attach_lora(backbone, cfg, space)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.eval()
    return model, space, index


@pytest.fixture(scope="session")
def local_checkpoint(tmp_path_factory):
    """A small untied Llama with a word-level tokenizer, saved as a normal HF folder (a stand-in LLM)."""
    folder = tmp_path_factory.mktemp("ckpt")
    words = [
        "[UNK]",
        "<s>",
        "</s>",
        "###",
        "Instruction:",
        "Response:",
        "The",
        "user",
        "has",
        "interacted",
        "with",
        "items",
        "in",
        "chronological",
        "order.",
        "Can",
        "you",
        "predict",
        "the",
        "next",
        "possible",
        "item",
        "that",
        "may",
        "expect?",
        ",",
    ]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="[UNK]")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(words),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


# --- the live path: two runs, a deployed store -------------------------------------------------------

# sumlora-all first: it draws from the RNG (its adapter is re-initialised each block), which the update must
# continue exactly; a method's draws follow the previous unit of the run, so both runs list the same methods
CONFIG = {
    "data": {"path": str(QUICKSTART), "history": 8, "max_users": 40},
    "model": {
        "name": "tiny",
        "tiny": {"hidden": 32, "layers": 1, "heads": 2, "intermediate": 64},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
    },
    "train": {"epochs": 2, "continual_epochs": 1, "batch_size": 64, "lr": 1e-2},
    "decode": {"beam": 12, "top_k": 10, "batch_size": 16},
    "methods": [
        "sumlora-all",
        {"name": "peso", "lam": 100.0},
        {"name": "peso-select", "lams": [0.0, 100.0]},
        # blocks 1.. under the trie's softmax, block 0 (shared) under the vocabulary's; EWC's Fisher reads the
        # previous block's pack, which must be renormalised as the current block's
        {"name": "ewc", "label": "ewc-trie", "continual_item_softmax": "trie"},
    ],
    "seeds": [0],
    "threads": 1,
}


def tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "LOCK"
    }


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> Path:
    """The quickstart data on blocks 0..3 and 0..4 (two small runs), and block 4 as a CSV slice."""
    return live_runs(tmp_path_factory.mktemp("live"), CONFIG)


def live_runs(root: Path, config: dict) -> Path:
    """`runs` under `config`: root/run4 (blocks 0..3), root/run5 (0..4) and root/block4.csv."""
    cfg = root / "c.yaml"
    cfg.write_text(yaml.safe_dump(config))
    assert (
        main(["run", "--config", str(cfg), "--out", str(root / "run4"), "--set", "data.blocks=[0,1,2,3]"])
        == 0
    )
    assert main(["run", "--config", str(cfg), "--out", str(root / "run5")]) == 0
    df = read_release_folder([QUICKSTART], Columns(None, None, None)).interactions
    df.filter(df["block"] == 4).select("user", "item", "timestamp").write_csv(root / "block4.csv")
    return root


def deployed(runs: Path, tmp_path: Path, method: str = "peso") -> Path:
    store = tmp_path / f"store-{method}"
    assert main(["deploy", str(runs / "run4"), "--method", method, "--out", str(store)]) == 0
    return store


def update_command(store: Path, slice_csv: Path) -> list[str]:
    return [sys.executable, "-m", "peso.cli", "update", str(store), str(slice_csv), "--guard", "none"]


def run_update(store: Path, slice_csv: Path) -> None:
    """`peso update` in its own process, to its end."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(update_command(store, slice_csv), env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def kill_update_while_training(store: Path, slice_csv: Path, log: Path) -> None:
    """Start `peso update` and SIGKILL it while it trains. No clock: the loop ends on its first epoch line,
    or when the process ends (a failure), however loaded the machine."""
    import signal
    import time

    with log.open("w") as f:
        proc = subprocess.Popen(
            update_command(store, slice_csv),
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    try:
        while " epoch " not in log.read_text():
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


def tiny_run(
    root: Path, methods: list, epochs: int = 2, blocks: dict | None = None, data: dict | None = None, **model
) -> Path:
    """`peso run` of a 16-wide model on test_cli_errors' small data (or `blocks`): root/run, with `methods`
    (and `data` and `model` settings)."""
    from tests.test_cli_errors import write_data

    config = {
        "data": {"path": str(write_data(root / "data", blocks)), **(data or {})},
        "model": {
            "name": "tiny",
            "tiny": {"hidden": 16, "layers": 1, "heads": 2, "intermediate": 32},
            **model,
        },
        "train": {"epochs": epochs, "batch_size": 2, "warmup_steps": 0, "lr": 1e-2},
        "decode": {"beam": 10, "top_k": 10},
        "methods": methods,
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(root / "run.yaml"), "--out", str(root / "run")]) == 0
    return root / "run"
