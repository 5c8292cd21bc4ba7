"""Bad input through every command, as one table: each case names its command, the exit code and a fragment
of its one-line message. For every case the whole tree the command could reach (the working folder, the
data, the config's folder, an earlier run, --out) is hashed before and after: nothing may change, not even
--out, since every case fails before it writes."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from peso.cli import main
from tests.test_cli_errors import BLOCK0, BLOCK1, write_data

TINY = {"name": "tiny", "tiny": {"hidden": 16, "layers": 1, "heads": 2, "intermediate": 32}}
CONFIG = {"model": TINY, "train": {"epochs": 1}, "decode": {"beam": 10, "top_k": 10}, "methods": ["single"]}
LOG = "user_id,item_id,timestamp\n" + "".join(
    f"u{u},i{(u * 7 + k) % 13},{1000 + 10 * k + u}\n" for u in range(12) for k in range(9)
)


@dataclass
class World:
    root: Path  # everything below is hashed
    work: Path  # the working folder
    data: Path  # a release-format folder (the run's data)
    config: Path  # configs/run.yaml, data.path absolute
    log: Path  # a raw CSV log, in its own folder
    data_dir: Path  # a DATA_DIR (prepared, tokenized)
    old_run: Path  # a finished run folder
    mine: Path  # a folder of the user's own files
    env: dict = field(default_factory=dict)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    data = write_data(root / "data")
    cfg = root / "run.yaml"
    cfg.write_text(yaml.safe_dump({**CONFIG, "data": {"path": str(data)}}))
    assert main(["run", "--config", str(cfg), "--out", str(root / "run")]) == 0
    return root / "run"


@pytest.fixture
def world(tmp_path, monkeypatch, finished_run) -> World:
    root = tmp_path / "root"
    work = root / "work"
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("the user's own file")
    data = write_data(root / "data")
    (root / "configs").mkdir()
    config = root / "configs" / "run.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "data": {"path": str(data)}}))
    (root / "logs").mkdir()
    log = root / "logs" / "log.csv"
    log.write_text(LOG)
    data_dir = root / "dd"
    args = ["prepare", str(log), "--out", str(data_dir), "--blocks", "2", "--min-items", "3"]
    assert main(args) == 0 and main(["tokenize", str(data_dir), "--method", "atomic"]) == 0
    old_run = root / "old_run"
    shutil.copytree(finished_run, old_run)
    mine = root / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(work)
    return World(root, work, data, config, log, data_dir, old_run, mine)


def tree(root: Path) -> dict[str, str]:
    """Every path under root with the hash of its bytes (folders: '/')."""
    return {
        str(p.relative_to(root)): "/" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def gapped(w: World) -> Path:
    folder = write_data(w.root / "gapped", {0: BLOCK0, 1: BLOCK1, 3: BLOCK1})
    return folder


def no_items_table(w: World) -> Path:
    (w.data_dir / "items.parquet").unlink()
    return w.data_dir


def run(w: World, *extra: str, config: Path | None = None) -> list[str]:
    return ["run", "--config", str(config or w.config), *extra]


def sim(*extra: str) -> list[str]:
    return ["simulate", "--users", "40", "--items", "30", "--clusters", "3", "--blocks", "3", *extra]


# (id, argv from the world, exit code, fragments of the one line, environment)
CASES = [
    # --out that peso must never replace
    ("run-out-is-cwd", lambda w: run(w, "--out", ".", "--overwrite"), 2, ["--out", "working folder"]),
    ("run-out-holds-cwd", lambda w: run(w, "--out", str(w.root), "--overwrite"), 2, ["working folder"]),
    (
        "run-out-is-data",
        lambda w: run(w, "--out", str(w.data), "--overwrite", "--set", f"data.path={w.data}"),
        2,
        ["input"],
    ),
    ("run-out-holds-config", lambda w: run(w, "--out", str(w.config.parent), "--overwrite"), 2, ["input"]),
    (
        "run-out-is-own-folder",
        lambda w: run(w, "--out", str(w.mine), "--overwrite"),
        2,
        ["not written by peso"],
    ),
    ("run-out-is-data-dir", lambda w: run(w, "--out", str(w.data_dir), "--overwrite"), 2, ["is a DATA_DIR"]),
    ("run-out-exists", lambda w: run(w, "--out", str(w.old_run)), 2, ["--overwrite"]),
    # late bad input with --overwrite: the earlier run must stay as it was
    (
        "run-overwrite-bad-lora-target",
        lambda w: run(
            w, "--out", str(w.old_run), "--overwrite", "--set", "model.lora.target_modules=[nosuch]"
        ),
        2,
        ["nosuch"],
    ),
    # values
    (
        "run-lr-inf",
        lambda w: run(w, "--out", "r", "--set", "train.lr=.inf"),
        2,
        ["--set", "train.lr", "finite"],
    ),
    ("run-lr-nan", lambda w: run(w, "--out", "r", "--set", "train.lr=.nan"), 2, ["--set", "train.lr"]),
    (
        "run-lam-inf",
        lambda w: run(w, "--out", "r", "--set", "methods=[{name: peso, lam: .inf}]"),
        2,
        ["--set", "methods[0] (peso): 'lam'", "finite"],
    ),
    (
        "run-old-peso-section",
        lambda w: run(w, "--out", "r", "--set", "peso.lam=3"),
        2,
        ["--set", "'peso:' section is gone", "{name: peso, lam: 1000.0}"],
    ),
    (
        "run-misspelled-method-setting",
        lambda w: run(w, "--out", "r", "--set", "methods=[single, {name: ewc, lamda: 3}]"),
        2,
        ["methods[1] (ewc): 'lamda': unknown setting", "lam, targets"],
    ),
    ("run-top-k-below-10", lambda w: run(w, "--out", "r", "--set", "decode.top_k=5"), 2, ["decode.top_k"]),
    ("run-unknown-section", lambda w: run(w, "--out", "r", "--set", "foo.bar=1"), 2, ["--set", "foo"]),
    ("run-beam-below-k", lambda w: run(w, "--out", "r", "--set", "decode.beam=5"), 2, ["--set", "beam"]),
    (
        "run-codebook-init-without-codebooks",
        lambda w: run(w, "--out", "r", "--set", "model.item_init=codebook"),
        2,
        ["codebooks.safetensors", "model.item_init", "peso tokenize"],
    ),
    # data
    (
        "run-missing-block",
        lambda w: run(w, "--out", "r", "--set", f"data.path={gapped(w)}"),
        2,
        ["[2]", "data.blocks"],
    ),
    (
        "run-no-items-table",
        lambda w: run(w, "--out", "r", "--set", f"data.path={no_items_table(w)}"),
        2,
        ["items.parquet"],
    ),
    (
        "run-hub-unreachable",
        lambda w: run(w, "--out", "r", "--set", "model.name=no-such-org/no-such-model"),
        2,
        ["model.name", "cannot be reached"],
        {"HF_HUB_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:9"},
    ),
    (
        "resume-a-data-dir",
        lambda w: ["run", "--resume", str(w.data_dir)],
        2,
        ["not a resumable run", "peso run"],
    ),
    # prepare / tokenize / export / simulate
    ("prepare-out-is-cwd", lambda w: ["prepare", str(w.log), "--out", "."], 2, ["working folder"]),
    (
        "prepare-out-holds-input",
        lambda w: ["prepare", str(w.log), "--out", str(w.log.parent), "--overwrite"],
        2,
        ["input"],
    ),
    (
        "prepare-out-is-run",
        lambda w: ["prepare", str(w.log), "--out", str(w.old_run), "--overwrite"],
        2,
        ["run folder"],
    ),
    (
        "prepare-base-fraction-nan",
        lambda w: ["prepare", str(w.log), "--out", "d", "--base-fraction", "nan"],
        2,
        ["--base-fraction"],
    ),
    (
        "prepare-export-into-input",
        lambda w: ["prepare", str(w.log), "--out", "d", "--export-release", str(w.log.parent), "--overwrite"],
        2,
        ["--export-release", "input"],
    ),
    (
        "tokenize-not-a-data-dir",
        lambda w: ["tokenize", str(w.mine), "--method", "atomic"],
        2,
        ["not a DATA_DIR"],
    ),
    ("tokenize-a-run", lambda w: ["tokenize", str(w.old_run), "--method", "atomic"], 2, ["not a DATA_DIR"]),
    (
        "export-into-data-dir",
        lambda w: ["export", str(w.data_dir), "--out", str(w.data_dir), "--overwrite"],
        2,
        ["input"],
    ),
    (
        "export-into-release-data",
        lambda w: ["export", str(w.data_dir), "--out", str(w.data), "--overwrite"],
        2,
        ["not written by peso"],
    ),
    ("export-into-cwd", lambda w: ["export", str(w.data_dir), "--out", "."], 2, ["working folder"]),
    (
        "simulate-into-own-folder",
        lambda w: sim("--out", str(w.mine), "--overwrite"),
        2,
        ["not written by peso"],
    ),
    ("simulate-into-run", lambda w: sim("--out", str(w.old_run), "--overwrite"), 2, ["run folder"]),
    (
        "simulate-clusters-above-items",
        lambda w: ["simulate", "--out", "s", "--items", "5", "--clusters", "50"],
        2,
        ["--clusters", "--clusters <= --items"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, world, capsys, monkeypatch):
    _, argv_of, code, fragments, *env = case
    for k, v in (env[0] if env else {}).items():
        if v is None:
            monkeypatch.delenv(k, raising=False)
        else:
            monkeypatch.setenv(k, v)
    argv = argv_of(world)  # may set up its own input (a gapped release, a damaged DATA_DIR)
    before = tree(world.root)
    capsys.readouterr()
    got = main(argv)
    err = capsys.readouterr().err
    assert got == code, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("peso: error: ") and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert tree(world.root) == before  # nothing anywhere changed: not the inputs, not the cwd, not --out


def test_the_table_covers_every_folder_writing_command():
    names = {c[0].split("-")[0] for c in CASES}
    assert {"run", "resume", "prepare", "tokenize", "export", "simulate"} <= names


def test_overwrite_replaces_a_peso_run_and_an_empty_folder(world, capsys):
    """The other side of the table: what --overwrite may replace, it does."""
    out = world.root / "fresh"
    out.mkdir()  # empty: fine without --overwrite
    assert main(run(world, "--out", str(out))) == 0
    assert json.loads((out / ".peso.json").read_text())["kind"] == "run"
    (out / "results.md").write_text("stale")
    assert main(run(world, "--out", str(out), "--overwrite")) == 0
    assert (out / "results.md").read_text() != "stale"
    assert not list(world.root.glob(".fresh.*"))  # the old run was removed, nothing left beside
