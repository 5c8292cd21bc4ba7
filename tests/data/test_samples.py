"""The evaluation protocol on hand-made user histories: which item is a target, with which history."""

import numpy as np
import pytest

from peso.data.blocks import Block
from peso.data.samples import build_samples

ITEMS = list("abcdefghijklmnopqrstuvwxyz")
IDS = {item: i for i, item in enumerate(ITEMS)}


def ids(items: str) -> list[int]:
    return [IDS[i] for i in items]


def block(number: int, users: dict[str, tuple[str, str]]) -> Block:
    """users: name -> (previous items, current items), one letter per item."""
    return Block(
        number=number,
        users=list(users),
        previous=[list(p) for p, _ in users.values()],
        current=[list(c) for _, c in users.values()],
    )


def window_items(s, u: int, pos: int) -> list[int]:
    return s.window(u, pos).tolist()


def test_split_of_a_user_with_previous_items():
    s = build_samples(block(1, {"u": ("ab", "cdef")}), IDS, history=20)
    assert s.users == ["u"]
    assert s.number == 1
    assert s.sequences[0].tolist() == ids("abcdef")
    assert int(s.block_start[0]) == 2
    # test = last item of the block, valid = second to last
    assert s.target(0, s.test_position(0)) == IDS["f"]
    assert s.target(0, s.valid_position(0)) == IDS["e"]
    # training targets = current[:-2], each predicted from everything before it
    train = list(s.train_positions(0))
    assert [s.target(0, p) for p in train] == ids("cd")
    assert window_items(s, 0, train[0]) == ids("ab")
    assert window_items(s, 0, train[1]) == ids("abc")
    assert window_items(s, 0, s.valid_position(0)) == ids("abcd")
    assert window_items(s, 0, s.test_position(0)) == ids("abcde")


def test_history_window_truncates_to_the_last_items():
    s = build_samples(block(1, {"u": ("abcde", "fghi")}), IDS, history=2)
    assert s.history == 2
    assert window_items(s, 0, s.test_position(0)) == ids("gh")
    assert window_items(s, 0, s.valid_position(0)) == ids("fg")
    train = list(s.train_positions(0))
    assert [s.target(0, p) for p in train] == ids("fg")
    assert window_items(s, 0, train[0]) == ids("de")  # reaches back into the earlier block
    assert window_items(s, 0, train[1]) == ids("ef")
    # every window has exactly `history` items here
    assert all(len(s.window(0, p)) == 2 for p in [*train, s.valid_position(0), s.test_position(0)])


def test_history_one_keeps_only_the_previous_item():
    s = build_samples(block(2, {"u": ("xy", "abc")}), IDS, history=1)
    assert window_items(s, 0, s.test_position(0)) == ids("b")
    assert window_items(s, 0, s.valid_position(0)) == ids("a")
    assert [window_items(s, 0, p) for p in s.train_positions(0)] == [ids("y")]


def test_users_with_too_few_items_in_the_block_are_skipped():
    b = block(
        1,
        {
            "short": ("abcdefg", "hi"),  # many earlier items do not count: only 2 in this block
            "ok": ("", "abc"),
            "four": ("a", "bcde"),
        },
    )
    s = build_samples(b, IDS)
    assert s.users == ["ok", "four"]
    assert len(s) == 2
    s5 = build_samples(b, IDS, min_items=5)
    assert s5.users == []
    assert len(s5) == 0
    assert s5.examples("train") == []
    assert s5.examples("test") == []
    s4 = build_samples(b, IDS, min_items=4)
    assert s4.users == ["four"]


def test_without_empty_history_the_first_item_is_never_a_target():
    # data.empty_history off: a block-0 user's first item has nothing to be predicted from
    s = build_samples(block(0, {"u": ("", "abcdef")}), IDS, empty_history=False)
    train = list(s.train_positions(0))
    assert [s.target(0, p) for p in train] == ids("bcd")
    assert all(len(s.window(0, p)) > 0 for p in train)
    assert s.target(0, s.valid_position(0)) == IDS["e"]
    assert s.target(0, s.test_position(0)) == IDS["f"]


def test_with_empty_history_the_first_item_is_a_target_from_no_history():
    s = build_samples(block(0, {"u": ("", "abcdef")}), IDS)  # the default, as the official code
    train = list(s.train_positions(0))
    assert [s.target(0, p) for p in train] == ids("abcd")
    assert window_items(s, 0, train[0]) == [] and window_items(s, 0, train[1]) == ids("a")
    s = build_samples(block(0, {"u": ("", "abc")}), IDS)
    assert [s.target(0, p) for p in s.train_positions(0)] == ids("a")


def test_three_items_without_history_give_no_training_target_when_empty_history_is_off():
    s = build_samples(block(0, {"u": ("", "abc")}), IDS, empty_history=False)
    assert list(s.train_positions(0)) == []
    assert s.examples("train") == []
    assert s.target(0, s.valid_position(0)) == IDS["b"]
    assert window_items(s, 0, s.valid_position(0)) == ids("a")
    assert s.target(0, s.test_position(0)) == IDS["c"]


def test_three_items_with_history_give_one_training_target():
    s = build_samples(block(3, {"u": ("z", "abc")}), IDS)
    assert [s.target(0, p) for p in s.train_positions(0)] == ids("a")
    assert window_items(s, 0, next(iter(s.train_positions(0)))) == ids("z")


def test_examples_and_train_targets_over_several_users():
    b = block(
        1,
        {
            "u0": ("ab", "cdef"),  # train c, d
            "u1": ("", "ghijk"),  # train h, i (g has no history: empty_history off)
            "u2": ("x", "yz"),  # skipped
            "u3": ("m", "nop"),  # train n
        },
    )
    s = build_samples(b, IDS, empty_history=False)
    assert s.users == ["u0", "u1", "u3"]
    train = s.examples("train")
    assert [(u, s.target(u, p)) for u, p in train] == [
        (0, IDS["c"]),
        (0, IDS["d"]),
        (1, IDS["h"]),
        (1, IDS["i"]),
        (2, IDS["n"]),
    ]
    valid = s.examples("valid")
    test = s.examples("test")
    assert [u for u, _ in valid] == [0, 1, 2]
    assert [u for u, _ in test] == [0, 1, 2]
    assert [s.target(u, p) for u, p in valid] == ids("ejo")
    assert [s.target(u, p) for u, p in test] == ids("fkp")
    targets = s.train_targets()
    assert targets.dtype == np.int64
    assert targets.tolist() == ids("cdhin")
    # no position is shared between splits
    assert not set(train) & set(valid)
    assert not set(valid) & set(test)


def test_max_users_keeps_the_first_qualifying_users():
    b = block(
        1,
        {
            "a": ("", "ab"),  # skipped: does not count towards max_users
            "b": ("", "abc"),
            "c": ("", "abcd"),
            "d": ("", "abcde"),
        },
    )
    assert build_samples(b, IDS, max_users=2).users == ["b", "c"]
    assert build_samples(b, IDS, max_users=1).users == ["b"]
    assert build_samples(b, IDS, max_users=10).users == ["b", "c", "d"]
    s = build_samples(b, IDS, max_users=2)
    assert len(s.sequences) == len(s.block_start) == 2


def test_examples_positions_per_split():
    s = build_samples(block(1, {"u": ("ab", "cdef")}), IDS)
    assert s.examples("test") == [(0, 5)]
    assert s.examples("valid") == [(0, 4)]
    assert s.examples("train") == [(0, 2), (0, 3)]


@pytest.mark.parametrize("history", [1, 3, 20])
def test_window_never_exceeds_history_nor_includes_the_target(history):
    s = build_samples(block(1, {"u": ("abcdefgh", "ijklmnop")}), IDS, history=history)
    seq = s.sequences[0].tolist()
    for split in ("train", "valid", "test"):
        for u, p in s.examples(split):
            w = window_items(s, u, p)
            assert len(w) == min(history, p)
            assert w == seq[max(0, p - history) : p]
            assert s.target(u, p) == seq[p]


def official_counts(blocks) -> list[tuple[int, int, int]]:
    """The official rule (hsyoo32/peso Fine-tuning/continual_data_v2.py, _process_train_data), written
    again: per user of a block, every position from len(previous_block) up to the last two is a training
    target, the second to last the validation target and the last the test target; users with fewer than
    3 items in the block are not evaluated."""
    out = []
    for b in blocks:
        train = valid = test = 0
        for prev, cur in zip(b.previous, b.current, strict=True):
            if len(cur) < 3:
                continue
            seq = list(prev) + list(cur)
            train += len(range(len(prev), len(seq) - 2))
            valid += 1
            test += 1
        out.append((train, valid, test))
    return out


def test_counts_equal_the_official_rule_on_a_hand_made_block():
    b = block(0, {"new": ("", "abcde"), "old": ("xy", "fgh"), "short": ("", "ab"), "three": ("", "ijk")})
    s = build_samples(b, IDS)
    assert official_counts([b]) == [(3 + 1 + 1, 3, 3)]
    assert [(len(s.examples(k))) for k in ("train", "valid", "test")] == list(official_counts([b])[0])


def test_counts_equal_the_official_rule_on_the_release_blocks():
    from peso.data.release import read_release
    from tests.conftest import CDS

    data = read_release(CDS)
    ids_ = {item: i for i, item in enumerate(data.index)}
    got = []
    for b in data.blocks:
        s = build_samples(b, ids_, history=20)
        got.append(tuple(len(s.examples(k)) for k in ("train", "valid", "test")))
    want = official_counts(data.blocks)
    assert got == want
    off = [len(build_samples(b, ids_, empty_history=False).examples("train")) for b in data.blocks]
    assert all(o < g[0] for o, g in zip(off, got, strict=True))  # every block has users new in it
