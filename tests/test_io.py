"""Atomic folders and folder ownership (peso.io)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from peso import io as pio
from peso.errors import PesoError


def _fill(folder: Path, text: str) -> None:
    (folder / "a.txt").write_text(text)
    (folder / "sub").mkdir()
    (folder / "sub" / "b.txt").write_text(text)


def test_atomic_dir_replaces_a_folder_with_no_moment_without_it(tmp_path):
    path = tmp_path / "out"
    with pio.atomic_dir(path) as tmp:
        _fill(tmp, "0")
    missing, stop = [], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if not (path / "a.txt").is_file():
                missing.append(1)

    t = threading.Thread(target=watch)
    t.start()
    try:
        for k in range(1, 101):  # bounded by count, not by time
            with pio.atomic_dir(path) as tmp:
                _fill(tmp, str(k))
    finally:
        stop.set()
        t.join()
    assert (path / "a.txt").read_text() == "100" and (path / "sub" / "b.txt").read_text() == "100"
    assert missing == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or old folder left


def test_atomic_dir_without_an_atomic_swap_still_replaces(tmp_path, monkeypatch):
    monkeypatch.setattr(pio, "_exchange", lambda a, b: False)
    path = tmp_path / "out"
    for k in range(3):
        with pio.atomic_dir(path, kind="data") as tmp:
            _fill(tmp, str(k))
    assert (path / "a.txt").read_text() == "2" and pio.folder_kind(path) == "data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_atomic_dir_leaves_the_old_folder(tmp_path):
    path = tmp_path / "out"
    with pio.atomic_dir(path) as tmp:
        _fill(tmp, "old")
    with pytest.raises(RuntimeError), pio.atomic_dir(path) as tmp:
        _fill(tmp, "new")
        raise RuntimeError("killed")
    assert (path / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_folder_kind_from_the_marker_or_an_older_version_s_files(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for f in (a, b, c):
        f.mkdir()
    pio.mark(a, "run")
    for name in ("config.yaml", "progress.json", "manifest.json"):  # a run folder from before markers
        (b / name).write_text("x")
    (c / "config.yaml").write_text("x")
    assert [pio.folder_kind(f) for f in (a, b, c)] == ["run", "run", None]


def test_check_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert pio.check_out(empty, "run", overwrite=False) is False
    assert pio.check_out(tmp_path / "new", "run", overwrite=False) is False
    run = tmp_path / "run"
    run.mkdir()
    pio.mark(run, "run")
    assert pio.check_out(run, "run", overwrite=True) is True
    with pytest.raises(PesoError, match="is a peso run folder"):
        pio.check_out(run, "data", overwrite=True)
    with pytest.raises(PesoError, match="input"):
        pio.check_out(run, "run", overwrite=True, inputs=[run / "config.yaml"])
    with pytest.raises(PesoError, match="working folder"):
        pio.check_out(Path("."), "run", overwrite=True)


def test_replacement_undo_puts_the_old_folder_back_and_keep_drops_it(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    pio.mark(path, "run")
    _fill(path, "old")
    r = pio.Replacement(path, "run")
    r.begin()
    assert sorted(p.name for p in path.iterdir()) == []  # a fresh folder for the new run
    (path / "partial.txt").write_text("new")
    r.undo()
    assert (path / "a.txt").read_text() == "old" and not (path / "partial.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    r = pio.Replacement(path, "run")
    r.begin()
    r.keep()
    assert list(path.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_replacement_of_a_new_folder_undoes_to_nothing(tmp_path):
    r = pio.Replacement(tmp_path / "run", "run")
    r.begin()
    (tmp_path / "run" / "x").write_text("x")
    r.undo()
    assert list(tmp_path.iterdir()) == []


def test_file_digests_are_sha256_of_every_file_but_hidden_ones(tmp_path):
    import hashlib

    _fill(tmp_path, "x")
    pio.mark(tmp_path, "data")  # hidden: peso's own, not the data
    assert pio.file_digests(tmp_path) == {
        "a.txt": hashlib.sha256(b"x").hexdigest(),
        "sub/b.txt": hashlib.sha256(b"x").hexdigest(),
    }
    (tmp_path / "sub" / "b.txt").write_text("y")
    assert pio.file_digests(tmp_path)["sub/b.txt"] == hashlib.sha256(b"y").hexdigest()
