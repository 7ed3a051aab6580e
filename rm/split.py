"""Deterministic train/held-out split by group (prompt), stable as data grows."""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np


def group_fraction(key: str, salt: str = "") -> float:
    """A stable pseudo-uniform number in [0, 1) for ``key`` (sha256 of salt + key)."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def held_out_mask(groups: Iterable, test_fraction: float = 0.3, salt: str = "") -> np.ndarray:
    """Boolean mask, True where a row's group belongs to the held-out side.

    A group's side depends only on ``(salt, key)``, so every row of one prompt
    lands on the same side, and adding data never moves existing prompts.
    Use a different ``salt`` for each benchmark seed.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError("test_fraction must be between 0 and 1")
    cache: dict = {}
    out = []
    for g in groups:
        if g not in cache:
            cache[g] = group_fraction(str(g), salt) < test_fraction
        out.append(cache[g])
    return np.asarray(out, dtype=bool)


def split_by_group(groups: Iterable, test_fraction: float = 0.3, salt: str = "") -> tuple[np.ndarray, np.ndarray]:
    """``(train_rows, test_rows)`` index arrays from ``held_out_mask``."""
    mask = held_out_mask(groups, test_fraction, salt)
    return np.flatnonzero(~mask), np.flatnonzero(mask)
