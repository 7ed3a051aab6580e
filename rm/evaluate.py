"""Held-out evaluation of reward models against human judgments.

Definitions (all on held-out pairs; ``p`` is the ensemble's P(A ≻ B) =
σ(mean member reward gap), temperature included):

- ``accuracy``: share of decisive pairs (A or B won) where the winner gets the
  higher reward; exact ties in reward count one half. Ties and both-bad are excluded.
- ``log_loss``: mean -log P(winner ≻ loser) over decisive pairs (tie mass ignored).
- ``ece``: expected calibration error over 10 equal-width bins of predicted
  P(A ≻ B); NaN without decisive pairs. Each decisive pair enters in both
  orientations ((p, A won) and (1-p, B won)), so the figure does not depend on
  which response is called A.
  ECE = Σ_bins (count/total) · |mean predicted - observed frequency|.
- ``length_baseline_accuracy``: accuracy of the better of "longer wins" and
  "shorter wins" (equal lengths count one half); ``length_longer_wins_accuracy``
  is the "longer wins" figure itself.
- ``reward_length_spearman``: Spearman correlation between reward and length
  over the distinct responses of the held-out pairs (the reward-hacking signal).
- ``ensemble_prob_std`` / ``ensemble_reward_std``: mean over pairs (responses)
  of the standard deviation across members of P(A ≻ B) (of the reward).

:func:`vote_correctness` gives the per-judgment terms of ``accuracy``, for paired
comparisons of two models on the same pairs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from rm.data import A_WINS, B_WINS, BOTH_BAD, TIE, PairData
from rm.heads import Ensemble, pair_probabilities

N_BINS = 10


@dataclass
class CalibrationBin:
    """One reliability-diagram bin: mean predicted P, observed frequency, count."""

    lower: float
    upper: float
    predicted: float
    observed: float
    count: int


@dataclass
class Metrics:
    """Held-out figures (see the module docstring). ``to_dict`` is JSON-serialisable.

    The counts are of rows of the data, one per judgment (several judgments can share one pair):
    ``n_judgments`` all of them, ``n_decisive`` those with a winner (what ``accuracy`` averages over),
    ``n_ties`` and ``n_both_bad`` the rest. (Metrics stored before it was named for what it counts
    call ``n_judgments`` ``n_pairs``.)
    """

    n_judgments: int
    n_decisive: int
    n_ties: int
    n_both_bad: int
    accuracy: float
    log_loss: float
    ece: float
    length_baseline_accuracy: float
    length_longer_wins_accuracy: float
    reward_length_spearman: float
    ensemble_prob_std: float
    ensemble_reward_std: float
    calibration: list[CalibrationBin] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain dict of floats/ints (calibration bins as a list of dicts)."""
        return asdict(self)

    def summary(self) -> dict:
        """The scalar figures only (no calibration bins)."""
        d = self.to_dict()
        d.pop("calibration")
        return d


def calibration_bins(p: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> tuple[float, list[CalibrationBin]]:
    """ECE and equal-width bins for predicted probabilities ``p`` of binary events ``y``."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    which = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    # Undefined without predictions (like accuracy and log loss), not a perfect 0.
    bins, ece = [], (0.0 if len(p) else float("nan"))
    for b in range(n_bins):
        sel = which == b
        c = int(sel.sum())
        pred = float(p[sel].mean()) if c else float("nan")
        obs = float(y[sel].mean()) if c else float("nan")
        if c:
            ece += c / len(p) * abs(pred - obs)
        bins.append(CalibrationBin(b / n_bins, (b + 1) / n_bins, pred, obs, c))
    return float(ece), bins


def _nan_to_none(bins: list[CalibrationBin]) -> list[CalibrationBin]:
    for b in bins:
        if b.predicted != b.predicted:
            b.predicted = None
            b.observed = None
    return bins


def _winner_gaps(r: np.ndarray, data: PairData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The decisive rows' mask, their mean reward gap A − B and that gap seen from the winner (float64)."""
    decisive = (data.outcome == A_WINS) | (data.outcome == B_WINS)
    ia, ib = data.ia[decisive], data.ib[decisive]
    gap = (r[:, ia].mean(0) - r[:, ib].mean(0)).astype(np.float64)
    return decisive, gap, np.where(data.outcome[decisive] == A_WINS, gap, -gap)


def _as_members(member_rewards: np.ndarray) -> np.ndarray:
    r = np.asarray(member_rewards, dtype=np.float32)
    return r[None, :] if r.ndim == 1 else r


def vote_correctness(member_rewards: np.ndarray, data: PairData) -> np.ndarray:
    """Per row of ``data``: 1 where the winner gets the higher mean reward, 0 where the loser does,
    0.5 for an exact tie in reward, NaN for rows that are not decisive (ties, both-bad).

    ``accuracy`` is the mean over decisive rows.
    """
    decisive, _, win_gap = _winner_gaps(_as_members(member_rewards), data)
    out = np.full(len(data), np.nan)
    out[decisive] = (win_gap > 0) + 0.5 * (win_gap == 0)
    return out


def correct_votes(ensemble: Ensemble, data: PairData) -> np.ndarray:
    """:func:`vote_correctness` of ``ensemble`` on ``data`` (responses scored once)."""
    return vote_correctness(_member_rewards(ensemble, data), data)


def metrics_from_rewards(member_rewards: np.ndarray, data: PairData) -> Metrics:
    """Metrics from per-member rewards ``(M, R)`` aligned with ``data.feat`` rows.

    Use this for models that are not an ``Ensemble`` (e.g. a fine-tuned
    encoder gives ``M = 1``).
    """
    from scipy.stats import spearmanr

    r = _as_members(member_rewards)
    decisive, gap, win_gap = _winner_gaps(r, data)
    ia, ib = data.ia[decisive], data.ib[decisive]
    a_won = data.outcome[decisive] == A_WINS
    accuracy = float(np.mean((win_gap > 0) + 0.5 * (win_gap == 0))) if len(win_gap) else float("nan")
    log_loss = float(np.mean(np.logaddexp(0.0, -win_gap))) if len(win_gap) else float("nan")
    p_a = 1.0 / (1.0 + np.exp(-gap))
    ece, bins = calibration_bins(np.concatenate([p_a, 1 - p_a]),
                                 np.concatenate([a_won, ~a_won]).astype(float))

    longer = shorter_best = spearman = float("nan")
    if data.length is not None and len(ia):
        la, lb = data.length[ia].astype(float), data.length[ib].astype(float)
        lw = np.where(a_won, la - lb, lb - la)
        longer = float(np.mean((lw > 0) + 0.5 * (lw == 0)))
        shorter_best = max(longer, 1.0 - longer)
    if data.length is not None and len(data):
        rows = np.unique(np.concatenate([data.ia, data.ib]))
        mean_r = r[:, rows].mean(0)
        if len(rows) > 2 and np.ptp(data.length[rows]) > 0 and np.ptp(mean_r) > 0:
            spearman = float(spearmanr(mean_r, data.length[rows]).statistic)

    all_p = pair_probabilities(r, data.ia, data.ib) if len(data) else np.zeros((r.shape[0], 0))
    rows = np.unique(np.concatenate([data.ia, data.ib])) if len(data) else np.zeros(0, int)
    return Metrics(
        n_judgments=int(len(data)),
        n_decisive=int(decisive.sum()),
        n_ties=int((data.outcome == TIE).sum()),
        n_both_bad=int((data.outcome == BOTH_BAD).sum()),
        accuracy=accuracy,
        log_loss=log_loss,
        ece=ece,
        length_baseline_accuracy=shorter_best,
        length_longer_wins_accuracy=longer,
        reward_length_spearman=spearman,
        ensemble_prob_std=float(all_p.std(axis=0).mean()) if all_p.size else float("nan"),
        ensemble_reward_std=float(r[:, rows].std(axis=0).mean()) if len(rows) else float("nan"),
        calibration=_nan_to_none(bins),
    )


def _member_rewards(ensemble: Ensemble, data: PairData) -> np.ndarray:
    rows = np.unique(np.concatenate([data.ia, data.ib]))
    r = np.zeros((ensemble.n_members, len(data.feat)), dtype=np.float32)
    if len(rows):
        r[:, rows] = ensemble.member_rewards(data.feat[rows])
    return r


def evaluate(ensemble: Ensemble, data: PairData) -> Metrics:
    """Score ``data``'s responses once with ``ensemble`` and compute ``Metrics``."""
    return metrics_from_rewards(_member_rewards(ensemble, data), data)


def evaluate_with_votes(ensemble: Ensemble, data: PairData) -> tuple[Metrics, np.ndarray]:
    """:func:`evaluate` and :func:`correct_votes` from one scoring of ``data``'s responses."""
    r = _member_rewards(ensemble, data)
    return metrics_from_rewards(r, data), vote_correctness(r, data)
