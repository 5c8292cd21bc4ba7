"""`peso run --resume`: a run killed with SIGKILL during a later unit, then resumed, ends with the same
results as an uninterrupted run; a resume with another config is refused and writes nothing."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from peso.cli import main
from tests.conftest import QUICKSTART

ROOT = Path(__file__).resolve().parents[1]
# ml-100k, not the CDs release: at this size every CDs metric is 0, and equal zeros would prove nothing.
# sumlora-all draws from the global RNG before its first training step (PEFT re-initialises its adapter),
# so it only matches when the RNG state the previous unit ended with is restored.
CONFIG = {
    "data": {"path": str(QUICKSTART), "max_users": 16, "history": 8, "blocks": [0, 1, 2, 3]},
    "model": {
        "name": "tiny",
        "tiny": {"hidden": 32, "layers": 1, "heads": 2, "intermediate": 64},
        "lora": {"r": 4, "alpha": 8},
    },
    "train": {"epochs": 2, "continual_epochs": 2, "batch_size": 64, "lr": 1e-2},
    "decode": {"beam": 12, "top_k": 10, "batch_size": 8},
    "methods": [{"name": "peso", "lam": 100.0}, "sumlora-all", "single", "frozen", "popular"],
    "seeds": [0, 1],
    "threads": 1,
}
TIMING = {"train_seconds", "targets_per_s"}  # wall-clock columns: the only ones allowed to differ


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    cfg = root / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    out = root / "uninterrupted"
    assert main(["run", "--config", str(cfg), "--out", str(out)]) == 0
    return cfg, out


def _progress(out: Path) -> dict:
    try:
        return json.loads((out / "progress.json").read_text())
    except (OSError, ValueError):  # not written yet (replaced atomically, so never half-written)
        return {"completed": [], "finished": False}


def _results(out: Path) -> list[dict]:
    rows = list(csv.DictReader((out / "results.csv").open()))
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _recommendations(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): p.read_text() for p in sorted(out.glob("seed_*/**/recommendations.csv"))}


TIMED = ("train_seconds", "train s per continual block")  # results.md's wall-clock columns


def _report(out: Path) -> list[str]:
    """results.md without what the clock decides: the wall time and the training-time columns."""
    lines, drop, dropped = [], None, set()
    for line in (out / "results.md").read_text().splitlines():
        cells = line.split("|")
        if line.startswith("| method"):  # a table's header: does it have a timing column?
            names = [c.strip() for c in cells]
            drop = next((names.index(c) for c in TIMED if c in names), None)
            dropped.update(c for c in TIMED if c in names)
        if drop is not None and line.startswith("|"):
            line = "|".join(c for i, c in enumerate(cells) if i != drop)
        if not line.startswith("- wall time"):
            lines.append(line)
    assert dropped == set(TIMED)  # both columns were found, so the rest of each table is compared
    return lines


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_a_run_killed_in_a_middle_block_resumes_there_to_the_same_results(reference, tmp_path, capsys):
    cfg, ref = reference
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "peso.cli", "run", "--config", str(cfg), "--out", str(out)]
    log = tmp_path / "killed.log"
    # sumlora-all's block 2 of 1..3, in its second epoch: its block 1 is saved, block 2 is not
    middle = "seed 0 method sumlora-all block 2 epoch 1/2"
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        # no clock: the loop ends when that line shows or the process ends (a failure), however loaded
        # the machine
        while middle not in log.read_text():
            assert proc.poll() is None, f"the run ended before it could be killed:\n{log.read_text()[-2000:]}"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()  # a no-op after the SIGKILL; on a failed assertion it must not outlive the test
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = _progress(out)["completed"]
    assert "seed_0/sumlora-all/block_1" in done and "seed_0/sumlora-all/block_2" not in done, done
    saved = {u: (out / "resume" / u / "unit.json").stat().st_mtime_ns for u in done}

    capsys.readouterr()
    # --config equal to the saved one is accepted
    assert main(["run", "--resume", str(out), "--config", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert "seed_0/sumlora-all/block_1: done before" in err
    trained = [ln.split(" epoch ")[0] for ln in err.splitlines() if " epoch " in ln]
    assert trained[0] == "seed 0 method sumlora-all block 2"  # it starts where it was killed
    assert (
        "seed 0 method sumlora-all block 1" not in trained and "seed 0 method block0 block 0" not in trained
    )
    assert all((out / "resume" / u / "unit.json").stat().st_mtime_ns == t for u, t in saved.items())
    assert _progress(out)["finished"] and not list(out.rglob(".*.tmp"))  # killed writers' leftovers gone
    assert json.loads((out / "manifest.json").read_text())["resumed"][0]["completed_units"] == len(done)

    assert _results(out) == _results(ref)  # every metric column, in the same row order
    assert _recommendations(out) == _recommendations(ref) and len(_recommendations(ref)) == 2 * (
        4 + 1 + 4 * 3
    )
    assert _report(out) == _report(ref)  # tables and per-user bootstrap intervals
    assert (out / "training.csv").read_text() == (ref / "training.csv").read_text()
    assert any(line.startswith("| sumlora-all | ") and "[" in line for line in _report(ref))
    # a method's latest block state is kept (what a resume or a deployment continues from), no other
    for run in (ref, out):
        states = sorted(
            str(p.parent.relative_to(run / "resume")) for p in run.glob("resume/**/state.safetensors")
        )
        methods = ["peso", "sumlora-all", "single", "frozen"]
        assert states == sorted(
            [f"seed_{s}/block_0" for s in (0, 1)]
            + [f"seed_{s}/{m}/block_3" for s in (0, 1) for m in methods]
            + [f"seed_{s}/popular/block_3" for s in (0, 1)]
        )


def test_resuming_a_finished_run_only_rewrites_the_reports(reference):
    _, ref = reference
    results = (ref / "results.csv").read_text()
    report = _report(ref)
    (ref / "results.md").unlink()
    assert main(["run", "--resume", str(ref)]) == 0
    assert _report(ref) == report and (ref / "results.csv").read_text() == results


def test_resume_with_another_config_is_refused_and_writes_nothing(reference, tmp_path, capsys):
    _, ref = reference
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**CONFIG, "train": {**CONFIG["train"], "lr": 2e-2}}))
    before = _snapshot(ref)
    capsys.readouterr()
    for argv, key in (
        (["run", "--resume", str(ref), "--config", str(other)], "train.lr"),
        (["run", "--resume", str(ref), "--set", "seeds=[0]"], "seeds"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and err.startswith(f"peso: error: {ref}: "), err
        assert f"differs from the run's saved config.yaml at '{key}'" in err and "(fix: drop --config" in err
    assert _snapshot(ref) == before


def test_a_folder_that_is_not_a_resumable_run_is_refused(tmp_path, capsys):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / ".peso.json").write_text('{"kind": "run"}')  # a run killed before progress.json
    (partial / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    other = tmp_path / "other"  # a folder peso did not write as a run: --overwrite is no advice for it
    other.mkdir()
    (other / "stats.json").write_text("{}")
    for folder, advice in (
        (partial, "--overwrite"),
        (tmp_path / "missing", "peso run --config"),
        (other, ""),
    ):
        capsys.readouterr()
        assert main(["run", "--resume", str(folder)]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and f"{folder}: " in err and advice in err
        assert folder == partial or "--overwrite" not in err
    assert sorted(p.name for p in partial.iterdir()) == [".peso.json", "config.yaml"]
    assert not (tmp_path / "missing").exists()


def test_a_damaged_unit_is_refused_in_one_line(reference, tmp_path, capsys):
    _, ref = reference
    out = tmp_path / "damaged"
    shutil.copytree(ref, out)
    (out / "resume" / "seed_0" / "peso" / "block_1" / "per_user.safetensors").write_bytes(b"not safetensors")
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["run", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"{out / 'resume' / 'seed_0' / 'peso' / 'block_1'}: " in err, err
    assert "unreadable (SafetensorError)" in err and "--overwrite" in err
    assert _snapshot(out) == before  # checked before anything was written


def test_methods_added_to_a_finished_run_give_what_a_run_listing_them_last_gives(reference, tmp_path, capsys):
    """A run of peso and sumlora-all, then `--resume --add-methods "[single, frozen, popular]"`: block 0 is
    not trained again, and the folder ends as the uninterrupted run of all five (results, lists, report)."""
    cfg, ref = reference
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({**CONFIG, "methods": CONFIG["methods"][:2]}))
    out = tmp_path / "extended"
    assert main(["run", "--config", str(base), "--out", str(out)]) == 0
    block0 = (out / "seed_0" / "base").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--add-methods", "[single, frozen, popular]"]) == 0
    err = capsys.readouterr().err
    assert "seed_0/block_0: block 0 shared with single, frozen" in err
    assert "method block0 block 0" not in err and (out / "seed_0" / "base").stat().st_mtime_ns == block0
    assert _results(out) == _results(ref)
    assert _recommendations(out) == _recommendations(ref)
    assert _report(out) == _report(ref)
    assert yaml.safe_load((out / "config.yaml").read_text()) == yaml.safe_load(
        (ref / "config.yaml").read_text()
    )
    assert json.loads((out / "manifest.json").read_text())["resumed"][0]["added_methods"] == [
        "single",
        "frozen",
        "popular",
    ]
    # the shared block-0 rows went into the unit: a reader of the units (the benchmarks) sees them too
    from peso.runfolder import read_units

    assert read_units(out)[2].keys() == read_units(ref)[2].keys()


@pytest.mark.parametrize(
    ("added", "says"),
    [
        ("[{name: peso, lam: 1.0}]", "label"),  # peso is there already: labels are distinct per run
        ("[{name: nosuch}]", "nosuch"),
        ("single", "not a non-empty list"),
        ("[single", "not valid YAML"),
    ],
)
def test_bad_added_methods_are_refused_in_one_line_and_write_nothing(reference, added, says, capsys):
    _, ref = reference
    before = _snapshot(ref)
    capsys.readouterr()
    assert main(["run", "--resume", str(ref), "--add-methods", added]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("peso: error: --add-methods: ") and says in err, err
    assert _snapshot(ref) == before


def test_a_run_resumes_and_reruns_from_another_working_folder(tmp_path, monkeypatch, capsys):
    """data.path given relative to the working folder through --set: the saved config holds it absolute,
    so --resume and --config RUN/config.yaml work from anywhere."""
    from tests.test_cli_errors import write_data

    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_data(start / "toy")
    small = {**CONFIG, "data": {"path": "nowhere"}, "methods": ["popular", "single"], "seeds": [0]}
    (start / "cfg.yaml").write_text(yaml.safe_dump(small))
    monkeypatch.chdir(start)
    assert main(["run", "--config", "cfg.yaml", "--out", "run", "--set", "data.path=toy"]) == 0
    run = start / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["path"] == str(start / "toy")
    # as if killed before its last unit (single, block 1) was listed: that unit runs again
    progress = json.loads((run / "progress.json").read_text())
    assert progress["completed"][-1] == "seed_0/single/block_1"
    progress["completed"], progress["finished"] = progress["completed"][:-1], False
    (run / "progress.json").write_text(json.dumps(progress))
    reference = _results(run)
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["run", "--resume", str(run)]) == 0
    assert "seed 0 method single block 1" in capsys.readouterr().err  # trained again, here
    assert _results(run) == reference
    assert main(["run", "--config", str(run / "config.yaml"), "--out", "again"]) == 0
    assert _results(elsewhere / "again") == reference
