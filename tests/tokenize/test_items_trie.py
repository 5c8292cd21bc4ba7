"""Semantic-ID index (codes, collision groups) and the prefix trie, against brute force."""

import numpy as np
import pytest
import torch

from peso.errors import PesoError
from peso.tokenize.items import ItemIndex
from peso.tokenize.trie import Trie

# i1 and i3 carry the same semantic ID (a collision); "<a_10>" must sort after "<a_2>"
HAND = {
    "i1": ["<a_2>", "<b_1>"],
    "i2": ["<a_10>", "<b_1>"],
    "i3": ["<a_2>", "<b_1>"],
    "i4": ["<a_1>", "<b_3>"],
    "i5": ["<a_10>", "<b_3>"],
}


def test_level_tokens_sorted_numerically():
    idx = ItemIndex.from_tokens(HAND)
    assert idx.level_tokens == [["<a_1>", "<a_2>", "<a_10>"], ["<b_1>", "<b_3>"]]
    assert idx.level_sizes == [3, 2]
    assert idx.levels == 2


def test_numeric_order_beyond_lexicographic():
    toks = ["<a_10>", "<a_9>", "<a_100>", "<a_2>", "<a_0>"]
    idx = ItemIndex.from_tokens({f"i{n}": [t] for n, t in enumerate(toks)})
    assert idx.level_tokens == [["<a_0>", "<a_2>", "<a_9>", "<a_10>", "<a_100>"]]
    assert idx.codes[:, 0].tolist() == [3, 2, 4, 1, 0]


def test_codes_follow_token_order():
    idx = ItemIndex.from_tokens(HAND)
    assert idx.items == ["i1", "i2", "i3", "i4", "i5"]
    assert idx.codes.dtype == np.int64
    assert idx.codes.tolist() == [[1, 0], [2, 0], [1, 0], [0, 1], [2, 1]]
    # round trip: codes -> tokens gives back the index
    for item, row in zip(idx.items, idx.codes, strict=True):
        assert [idx.level_tokens[d][c] for d, c in enumerate(row)] == HAND[item]
    assert idx.item_ids() == {"i1": 0, "i2": 1, "i3": 2, "i4": 3, "i5": 4}


def test_sid_groups_colliding_items():
    idx = ItemIndex.from_tokens(HAND)
    assert idx.n_sids == 4
    assert idx.sid.shape == (5,)
    assert idx.sid[0] == idx.sid[2]  # i1 and i3 collide
    assert len({int(idx.sid[i]) for i in (0, 1, 3, 4)}) == 4
    # each item's group has the item's codes
    assert (idx.sid_codes[idx.sid] == idx.codes).all()
    # groups are distinct
    assert len({tuple(r) for r in idx.sid_codes.tolist()}) == idx.n_sids
    assert idx.collisions() == {"shared_ids": 1, "items_in_shared_ids": 2}


def test_collisions_counts_groups_and_items():
    index = {
        "a": ["<a_1>", "<b_1>"],
        "b": ["<a_1>", "<b_1>"],
        "c": ["<a_1>", "<b_1>"],  # 3 share one ID
        "d": ["<a_2>", "<b_1>"],
        "e": ["<a_2>", "<b_1>"],  # 2 share another
        "f": ["<a_2>", "<b_2>"],
    }
    idx = ItemIndex.from_tokens(index)
    assert idx.n_sids == 3
    assert idx.collisions() == {"shared_ids": 2, "items_in_shared_ids": 5}


def test_no_collisions():
    idx = ItemIndex.from_tokens({"a": ["<a_1>"], "b": ["<a_2>"]})
    assert idx.collisions() == {"shared_ids": 0, "items_in_shared_ids": 0}
    assert idx.sid.tolist() == [0, 1]


def test_token_at_two_levels_is_an_error():
    with pytest.raises(PesoError) as e:
        ItemIndex.from_tokens({"a": ["<a_1>", "<b_1>"], "b": ["<b_1>", "<b_2>"]}, source="my.index.json")
    assert "my.index.json" in str(e.value)
    assert "<b_1>" in str(e.value)


# --- trie ---------------------------------------------------------------------------------------------

SIZES = [4, 3, 5]


def random_sid_codes(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, s, size=n) for s in SIZES], axis=1)
    return np.unique(codes, axis=0)


def prefixes(sid_codes: np.ndarray) -> list[dict[tuple, set]]:
    """Per depth: prefix -> set of codes that continue it to a valid ID."""
    out = [dict() for _ in SIZES]
    for row in sid_codes.tolist():
        for d in range(len(SIZES)):
            out[d].setdefault(tuple(row[:d]), set()).add(row[d])
    return out


def check_trie(sid_codes: np.ndarray) -> None:
    trie = Trie(sid_codes, SIZES)
    assert trie.levels == 3
    truth = prefixes(sid_codes)
    full = {tuple(r): i for i, r in enumerate(sid_codes.tolist())}
    # walk from the root with step(): prefix -> node at each depth
    nodes = {(): 0}
    for d, size in enumerate(SIZES):
        assert set(nodes) == set(truth[d])
        # distinct prefixes are distinct nodes, numbered 0..n-1
        assert sorted(nodes.values()) == list(range(len(nodes)))
        assert trie.allowed[d].shape == (len(nodes), size)
        prefs = list(nodes)
        node_t = torch.tensor([nodes[p] for p in prefs], dtype=torch.int64)
        mask = trie.mask(d, node_t)
        assert mask.shape == (len(prefs), size)
        assert mask.dtype == torch.bool
        for row, p in zip(mask.tolist(), prefs, strict=True):
            assert {c for c, ok in enumerate(row) if ok} == truth[d][p]
        # step every (node, code) pair in one batch
        pair_nodes = node_t.repeat_interleave(size)
        pair_codes = torch.arange(size).repeat(len(prefs))
        child = trie.step(d, pair_nodes, pair_codes).tolist()
        nxt = {}
        for k, (p, c) in enumerate((p, c) for p in prefs for c in range(size)):
            if c not in truth[d][p]:
                assert child[k] == -1, (d, p, c)
            elif d == len(SIZES) - 1:
                assert child[k] == full[(*p, c)]  # the last level returns the sid row
                assert sid_codes[child[k]].tolist() == [*p, c]
            else:
                assert child[k] >= 0
                nxt[(*p, c)] = child[k]
        nodes = nxt
    # invalid nodes have an all-False mask and no children
    for d, size in enumerate(SIZES):
        bad = torch.tensor([-1, -1], dtype=torch.int64)
        assert not trie.mask(d, bad).any()
        assert trie.step(d, bad, torch.tensor([0, size - 1])).tolist() == [-1, -1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trie_matches_brute_force(seed):
    sid_codes = random_sid_codes(seed, 25)
    # 25 draws over 4*3 = 12 two-level prefixes: shared prefixes are certain
    assert len({tuple(r[:2]) for r in sid_codes.tolist()}) < len(sid_codes)
    check_trie(sid_codes)


def test_trie_with_unsorted_sid_rows():
    sid_codes = random_sid_codes(5, 30)
    perm = np.random.default_rng(7).permutation(len(sid_codes))
    check_trie(sid_codes[perm])


def test_trie_single_id():
    check_trie(np.array([[3, 2, 4]], dtype=np.int64))


def test_trie_from_item_index():
    idx = ItemIndex.from_tokens(HAND)
    trie = Trie(idx.sid_codes, idx.level_sizes)
    root = torch.zeros(1, dtype=torch.int64)
    assert trie.mask(0, root).tolist() == [[True, True, True]]
    # walk each item's codes down to its semantic-ID group
    for i, row in enumerate(idx.codes.tolist()):
        node = root
        for d, c in enumerate(row):
            assert trie.mask(d, node)[0, c]
            node = trie.step(d, node, torch.tensor([c]))
        assert node.item() == idx.sid[i]
    # <a_1> (code 0) continues only with <b_3> (code 1)
    n = trie.step(0, root, torch.tensor([0]))
    assert trie.mask(1, n).tolist() == [[False, True]]
    assert trie.step(1, n, torch.tensor([0])).item() == -1


def test_step_beyond_the_largest_key_is_absent():
    sid_codes = np.array([[0, 0, 0], [0, 1, 2]], dtype=np.int64)
    trie = Trie(sid_codes, SIZES)
    root = torch.zeros(1, dtype=torch.int64)
    assert trie.step(0, root, torch.tensor([3])).item() == -1
    n = trie.step(0, root, torch.tensor([0]))
    assert trie.step(1, n, torch.tensor([2])).item() == -1
    n2 = trie.step(1, n, torch.tensor([1]))
    assert trie.step(2, n2, torch.tensor([4])).item() == -1
    assert trie.step(2, n2, torch.tensor([2])).item() == 1


def test_trie_over_a_subset_keeps_global_ids():
    codes = np.array([[0, 1], [1, 0], [1, 2], [2, 2]])
    keep = np.array([1, 3])
    trie = Trie(codes[keep], [3, 3], keep)
    assert trie.mask(0, torch.tensor([0]))[0].tolist() == [False, True, True]
    node = trie.step(0, torch.tensor([0, 0]), torch.tensor([1, 2]))
    leaf = trie.step(1, node, torch.tensor([0, 2]))
    assert leaf.tolist() == [1, 3]  # global ids, not positions in the subset
