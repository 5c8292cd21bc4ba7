"""Bad input through the `peso` command: exit code 2, one `peso: error:` line on stderr, no traceback,
and nothing written to --out. Every case fails before training starts."""

import json
import os
from pathlib import Path

import pytest

from peso.cli import main

INDEX = {
    "i1": ["<a_1>", "<b_1>"],
    "i2": ["<a_1>", "<b_2>"],
    "i3": ["<a_2>", "<b_1>"],
    "i4": ["<a_2>", "<b_2>"],
    "i5": ["<a_3>", "<b_1>"],
}
BLOCK0 = {
    "u1": {"previous_block": [], "current_block": ["i1", "i2", "i3", "i4"]},
    "u2": {"previous_block": [], "current_block": ["i2", "i3", "i4", "i5"]},
    "u3": {"previous_block": [], "current_block": ["i5", "i4", "i3"]},
}
BLOCK1 = {
    "u1": {"previous_block": ["i1", "i2", "i3", "i4"], "current_block": ["i5", "i1", "i2"]},
    "u2": {"previous_block": ["i2", "i3", "i4", "i5"], "current_block": ["i1", "i3", "i5", "i2"]},
}

CONFIG = """\
data: {{path: {data}}}
model: {{name: tiny, tiny: {{hidden: 16, layers: 1, heads: 2, intermediate: 32}}}}
train: {{epochs: 1}}
decode: {{beam: 10, top_k: 10}}
"""


def write_data(folder: Path, blocks=None, index=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for t, content in (blocks if blocks is not None else {0: BLOCK0, 1: BLOCK1}).items():
        text = content if isinstance(content, str) else json.dumps(content)
        (folder / f"toy.all.block_{t}.json").write_text(text)
    (folder / "toy.index.x.json").write_text(json.dumps(index if index is not None else INDEX))
    return folder


def write_config(tmp_path: Path, data: Path, text: str | None = None) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text if text is not None else CONFIG.format(data=data))
    return path


def run_cli(capsys, config: Path, out: Path, *sets: str, overwrite: bool = False) -> tuple[int, str]:
    argv = ["run", "--config", str(config), "--out", str(out)]
    for s in sets:
        argv += ["--set", s]
    if overwrite:
        argv.append("--overwrite")
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def assert_one_error_line(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert err.endswith("\n")
    assert lines[0].startswith("peso: error: ")
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def good_data(tmp_path: Path) -> Path:
    return write_data(tmp_path / "data")


def test_missing_config_file(tmp_path, capsys):
    out = tmp_path / "out"
    missing = tmp_path / "nope.yaml"
    code, err = run_cli(capsys, missing, out)
    assert_one_error_line(code, err, str(missing), "not found")
    assert not out.exists()


def test_malformed_yaml(tmp_path, capsys, good_data):
    out = tmp_path / "out"
    config = write_config(tmp_path, good_data, f"data: {{path: {good_data}\nmodel: [tiny\n")
    code, err = run_cli(capsys, config, out)
    assert_one_error_line(code, err, str(config), "YAML")
    assert not out.exists()


def test_unknown_method(tmp_path, capsys, good_data):
    out = tmp_path / "out"
    code, err = run_cli(capsys, write_config(tmp_path, good_data), out, "methods=[peso,bogus]")
    line = assert_one_error_line(code, err, "methods", "bogus")
    assert "peso" in line.split("bogus", 1)[1]  # the fix lists the known methods
    assert not out.exists()


def test_unknown_model_name(tmp_path, capsys, good_data):
    out = tmp_path / "out"
    code, err = run_cli(capsys, write_config(tmp_path, good_data), out, "model.name=/nonexistent/model")
    assert_one_error_line(code, err, "model.name", "/nonexistent/model")
    assert not out.exists()


def test_malformed_block_file(tmp_path, capsys):
    data = write_data(tmp_path / "data", {0: BLOCK0, 1: '{"u1": {"current_block": ["i1",'})
    out = tmp_path / "out"
    code, err = run_cli(capsys, write_config(tmp_path, data), out)
    assert_one_error_line(code, err, str(data / "toy.all.block_1.json"), "malformed JSON")
    assert not out.exists()


def test_item_absent_from_index(tmp_path, capsys):
    block1 = {"u1": {"previous_block": ["i1"], "current_block": ["i2", "i9", "i3"]}}
    data = write_data(tmp_path / "data", {0: BLOCK0, 1: block1})
    out = tmp_path / "out"
    code, err = run_cli(capsys, write_config(tmp_path, data), out)
    assert_one_error_line(code, err, str(data / "toy.all.block_1.json"), "i9")
    assert not out.exists()


def test_empty_block(tmp_path, capsys):
    data = write_data(tmp_path / "data", {0: BLOCK0, 1: {}})
    out = tmp_path / "out"
    code, err = run_cli(capsys, write_config(tmp_path, data), out)
    assert_one_error_line(code, err, str(data / "toy.all.block_1.json"), "empty")
    assert not out.exists()


def test_block_without_enough_items_for_any_user(tmp_path, capsys):
    block1 = {"u1": {"previous_block": ["i1"], "current_block": ["i2", "i3"]}}
    data = write_data(tmp_path / "data", {0: BLOCK0, 1: block1})
    out = tmp_path / "out"
    code, err = run_cli(capsys, write_config(tmp_path, data), out)
    assert_one_error_line(code, err, str(data / "toy.all.block_1.json"), "min_items")
    assert not out.exists()


def test_nonsensical_value(tmp_path, capsys, good_data):
    out = tmp_path / "out"
    code, err = run_cli(capsys, write_config(tmp_path, good_data), out, "train.lr=-1")
    assert_one_error_line(code, err, "train.lr")
    assert not out.exists()


def test_missing_data_folder(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_cli(capsys, write_config(tmp_path, tmp_path / "no_data"), out)
    assert_one_error_line(code, err, str(tmp_path / "no_data"))
    assert not out.exists()


def test_existing_out_without_overwrite(tmp_path, capsys, good_data):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.md").write_text("earlier run\n")
    (out / "sub").mkdir()
    (out / "sub" / "keep.txt").write_text("keep")
    before = {p.relative_to(out): p.read_bytes() if p.is_file() else None for p in out.rglob("*")}
    code, err = run_cli(capsys, write_config(tmp_path, good_data), out)
    assert_one_error_line(code, err, str(out), "not written by peso")
    code, err = run_cli(capsys, write_config(tmp_path, good_data), out, overwrite=True)  # not even then
    assert_one_error_line(code, err, str(out), "not written by peso")
    after = {p.relative_to(out): p.read_bytes() if p.is_file() else None for p in out.rglob("*")}
    assert after == before


def test_out_is_an_existing_file(tmp_path, capsys, good_data):
    out = tmp_path / "out.txt"
    out.write_text("not a folder")
    code, err = run_cli(capsys, write_config(tmp_path, good_data), out)
    assert_one_error_line(code, err, str(out))
    assert out.read_text() == "not a folder"


def test_model_folder_that_is_not_a_checkpoint(tmp_path, capsys, good_data):
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    out = tmp_path / "out"
    code, err = run_cli(
        capsys, write_config(tmp_path, good_data), out, f"model.name={not_a_model}", "methods=[single]"
    )
    assert_one_error_line(code, err, "model.name", str(not_a_model))
    assert not out.exists()


def test_version_and_help(capsys):
    from peso import __version__
    from peso.cli import build_parser

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"peso {__version__}"
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "usage: peso run --config CONFIG --out RUN_DIR" in text and "(required" in text
    # every flag and argument of every command says what it is for
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        for action in parser._actions:
            assert action.help, (name, action.dest)


def test_a_log_gets_one_line_per_epoch_and_no_bar_frames_or_warnings(tmp_path, good_data):
    """stderr to a file, as under CI or nohup: no carriage-return frames, one line per epoch."""
    import subprocess
    import sys

    config = write_config(tmp_path, good_data)
    log = tmp_path / "log.txt"
    with log.open("w") as f:
        cmd = [sys.executable, "-m", "peso.cli", "run", "--config", str(config), "--out", str(tmp_path / "r")]
        cmd += ["--set", "methods=[single]", "--set", "train.epochs=2"]
        code = subprocess.run(
            cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
    text = log.read_text()
    assert code.returncode == 0, text
    assert "\r" not in text and "Warning" not in text, text
    epochs = [ln for ln in text.splitlines() if " epoch " in ln]
    assert [ln.split(":")[0] for ln in epochs] == [
        "seed 0 method block0 block 0 epoch 1/2",
        "seed 0 method block0 block 0 epoch 2/2",
        "seed 0 method single block 1 epoch 1/2",
        "seed 0 method single block 1 epoch 2/2",
    ]
