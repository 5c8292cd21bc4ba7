"""The live path: `peso deploy`, `peso update`, `versions`, `rollback`, `recommend`, `export-model`, `gc`.

The strongest check first: blocks 0..3 run, deployed, then updated with block 4's raw interactions, equal
the same method's block 4 of a run over blocks 0..4 (recommendation lists and metrics)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from peso.cli import main
from peso.store import Store
from tests.conftest import CONFIG, deployed, kill_update_while_training, live_runs, tiny_run, tree


def rows(path: Path) -> dict:
    return {(r["method"], r["block"]): r for r in csv.DictReader(path.open())}


@pytest.mark.parametrize("method", ["sumlora-all", "peso", "peso-select", "ewc-trie"])
def test_an_update_equals_the_same_block_of_peso_run(runs, tmp_path, method, capsys):
    store = deployed(runs, tmp_path, method)
    assert main(["update", str(store), str(runs / "block4.csv"), "--guard", "none"]) == 0
    version = store / "versions" / "2"
    ours = (version / "recommendations.csv").read_text()
    theirs = (runs / "run5" / "seed_0" / method / "block_4" / "recommendations.csv").read_text()
    assert ours == theirs
    # the version's adapter folder carries the item rows `peso run` exports, and their softmax
    rows_file = "adapter/item_rows.safetensors"
    with (
        safe_open(version / rows_file, "pt") as a,
        safe_open(runs / "run5/seed_0" / method / "block_4" / rows_file, "pt") as b,
    ):
        assert a.metadata() == b.metadata() == {"item_softmax": "trie" if method == "ewc-trie" else "vocab"}
        assert set(a.keys()) == set(b.keys()) == {"token_ids", "embed_tokens", "lm_head"}
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
    report = json.loads((version / "report.json").read_text())
    row = rows(runs / "run5" / "results.csv")[(method, "4")]
    for m in ("hit@1", "hit@5", "hit@10", "ndcg@5", "ndcg@10"):
        assert report["metrics"]["new"][m] == pytest.approx(float(row[m]), abs=1e-6)
    assert report["metrics"]["new"]["users"] == int(row["users"])
    assert set(report["metrics"]) == {"new", "previous", "popular"} and report["published"]
    assert report["slice"]["interactions"] > 0 and 0 <= report["drift_js"] <= 1
    assert Store(store).current() == 2


@pytest.fixture(scope="module")
def trie_runs(tmp_path_factory) -> Path:
    """`runs` with model.item_softmax: trie; EWC reads the previous block's pack, over the earlier catalogue."""
    config = {**CONFIG, "model": {**CONFIG["model"], "item_softmax": "trie"}}
    return live_runs(tmp_path_factory.mktemp("live-trie"), {**config, "methods": ["peso", "ewc"]})


@pytest.mark.parametrize("method", ["peso", "ewc"])
def test_a_trie_softmax_update_equals_the_same_block_of_peso_run(trie_runs, tmp_path, method):
    store = deployed(trie_runs, tmp_path, method)
    assert main(["update", str(store), str(trie_runs / "block4.csv"), "--guard", "none"]) == 0
    ours = (store / "versions" / "2" / "recommendations.csv").read_text()
    theirs = (trie_runs / "run5" / "seed_0" / method / "block_4" / "recommendations.csv").read_text()
    assert ours == theirs


def test_a_version_decodes_under_the_softmax_its_block_trained_with(tmp_path):
    """A method with `continual_item_softmax: trie` in a run whose block 0 is the vocabulary's: its deployed
    version (block 1's state) ranks block 1's test users as `peso run` did, under the trie's softmax (on
    these two-level IDs the vocabulary's ranks otherwise), and its export says so in trie.json."""
    from peso.config import load_config
    from peso.dataset import prepare
    from peso.decode import recommend
    from peso.inputs import encode
    from peso.live import load_version
    from tests.test_run_e2e import _as_text

    run = tiny_run(tmp_path, [{"name": "single", "continual_item_softmax": "trie"}])
    assert main(["deploy", str(run), "--method", "single", "--out", str(tmp_path / "store")]) == 0
    live = load_version(Store(tmp_path / "store"), 1)
    assert live.space.item_softmax == "trie"
    cfg = load_config(run / "config.yaml")
    prep = prepare(cfg)
    enc = encode(prep.samples[1], live.space, "test")
    saved = run / "seed_0" / "single" / "block_1" / "recommendations.csv"
    theirs = [r["recommendations"] for r in csv.DictReader(saved.open())]

    def lists() -> list[str]:
        d = cfg.decode
        ranked = recommend(live.model, enc.prompts, live.space, prep.tries[1], d.beam, d.top_k, d.batch_size)
        return _as_text(prep, ranked)

    assert lists() == theirs
    live.space.item_softmax = "vocab"
    assert lists() != theirs
    assert main(["export-model", str(tmp_path / "store"), "--out", str(tmp_path / "export")]) == 0
    assert json.loads((tmp_path / "export" / "trie.json").read_text())["item_softmax"] == "trie"


def test_new_items_get_ids_the_vocabulary_grows_and_old_ids_stay(runs, tmp_path):
    store = deployed(runs, tmp_path)
    before = Store(store).index(1)
    log = tmp_path / "new.csv"
    log.write_text(
        "user_id,item_id,timestamp\n"
        + "".join(f"90,{i},{200000 + k}\n" for k, i in enumerate(["n1", "n2", "1", "n3"]))
        + "".join(f"650,{i},{200010 + k}\n" for k, i in enumerate(["n1", "n2", "2", "3"]))
    )
    assert main(["update", str(store), str(log), "--guard", "none"]) == 0
    s = Store(store)
    after = s.index(2)
    assert {k: v for k, v in after.items() if k in before} == before  # no existing ID changed
    new = {k: v for k, v in after.items() if k not in before}
    assert sorted(new) == ["n1", "n2", "n3"] and len({tuple(v) for v in after.values()}) == len(after)
    report = json.loads((s.folder(2) / "report.json").read_text())
    assert report["slice"]["new_items"] == 3 and report["slice"]["dropped_repeats"] == 1  # user 90 had item 1
    from peso.live import load_version

    live = load_version(s, 2)
    assert live.model.get_input_embeddings().weight.shape[0] == 3 + len(after)  # specials + one token each
    assert set(np.flatnonzero(np.isin(live.index.sid, live.trie().sids))) >= {
        live.index.items.index(i) for i in new
    }


def test_recommend_and_rollback_restore_the_exact_previous_lists(runs, tmp_path, capsys):
    store = deployed(runs, tmp_path)

    def lists() -> list:
        out = []
        for user in ("90", "650", "13"):
            capsys.readouterr()
            assert main(["recommend", str(store), "--user", user, "--json"]) == 0
            out.append(json.loads(capsys.readouterr().out))
        return out

    first = lists()
    assert all(r["version"] == 1 and len(r["items"]) == 10 for r in first)
    assert main(["update", str(store), str(runs / "block4.csv"), "--guard", "none"]) == 0
    second = lists()
    assert all(r["version"] == 2 for r in second) and second != first
    assert main(["rollback", str(store)]) == 0
    assert lists() == first
    capsys.readouterr()
    assert main(["recommend", str(store), "--history", "1,2,3"]) == 0
    assert "version 1:" in capsys.readouterr().out
    assert main(["versions", str(store)]) == 0


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("empty", "user_id,item_id,timestamp\n", "no interaction"),
        ("columns", "a,b,c\n1,2,3\n", "column"),
        ("late", "user_id,item_id,timestamp\n90,1,5\n90,2,6\n90,3,7\n", "older than the store's data"),
        ("small", "user_id,item_id,timestamp\n90,1,300000\n", "no user has >= 3"),
    ],
)
def test_bad_slices_exit_2_and_leave_the_store_as_it_was(runs, tmp_path, capsys, name, text, fragment):
    store = deployed(runs, tmp_path)
    before = tree(store)
    log = tmp_path / f"{name}.csv"
    log.write_text(text)
    capsys.readouterr()
    assert main(["update", str(store), str(log)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("peso: error: ") and fragment in err[0], err
    assert tree(store) == before and not (store / "LOCK").exists()


def test_a_store_of_another_format_is_refused(runs, tmp_path, capsys):
    store = deployed(runs, tmp_path)
    info = json.loads((store / "store.json").read_text())
    (store / "store.json").write_text(json.dumps({**info, "format": 99}))
    capsys.readouterr()
    assert main(["update", str(store), str(runs / "block4.csv")]) == 2
    assert "store format 99" in capsys.readouterr().err


def test_a_second_writer_is_refused_and_a_dead_ones_lock_taken_over(runs, tmp_path, capsys):
    store = deployed(runs, tmp_path)
    s = Store(store)
    with s.lock():
        capsys.readouterr()
        assert main(["update", str(store), str(runs / "block4.csv")]) == 2
        assert "another update" in capsys.readouterr().err
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (store / "LOCK").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    assert main(["update", str(store), str(runs / "block4.csv"), "--guard", "none"]) == 0
    assert s.current() == 2 and not (store / "LOCK").exists()


def test_a_killed_update_leaves_the_store_as_it_was_and_runs_again(runs, tmp_path):
    store = deployed(runs, tmp_path)
    before = tree(store)
    kill_update_while_training(store, runs / "block4.csv", tmp_path / "update.log")
    assert Store(store).current() == 1 and Store(store).versions() == [1]
    assert tree(store) == before  # nothing visible changed (a dead process's LOCK is the only trace)
    assert main(["update", str(store), str(runs / "block4.csv"), "--guard", "none"]) == 0
    assert Store(store).current() == 2


def test_the_guard_and_a_dry_run(runs, tmp_path, capsys):
    store = deployed(runs, tmp_path)
    before = tree(store)
    assert main(["update", str(store), str(runs / "block4.csv"), "--dry-run"]) == 0
    assert tree(store) == before
    # a guard that cannot pass (the new version must beat the old by 1.0 NDCG): written, not published
    assert main(["update", str(store), str(runs / "block4.csv"), "--tolerance", "-1"]) == 0
    s = Store(store)
    assert s.versions() == [1, 2] and s.current() == 1 and not s.version(2)["published"]
    assert not json.loads((s.folder(2) / "report.json").read_text())["guard"]["passed"]
    # each version records where its floats came from, as a run's manifest does
    assert {s.version(v)["cpu_capability"] for v in (1, 2)} == {torch.backends.cpu.get_cpu_capability()}


def export_top10(model, out: Path, histories: list[list[str]]) -> list[list[str]]:
    """Top-10 groups from an export with only its two JSON files and transformers: prompts, the prefix table
    and generate; with trie.json's item_softmax 'trie', a logits processor renormalises each level's
    log-softmax over the allowed codes."""
    from transformers import LogitsProcessor, LogitsProcessorList

    trie, items = json.loads((out / "trie.json").read_text()), json.loads((out / "items.json").read_text())
    allowed: dict[tuple, list[int]] = {}
    by_tokens = {}
    for g, codes in zip(trie["group_ids"], trie["groups"], strict=True):
        toks = [trie["level_token_ids"][d][c] for d, c in enumerate(codes)]
        by_tokens[tuple(toks)] = "|".join(items["groups"][str(g)])
        for d in range(len(toks)):
            allowed.setdefault(tuple(toks[:d]), set()).add(toks[d])
    allowed = {k: sorted(v) for k, v in allowed.items()}

    class Renormalise(LogitsProcessor):
        """The ID's tokens over the allowed codes; a prompted model's EOS keeps the vocabulary's score."""

        def __init__(self, prompt_width: int) -> None:
            self.prompt_width = prompt_width

        def __call__(self, input_ids, scores):  # scores: masked log-softmax over the vocabulary
            if input_ids.shape[1] - self.prompt_width < trie["levels"]:
                return torch.log_softmax(scores, dim=-1)
            return scores

    out_lists = []
    for h in histories:
        prompt = trie["prompt"]["prefix"] + [
            t for i in h[-trie["history"] :] for t in items["items"][i]["tokens"]
        ]
        n = len(prompt)
        with torch.no_grad():
            gen = model.generate(
                input_ids=torch.tensor([prompt]),
                num_beams=12,
                num_return_sequences=10,
                max_new_tokens=trie["levels"],
                min_new_tokens=trie["levels"],
                prefix_allowed_tokens_fn=lambda _b, seq, n=n: allowed.get(tuple(seq[n:].tolist()), []),
                logits_processor=LogitsProcessorList(
                    [Renormalise(n)] if trie["item_softmax"] == "trie" else []
                ),
                do_sample=False,
                length_penalty=0.0,
                early_stopping=True,
                pad_token_id=trie["pad_id"],
            )
        out_lists.append([by_tokens[tuple(g[n:].tolist())] for g in gen])
    return out_lists


def recommend_lists(store: Path, histories: list[list[str]], capsys) -> list[list[str]]:
    ours = []
    for h in histories:
        capsys.readouterr()
        assert main(["recommend", str(store), "--history", ",".join(h), "--json"]) == 0
        ours.append(json.loads(capsys.readouterr().out)["items"])
    return ours


HISTORIES = [["1", "2", "3"], ["50", "100"], ["7"]]


def test_the_export_loads_without_peso_and_ranks_as_peso_recommend(runs, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    store = deployed(runs, tmp_path)
    out = tmp_path / "export"
    assert main(["export-model", str(store), "--out", str(out)]) == 0
    ours = recommend_lists(store, HISTORIES, capsys)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    assert export_top10(merged, out, HISTORIES) == ours
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(out / "base"), out / "adapter"
    ).eval()
    assert export_top10(adapted, out, HISTORIES) == ours


def test_a_trie_softmax_export_ranks_as_peso_recommend_with_renormalised_levels(tmp_path, capsys):
    """Two-level IDs where one first code has a single continuation: renormalising the levels reorders."""
    from transformers import AutoModelForCausalLM

    run = tiny_run(tmp_path, ["single"], item_softmax="trie")
    store, out = tmp_path / "store", tmp_path / "export"
    assert main(["deploy", str(run), "--method", "single", "--out", str(store)]) == 0
    assert main(["export-model", str(store), "--out", str(out)]) == 0
    assert json.loads((out / "trie.json").read_text())["item_softmax"] == "trie"
    histories = [["i1", "i2"], ["i5"], ["i3", "i4", "i1"], ["i2", "i5", "i4"]]
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    ours, theirs = recommend_lists(store, histories, capsys), export_top10(merged, out, histories)
    assert all(len(o) == 5 for o in ours)  # every item (generate pads its 10 beams with repeats)
    assert [t[: len(o)] for t, o in zip(theirs, ours, strict=True)] == ours


def test_gc_keeps_the_current_version_and_its_anchor(runs, tmp_path, capsys):
    store = deployed(runs, tmp_path)
    log = tmp_path / "late.csv"
    for k in range(3):  # versions 2, 3, 4: a small slice each, newer each time
        log.write_text(
            "user_id,item_id,timestamp\n"
            + "".join(f"90,{i},{300000 + 10 * k + j}\n" for j, i in enumerate([f"x{k}a", f"x{k}b", f"x{k}c"]))
        )
        assert main(["update", str(store), str(log), "--guard", "none"]) == 0
    s = Store(store)
    assert s.versions() == [1, 2, 3, 4] and s.current() == 4
    assert main(["gc", str(store), "--keep", "0"]) == 0
    s.check_loadable(4)
    s.check_loadable(3)  # the anchor
    for n in (1, 2):  # their states go; their data stays, for the versions built on it
        assert (
            not (s.folder(n) / "state.safetensors").exists()
            and (s.folder(n) / "interactions.parquet").exists()
        )
    assert len(s.interactions(4)) > len(s.interactions(1))
    capsys.readouterr()
    assert main(["rollback", str(store), "--to", "1"]) == 2
    assert "removed by `peso gc`" in capsys.readouterr().err


def test_two_processes_give_the_same_version_as_one(runs, tmp_path):
    one, two = deployed(runs, tmp_path, "peso"), tmp_path / "two"
    import shutil

    shutil.copytree(one, two)
    assert main(["update", str(one), str(runs / "block4.csv"), "--guard", "none"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "peso.cli",
    ]
    cmd += ["update", str(two), str(runs / "block4.csv"), "--guard", "none"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = Store(one), Store(two)
    assert b.current() == 2
    assert (a.folder(2) / "recommendations.csv").read_text() == (
        b.folder(2) / "recommendations.csv"
    ).read_text()
    sa, sb = a.state(2), b.state(2)
    assert sa.params.keys() == sb.params.keys()
    assert max(float((sa.params[k] - sb.params[k]).abs().max()) for k in sa.params) < 1e-4


def test_cold_start_is_the_empty_history_beam_search(runs, tmp_path, capsys):
    store = deployed(runs, tmp_path)

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["recommend", str(store), *argv])
        out = capsys.readouterr()
        return code, out.out or out.err

    code, text = run("--history", "", "--json")
    empty = json.loads(text)
    assert code == 0 and empty["cold_start"] and len(empty["items"]) == 10
    code, text = run("--user", "nobody-at-all", "--json")
    assert code == 2 and "unknown user" in text and "--cold-start" in text
    code, text = run("--user", "nobody-at-all", "--cold-start", "--json")
    assert code == 0 and json.loads(text) == empty
    # the model's own prior, not popularity: the beam search from the prompt's start alone
    from peso.decode import beam_search_batch
    from peso.live import load_version

    live = load_version(Store(store), 1)
    sids, _ = beam_search_batch(
        live.model, [live.space.prompt(np.zeros(0, dtype=np.int64))], live.space, live.trie(), 12, 10
    )
    assert [live.index.items[int(np.flatnonzero(live.index.sid == g)[0])] for g in sids[0].tolist()] == empty[
        "items"
    ]
    code, text = run("--user", "90", "--json")
    assert not json.loads(text)["cold_start"]
