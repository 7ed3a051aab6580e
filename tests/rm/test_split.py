"""Deterministic group splits."""

import numpy as np

from rm.split import held_out_mask, split_by_group


def test_no_group_on_both_sides_and_roughly_the_fraction():
    groups = [f"p{i % 500}" for i in range(3000)]
    mask = held_out_mask(groups, 0.3, salt="s")
    by_group = {}
    for g, m in zip(groups, mask):
        by_group.setdefault(g, set()).add(bool(m))
    assert all(len(v) == 1 for v in by_group.values())
    assert 0.24 < mask.mean() < 0.36


def test_split_is_stable_as_data_grows_and_salt_changes_it():
    old = [f"p{i}" for i in range(200)]
    new = old + [f"q{i}" for i in range(200)]
    assert np.array_equal(held_out_mask(old, 0.3), held_out_mask(new, 0.3)[:200])
    assert not np.array_equal(held_out_mask(old, 0.3, salt="a"), held_out_mask(old, 0.3, salt="b"))
    train, test = split_by_group(old, 0.3)
    held_out = held_out_mask(old, 0.3)
    assert test.tolist() == np.flatnonzero(held_out).tolist() and 0 < len(test) < len(train)
    assert train.tolist() == np.flatnonzero(~held_out).tolist()
