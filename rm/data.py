"""Plain data containers passed between the app and the reward-model library."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

# Outcome codes, in canonical (A, B) terms.
A_WINS = 0
B_WINS = 1
TIE = 2
BOTH_BAD = 3
OUTCOME_CODES = {"a": A_WINS, "b": B_WINS, "tie": TIE, "both_bad": BOTH_BAD}


def outcome_code(name: str) -> int:
    """Map ``'a'|'b'|'tie'|'both_bad'`` to its small-int code."""
    try:
        return OUTCOME_CODES[name]
    except KeyError:
        raise ValueError(f"unknown outcome {name!r}; expected one of {sorted(OUTCOME_CODES)}") from None


@dataclass
class PairData:
    """Judged pairs as indices into a response-feature matrix.

    ``feat`` is shared, never copied: callers holding a big matrix of response
    features pass it once and describe pairs with ``ia``/``ib`` row indices.

    Attributes:
        feat: ``(R, D)`` float32 features, one row per response.
        ia, ib: ``(n,)`` int64 rows of response A and response B of each pair.
        outcome: ``(n,)`` int8 codes ``A_WINS``, ``B_WINS``, ``TIE``, ``BOTH_BAD``.
        strength: ``(n,)`` int8 judgment strength 0-3 (0 = not given).
        group: ``(n,)`` group keys (e.g. a prompt hash) used for splits; optional.
        length: ``(R,)`` response lengths (characters) for the length baseline; optional.
    """

    feat: np.ndarray
    ia: np.ndarray
    ib: np.ndarray
    outcome: np.ndarray
    strength: np.ndarray | None = None
    group: np.ndarray | None = None
    length: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.ia = np.asarray(self.ia, dtype=np.int64)
        self.ib = np.asarray(self.ib, dtype=np.int64)
        self.outcome = np.asarray(self.outcome, dtype=np.int8)
        n = len(self.ia)
        self.strength = (np.zeros(n, dtype=np.int8) if self.strength is None
                         else np.nan_to_num(np.asarray(self.strength, dtype=float)).astype(np.int8))
        if len(self.ib) != n or len(self.outcome) != n or len(self.strength) != n:
            raise ValueError("ia, ib, outcome and strength must have the same length")
        if self.group is not None and len(self.group) != n:
            raise ValueError("group must have one key per pair")
        if self.length is not None and len(self.length) != len(self.feat):
            raise ValueError("length must have one entry per feature row (response)")

    def __len__(self) -> int:
        return len(self.ia)

    @classmethod
    def from_arrays(cls, x_a: np.ndarray, x_b: np.ndarray, outcome, strength=None, group=None,
                    len_a=None, len_b=None) -> "PairData":
        """Build from per-pair feature arrays (stacks them once into ``feat``)."""
        n = len(x_a)
        feat = np.concatenate([np.asarray(x_a, np.float32), np.asarray(x_b, np.float32)])
        length = None if len_a is None else np.concatenate([np.asarray(len_a), np.asarray(len_b)])
        return cls(feat, np.arange(n), np.arange(n, 2 * n), outcome, strength, group, length)

    def subset(self, rows) -> "PairData":
        """Pairs selected by a boolean mask or index array; ``feat`` is shared."""
        rows = np.asarray(rows)
        return replace(self, ia=self.ia[rows], ib=self.ib[rows], outcome=self.outcome[rows],
                       strength=self.strength[rows],
                       group=None if self.group is None else np.asarray(self.group)[rows])

    def swapped(self) -> "PairData":
        """The same pairs with A and B exchanged (outcomes flipped accordingly)."""
        out = self.outcome.copy()
        out[self.outcome == A_WINS] = B_WINS
        out[self.outcome == B_WINS] = A_WINS
        return replace(self, ia=self.ib, ib=self.ia, outcome=out)
