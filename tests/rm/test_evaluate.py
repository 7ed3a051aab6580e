"""Held-out metrics (``rm.evaluate``): what each count counts."""

from __future__ import annotations

import numpy as np

from rm.data import A_WINS, B_WINS, BOTH_BAD, TIE, PairData
from rm.evaluate import metrics_from_rewards


def test_the_held_out_counts_are_of_judgments_not_pairs():
    """``n_pairs`` was ``len(data)``: one row per judgment, both-bad included. A tester saw n_pairs=26 where
    the Reward model page said "tested on 20 held-out judgments … 12 decisive pairs"."""
    # Two pairs (responses 0-1 and 2-3): three votes on the first, two on the second, then both-bad and a tie.
    data = PairData(np.zeros((4, 1), np.float32), ia=[0, 0, 0, 2, 2, 2, 0], ib=[1, 1, 1, 3, 3, 3, 1],
                    outcome=[A_WINS, A_WINS, B_WINS, B_WINS, B_WINS, BOTH_BAD, TIE],
                    length=np.array([5, 3, 4, 6]))
    rewards = np.array([[1.0, 0.0, 0.0, 1.0]], np.float32)  # prefers 0 over 1 and 3 over 2
    metrics = metrics_from_rewards(rewards, data).to_dict()
    assert "n_pairs" not in metrics
    assert (metrics["n_judgments"], metrics["n_decisive"], metrics["n_ties"], metrics["n_both_bad"]) == (7, 5, 1, 1)
    assert metrics["accuracy"] == 4 / 5  # per decisive judgment: A, A right and B wrong on pair 1; B, B right
