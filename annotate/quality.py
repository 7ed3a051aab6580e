"""Annotator and data quality: agreement, bias and self-consistency metrics.

The module has two layers:

* pure functions over plain values (:func:`cohen_kappa`, :func:`krippendorff_alpha`,
  :func:`flip_rate`, :func:`left_rate`, :func:`longer_wins_rate`,
  :func:`calibration_bins`, :func:`flags_for`...), unit-tested on hand-computed cases;
* service functions that read the running counts of :mod:`annotate.rollups` (kept in
  step with every judgment write; whole UTC days) plus the raw judgments of the
  partial days at a period's edges, and feed the pure functions:
  :func:`annotator_quality` and the adaptive-overlap hook
  :func:`extend_overlap_if_needed`.

A period's figures cover the judgments *made* in it; agreement (majority, κ with
others, α) compares each of them with the other annotators' live votes on the
same comparison, whenever those were made.

Definitions (every rate is over *active* judgments by annotators; probes are
excluded except from the flip rate):

* **Choices** are canonical (``a``, ``b``, ``tie``, ``both_bad``). For
  Krippendorff's α ordinal, ties are the middle category ``a < tie < b`` and
  ``both_bad`` is *missing* (it says nothing about which response is better);
  α nominal treats all four choices as categories of their own.
* **Cohen's κ** is nominal over the four choices, on the comparisons two
  annotators share. An annotator's "κ with others" pools their contingency
  tables against every other annotator into one table.
* **Majority agreement** is leave-one-out: the annotator's choice against the
  strict plurality of the *other* annotators' choices on the same comparison
  (comparisons where the others tie for first place are left out).
* **Gold accuracy**: share of judgments on gold pairs equal to the gold answer.
* **Model agreement**: among decisive (a/b) judgments on comparisons where the
  scoring model is confident (``|model_p_a - 0.5| >= MODEL_CONFIDENCE``), the
  share that picks the model's favourite.
* **Flip rate**: a probe re-shows a pair the annotator judged, sides swapped;
  a flip is a probe whose canonical choice differs from the original's.
* **Left rate**: among a/b choices, the share that picked the response shown on
  the left. **Longer-wins rate**: among a/b choices on pairs of unequal length,
  the share that picked the longer response (characters).
* **Speed**: median time per judgment divided by the pair's length (prompt not
  counted: both responses' characters), in ms per 1,000 characters; and the
  Pearson correlation between time and length (people who read take longer
  on longer pairs; a speed-clicker's time does not follow length). Medians are
  read off log-scale histograms (exact to within one bucket, about 6 %).

Flag thresholds live in :class:`Thresholds` (one place).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
from sqlalchemy import Float, Integer, String, and_, case, cast, func, literal, null, or_, select, text, true, union_all, update
from sqlalchemy.orm import Session, aliased

from annotate import rollups
from annotate.accounts import Actor, require_admin
from annotate.ingest import majority
from annotate.models import (
    AnnotatorDay,
    AnnotatorHistogram,
    AnnotatorVotes,
    Choice,
    Comparison,
    ComparisonStatus,
    ComparisonVotes,
    Judgment,
    JudgmentSource,
    JudgmentState,
    User,
)

CHOICES: tuple[str, ...] = ("a", "b", "tie", "both_bad")
ORDINAL_ORDER: tuple[str, ...] = ("a", "tie", "b")
"""α ordinal's value domain: ties in the middle; ``both_bad`` is missing."""
MODEL_CONFIDENCE = 0.3
"""The model is confident when ``|model_p_a - 0.5| >= MODEL_CONFIDENCE``."""


@dataclass(frozen=True)
class Thresholds:
    """When an annotator is flagged. The one place these numbers live.

    Each flag also needs a minimum number of observations so that a new
    annotator is not flagged on noise.
    """

    left_rate_low: float = 0.35
    left_rate_high: float = 0.65
    left_min_n: int = 20
    left_binomial_p: float = 0.01
    """Left-side bias also needs a two-sided binomial test against 0.5 below this p."""
    gold_min_accuracy: float = 0.7
    gold_min_n: int = 5
    gold_binomial_p: float = 0.05
    """Low gold accuracy also needs a one-sided binomial test against ``gold_min_accuracy`` below this p:
    on 5 gold pairs an annotator who is right 85 % of the time scores under 70 % one time in six."""
    kappa_min: float = 0.2
    kappa_min_shared: int = 20
    """Pairings of the annotator's vote with another annotator's vote on the same comparison
    (what the pooled κ is computed over), not comparisons: 7 comparisons at overlap 4 give 21."""
    flip_max: float = 0.3
    flip_min_n: int = 5
    flip_binomial_p: float = 0.05
    """Flipping also needs a one-sided binomial test against ``flip_max`` below this p."""
    speed_min_ms_per_1k_chars: float = 3000.0
    """Reading 1,000 characters of two responses in under 3 s is not reading."""
    speed_min_n: int = 20
    overlap_gold_accuracy: float = 0.7
    """Adaptive overlap: a judgment by someone whose gold accuracy is below this gets a second opinion."""
    overlap_gold_min_n: int = 5


THRESHOLDS = Thresholds()

FLAG_TEXT = {
    "left_bias": "picks one side",
    "gold": "low gold accuracy",
    "low_kappa": "low agreement with others",
    "flips": "inconsistent on repeats",
    "speed": "too fast for the text length",
}



def _percent_interval(k: int, n: int) -> str:
    low, high = wilson_interval(k, n)
    return f"{k / n:.0%}, 95% interval {low:.0%}–{high:.0%}"


def flag_evidence(stats: AnnotatorStats, flag: str) -> str:
    """What a flag (a key of :data:`FLAG_TEXT`) rests on, in words with counts: "low gold accuracy
    (3 of 12 correct: 25%, 95% interval 9%–53%)"."""
    s = stats
    detail = {
        "left_bias": lambda: f"left {s.n_left} of {s.n_decisive} decisive: {_percent_interval(s.n_left, s.n_decisive)}",
        "gold": lambda: f"{s.n_gold_correct} of {s.n_gold} correct: {_percent_interval(s.n_gold_correct, s.n_gold)}",
        "low_kappa": lambda: f"κ {s.kappa:.2f} over {s.kappa_shared} pairings with others' votes",
        "flips": lambda: f"{s.n_flips} of {s.n_probes} repeats answered differently: "
                         f"{_percent_interval(s.n_flips, s.n_probes)}",
        "speed": lambda: f"median {s.median_ms_per_1k_chars:,.0f} ms per 1,000 characters over {s.n_timed} timed",
    }[flag]
    return f"{FLAG_TEXT[flag]} ({detail()})"


# --------------------------------------------------------------------------- pure metrics


def kappa_from_table(table: Mapping[tuple[str, str], float]) -> float | None:
    """Cohen's κ from a contingency table ``{(rater1_choice, rater2_choice): count}``.

    None when the table is empty; 1.0 when both raters always used the same
    single category (no disagreement is possible to correct for).
    """
    n = float(sum(table.values()))
    if n <= 0:
        return None
    cats = sorted({c for pair in table for c in pair})
    observed = sum(v for (x, y), v in table.items() if x == y) / n
    row = {c: sum(v for (x, _), v in table.items() if x == c) / n for c in cats}
    col = {c: sum(v for (_, y), v in table.items() if y == c) / n for c in cats}
    expected = sum(row[c] * col[c] for c in cats)
    if expected >= 1.0:
        return 1.0 if observed >= 1.0 else 0.0
    return (observed - expected) / (1.0 - expected)


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Cohen's κ (nominal) between two raters' labels on the same items."""
    if len(first) != len(second):
        raise ValueError("both raters need a label for every item")
    table: dict[tuple[str, str], int] = {}
    for x, y in zip(first, second):
        table[(x, y)] = table.get((x, y), 0) + 1
    return kappa_from_table(table)


def value_counts_matrix(units: Iterable[Mapping[str, int]], level: str = "ordinal") -> np.ndarray:
    """Per-unit choice counts as the ``(units, values)`` matrix the ``krippendorff`` package takes.

    ``ordinal`` uses columns ``a, tie, b`` (``both_bad`` dropped as missing);
    ``nominal`` uses ``a, b, tie, both_bad``.
    """
    order = ORDINAL_ORDER if level == "ordinal" else CHOICES
    return np.array([[u.get(c, 0) for c in order] for u in units], dtype=float).reshape(-1, len(order))


def krippendorff_alpha(value_counts: np.ndarray, level: str = "ordinal") -> float | None:
    """Krippendorff's α from a ``(units, values)`` count matrix (see :func:`value_counts_matrix`).

    None when fewer than two units carry two or more values, or when every
    pairable value is the same (α is undefined without variation).
    """
    import krippendorff

    vc = np.asarray(value_counts, dtype=float)
    if vc.ndim != 2 or vc.shape[0] == 0:
        return None
    pairable = vc[vc.sum(axis=1) >= 2]
    if len(pairable) < 2 or np.count_nonzero(pairable.sum(axis=0)) < 2:
        return None
    return float(krippendorff.alpha(value_counts=pairable, level_of_measurement=level))


def flip_rate(pairs: Iterable[tuple[str, str]]) -> tuple[int, int]:
    """(flips, probes) for ``(original_choice, probe_choice)`` pairs in canonical terms."""
    flips = n = 0
    for original, probe in pairs:
        n += 1
        flips += original != probe
    return flips, n


def left_rate(judgments: Iterable[tuple[str, bool | None]]) -> tuple[int, int]:
    """(picked left, decisive) for ``(choice, a_on_left)``; ties, both-bad and unknown sides are left out."""
    left = n = 0
    for choice, a_on_left in judgments:
        if choice not in ("a", "b") or a_on_left is None:
            continue
        n += 1
        left += (choice == "a") == a_on_left
    return left, n


def longer_wins_rate(judgments: Iterable[tuple[str, int, int]]) -> tuple[int, int]:
    """(picked longer, decisive on unequal lengths) for ``(choice, len_a, len_b)``."""
    longer = n = 0
    for choice, len_a, len_b in judgments:
        if choice not in ("a", "b") or len_a == len_b:
            continue
        n += 1
        longer += (choice == "a") == (len_a > len_b)
    return longer, n


def rate(k: int, n: int) -> float | None:
    return k / n if n else None


def binomial_p(k: int, n: int, p: float = 0.5, alternative: str = "two-sided") -> float | None:
    """Exact binomial test p-value of ``k`` successes in ``n`` trials (``alternative``: ``two-sided``,
    ``less`` or ``greater``, as :func:`scipy.stats.binomtest`)."""
    if n <= 0:
        return None
    from scipy.stats import binom, binomtest

    if alternative == "less":  # what binomtest computes, without its overhead (~1 ms a call)
        return float(binom.cdf(k, n, p))
    if alternative == "greater":
        return float(binom.sf(k - 1, n, p))
    return float(binomtest(k, n, p).pvalue)


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval of a rate ``k / n`` (95 % at the default ``z``); None when ``n`` is 0.

    Unlike ``k/n ± z·se`` it stays inside [0, 1] and is not zero-width at 0 or n successes:
    3 of 3 gives 44-100 %, 30 of 30 gives 89-100 %.
    """
    if n <= 0:
        return None
    phat = k / n
    denominator = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denominator
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class CalibrationBin:
    lower: float
    upper: float
    predicted: float | None
    observed: float | None
    count: int


def calibration_bins(predicted: Sequence[float], observed: Sequence[float], n_bins: int = 10) -> list[CalibrationBin]:
    """Equal-width reliability bins: mean predicted probability vs observed frequency.

    A prediction of exactly 1.0 falls in the last bin. Empty bins have
    ``predicted``/``observed`` None.
    """
    p = np.asarray(predicted, dtype=float)
    y = np.asarray(observed, dtype=float)
    if p.shape != y.shape:
        raise ValueError("predicted and observed need the same length")
    which = np.clip((p * n_bins).astype(int), 0, n_bins - 1) if len(p) else np.zeros(0, int)
    bins = []
    for b in range(n_bins):
        sel = which == b
        c = int(sel.sum())
        bins.append(CalibrationBin(b / n_bins, (b + 1) / n_bins, float(p[sel].mean()) if c else None,
                                   float(y[sel].mean()) if c else None, c))
    return bins


def pearson_from_sums(n: float, sx: float, sy: float, sxx: float, syy: float, sxy: float) -> float | None:
    """Pearson correlation from running sums (what SQL aggregates give)."""
    if n < 3:
        return None
    vx, vy = n * sxx - sx * sx, n * syy - sy * sy
    if vx <= 0 or vy <= 0:
        return None
    return (n * sxy - sx * sy) / math.sqrt(vx * vy)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation, None with fewer than 3 points or no variation."""
    if len(x) < 3 or np.ptp(np.asarray(x, float)) == 0 or np.ptp(np.asarray(y, float)) == 0:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


# --------------------------------------------------------------------------- per-annotator figures


@dataclass
class AnnotatorStats:
    """One annotator's figures over a period (counts plus derived rates)."""

    annotator_id: int
    username: str
    n: int = 0
    n_decisive: int = 0
    n_left: int = 0
    n_ties: int = 0
    n_both_bad: int = 0
    n_length_decisive: int = 0
    n_longer: int = 0
    n_gold: int = 0
    n_gold_correct: int = 0
    n_model: int = 0
    n_model_agree: int = 0
    n_majority: int = 0
    n_majority_agree: int = 0
    n_probes: int = 0
    n_flips: int = 0
    n_timed: int = 0
    median_time_ms: float | None = None
    median_ms_per_1k_chars: float | None = None
    time_length_corr: float | None = None
    kappa: float | None = None
    kappa_shared: int = 0
    active: bool = True
    """Whether the account is active (a deactivated annotator's judgments still count)."""
    flags: list[str] = field(default_factory=list)

    @property
    def left_rate(self) -> float | None:
        return rate(self.n_left, self.n_decisive)

    @property
    def left_p_value(self) -> float | None:
        return binomial_p(self.n_left, self.n_decisive)

    @property
    def longer_rate(self) -> float | None:
        return rate(self.n_longer, self.n_length_decisive)

    @property
    def tie_rate(self) -> float | None:
        return rate(self.n_ties, self.n)

    @property
    def both_bad_rate(self) -> float | None:
        return rate(self.n_both_bad, self.n)

    @property
    def gold_accuracy(self) -> float | None:
        return rate(self.n_gold_correct, self.n_gold)

    @property
    def model_agreement(self) -> float | None:
        return rate(self.n_model_agree, self.n_model)

    @property
    def majority_agreement(self) -> float | None:
        return rate(self.n_majority_agree, self.n_majority)

    @property
    def flip_rate(self) -> float | None:
        return rate(self.n_flips, self.n_probes)

    def as_row(self) -> dict:
        """A flat dict for tables (rates rounded for display by the caller).

        Every rate comes with the count it is over (``*_n``, ``kappa_pairings``, ``probes``), and the
        rates flags are read from with their 95 % Wilson interval (``*_low``, ``*_high``).
        """
        return {
            "annotator": self.username, "active": self.active, "judgments": self.n, "flags": ", ".join(self.flags),
            "kappa": self.kappa, "kappa_pairings": self.kappa_shared,
            "majority_agreement": self.majority_agreement, "majority_n": self.n_majority,
            **_interval_columns("majority", self.n_majority_agree, self.n_majority),
            "gold_accuracy": self.gold_accuracy, "gold_n": self.n_gold,
            **_interval_columns("gold", self.n_gold_correct, self.n_gold),
            "model_agreement": self.model_agreement, "model_n": self.n_model,
            "flip_rate": self.flip_rate, "probes": self.n_probes,
            **_interval_columns("flip", self.n_flips, self.n_probes),
            "decisive_n": self.n_decisive,
            "left_rate": self.left_rate, "longer_rate": self.longer_rate, "tie_rate": self.tie_rate,
            "both_bad_rate": self.both_bad_rate, "median_time_s": (self.median_time_ms / 1000
                                                                   if self.median_time_ms is not None else None),
            "ms_per_1k_chars": self.median_ms_per_1k_chars, "time_length_corr": self.time_length_corr,
        }


def _interval_columns(name: str, k: int, n: int) -> dict[str, float | None]:
    low, high = wilson_interval(k, n) or (None, None)
    return {f"{name}_low": low, f"{name}_high": high}


def flags_for(stats: AnnotatorStats, thresholds: Thresholds = THRESHOLDS) -> list[str]:
    """The flags (keys of :data:`FLAG_TEXT`) this annotator's figures raise."""
    t, flags = thresholds, []
    left = stats.left_rate
    if (stats.n_decisive >= t.left_min_n and left is not None
            and not t.left_rate_low <= left <= t.left_rate_high):
        # A strong bias over many judgments has a p-value that underflows to exactly 0.0.
        p_value = binomial_p(stats.n_left, stats.n_decisive)
        if p_value is not None and p_value < t.left_binomial_p:
            flags.append("left_bias")
    # A rate past its threshold on a handful of observations is often chance: gold and flips also need
    # a one-sided binomial test at the threshold, as the side bias does.
    if (stats.n_gold >= t.gold_min_n and (stats.gold_accuracy or 0.0) < t.gold_min_accuracy
            and binomial_p(stats.n_gold_correct, stats.n_gold, t.gold_min_accuracy, "less") < t.gold_binomial_p):
        flags.append("gold")
    if stats.kappa_shared >= t.kappa_min_shared and stats.kappa is not None and stats.kappa < t.kappa_min:
        flags.append("low_kappa")
    if (stats.n_probes >= t.flip_min_n and (stats.flip_rate or 0.0) > t.flip_max
            and binomial_p(stats.n_flips, stats.n_probes, t.flip_max, "greater") < t.flip_binomial_p):
        flags.append("flips")
    if (stats.n_timed >= t.speed_min_n and stats.median_ms_per_1k_chars is not None
            and stats.median_ms_per_1k_chars < t.speed_min_ms_per_1k_chars):
        flags.append("speed")
    return flags


@dataclass
class QualityReport:
    """What the annotator page shows for one period."""

    since: datetime | None
    until: datetime | None
    annotators: list[AnnotatorStats]
    pair_kappas: list[tuple[str, str, float | None, int]]
    """(annotator, other annotator, κ, shared comparisons) for every pair that shares one."""
    alpha_ordinal: float | None
    alpha_nominal: float | None
    overall: AnnotatorStats
    thresholds: Thresholds = THRESHOLDS

    @property
    def flagged(self) -> list[AnnotatorStats]:
        return [a for a in self.annotators if a.flags]


def without_jit(session: Session) -> None:
    """Tune this PostgreSQL transaction for one-off reporting aggregates.

    JIT off: it spends seconds compiling expressions that then run for a fraction of
    that. More ``work_mem``: hash aggregates and sorts of a million narrow rows stay in
    memory instead of spilling to disk. Both are ``SET LOCAL`` (this transaction only).
    """
    if session.bind.dialect.name == "postgresql":
        session.execute(text("SET LOCAL jit = off"))
        session.execute(text("SET LOCAL work_mem = '128MB'"))


def _live(j=Judgment):
    return rollups.live(j)


def _in_period(j, since: datetime | None, until: datetime | None):
    return rollups.in_period(j, since, until)


def _n(cond):
    return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)


PAIR_SAMPLE = 200_000
"""The pairwise κ heatmap uses about this many of the most recent judgments (by id) in the
period; the per-annotator κ and the agreement figures use all of them."""
MODEL_SAMPLE = 200_000
"""Agreement with the model uses about this many of the most recent judgments in the period.
It reads the comparisons' current ``model_p_a``, which every retrain rewrites, so it cannot be a
running count; over all of a million judgments the join costs ~0.4 s on the 2-core bench machine."""


def _recent_cutoff(session: Session, sample: int) -> int | None:
    """A judgment id below which judgments are left out of a sample of about ``sample`` recent ones.

    Ids grow with time, so ``max(id) - sample`` is an O(1) cut (the primary key's end).
    """
    top = session.scalar(select(func.max(Judgment.id)))
    return None if top is None or top <= sample else top - sample


RAW_EDGE_MAX = timedelta(hours=12)
"""A period edge is read raw when it is this short; otherwise its whole day comes from the rollups and the
part outside the period is read raw and subtracted, so no edge reads more than half a day of judgments."""


def split_period(since: datetime | None, until: datetime | None):
    """``[since, until)`` as whole UTC days read from the rollups plus signed raw edges.

    Returns ``((first_day, end_day), [(lo, hi, sign), ...])``: days ``first_day <= day < end_day``
    (None: open), and intervals of judgments to add (sign 1) or subtract (sign -1); or
    ``(None, [(since, until, 1)])`` for a period short enough to read raw.
    """
    def floor_day(t: datetime) -> datetime:
        t = t.astimezone(timezone.utc)
        return t.replace(hour=0, minute=0, second=0, microsecond=0)

    if since is not None and until is not None and until - since <= RAW_EDGE_MAX:
        return None, [(since, until, 1)]
    edges = []
    first = None
    if since is not None:
        first = floor_day(since)
        if since - first > RAW_EDGE_MAX:
            first += timedelta(days=1)
            edges.append((since, first, 1))
        elif since > first:
            edges.append((first, since, -1))
    end = None
    if until is not None:
        end = floor_day(until)
        if until - end > RAW_EDGE_MAX:
            end += timedelta(days=1)
            edges.append((until, end, -1))
        elif until > end:
            edges.append((end, until, 1))
    return (first.date() if first is not None else None, end.date() if end is not None else None), edges


def _day_range(column, days):
    first, end = days
    return and_(true(), *([column >= first] if first is not None else []),
                *([column < end] if end is not None else []))


def annotator_quality(session: Session, *, actor: Actor, since: datetime | None = None,
                      until: datetime | None = None, thresholds: Thresholds = THRESHOLDS,
                      pair_sample: int | None = PAIR_SAMPLE, model_sample: int | None = MODEL_SAMPLE,
                      use_rollups: bool = True) -> QualityReport:
    """Every annotator's agreement, bias and consistency figures over ``[since, until)`` (admin only).

    The figures cover the annotators' live judgments made in the period. Agreement (majority,
    κ with others, α) compares each of them with the *other* annotators' live votes on the same
    comparison, whenever those were made. Whole UTC days are read from the running counts in
    :mod:`annotate.rollups`; the partial days at the period's edges, and everything when
    ``use_rollups`` is False (the from-scratch recount the tests compare against), from the
    judgments with the same SQL. Agreement with the model reads the most recent ``model_sample``
    judgments, the pairwise κ heatmap the most recent ``pair_sample`` (None: all of them).
    """
    require_admin(session, actor)
    without_jit(session)
    dialect = session.bind.dialect.name
    users = session.execute(select(User.id, User.username, User.active)).all()
    names = {uid: name for uid, name, _ in users}
    active = {uid: bool(is_active) for uid, _, is_active in users}
    days, edges = split_period(since, until) if use_rollups else (None, [(since, until, 1)])
    votes = ComparisonVotes.__table__ if use_rollups else rollups.votes_from_scratch()
    profiles: Counter = Counter()
    hist_counts: Counter = Counter()
    day_rows = []
    if days is not None:
        av, ad, ah = AnnotatorVotes, AnnotatorDay, AnnotatorHistogram
        keys = [av.annotator_id, av.choice, *[getattr(av, f"o_{c}") for c in CHOICES]]
        for uid, choice, *others, n in session.execute(select(*keys, func.sum(av.n))
                                                       .where(_day_range(av.day, days)).group_by(*keys)).all():
            profiles[(uid, Choice(choice).value, *others)] += int(n or 0)
        day_rows += session.execute(select(ad.annotator_id, *[func.sum(getattr(ad, k)) for k in rollups.DAY_SUMS])
                                    .where(_day_range(ad.day, days)).group_by(ad.annotator_id)).all()
        hkeys = [ah.annotator_id, ah.kind, ah.bucket]
        for *key, n in session.execute(select(*hkeys, func.sum(ah.n)).where(_day_range(ah.day, days))
                                       .group_by(*hkeys)).all():
            hist_counts[tuple(key)] += int(n or 0)
    for lo, hi, sign in edges:
        edge_profiles, edge_sums, edge_hists = _edge_rows(session, dialect, votes, lo, hi)
        for uid, choice, *others, n in edge_profiles:
            profiles[(uid, Choice(choice).value, *others)] += sign * int(n)
        for *key, n in edge_hists:
            hist_counts[tuple(key)] += sign * int(n)
        day_rows += [(uid, *[sign * float(v or 0.0) for v in values]) for uid, *values in edge_sums]

    stats: dict[int, AnnotatorStats] = {}
    sums: dict[int, list[float]] = {}

    def stats_of(uid: int) -> AnnotatorStats:
        if uid not in stats:
            stats[uid] = AnnotatorStats(annotator_id=uid, username=names.get(uid, "?"), active=active.get(uid, True))
        return stats[uid]

    for uid, *values in day_rows:
        s = stats_of(uid)
        row = dict(zip(rollups.DAY_SUMS, values))
        s.n += int(row["n"] or 0)
        s.n_decisive += int(row["n_sided"] or 0)
        for key in ("n_left", "n_ties", "n_both_bad", "n_gold", "n_gold_correct", "n_length_decisive", "n_longer",
                    "n_timed", "n_probes", "n_flips"):
            setattr(s, key, getattr(s, key) + int(row[key] or 0))
        sums[uid] = [a + float(row[k] or 0.0) for a, k in zip(sums.get(uid, [0.0] * 5),
                                                               ("sx", "sy", "sxx", "syy", "sxy"))]
    pooled: dict[int, dict[tuple[str, str], float]] = {}
    coincidence_nominal = np.zeros((4, 4))
    coincidence_ordinal = np.zeros((3, 3))
    for (uid, own, *others), n in profiles.items():
        if n <= 0:
            continue
        s = stats_of(uid)
        own = Choice(own).value
        o = {ch: int(v) for ch, v in zip(CHOICES, others)}
        top = max(o.values())
        leaders = [ch for ch in CHOICES if o[ch] == top]
        if top > 0 and len(leaders) == 1:
            s.n_majority += n
            s.n_majority_agree += n if leaders[0] == own else 0
        table = pooled.setdefault(uid, {})
        for ch in CHOICES:
            if o[ch]:
                table[(own, ch)] = table.get((own, ch), 0) + n * o[ch]
        coincidence_nominal += coincidence_rows(own, o, CHOICES) * n
        if own in ORDINAL_ORDER:
            coincidence_ordinal += coincidence_rows(own, o, ORDINAL_ORDER) * n
    hists: dict[tuple[int, str], dict[int, int]] = {}
    for (uid, kind, bucket), n in hist_counts.items():
        if n > 0:
            hists.setdefault((uid, kind), {})[int(bucket)] = n
    stats = {uid: s for uid, s in stats.items() if s.n or s.n_probes}
    for uid, s in stats.items():
        s.kappa = kappa_from_table(pooled.get(uid, {}))
        s.kappa_shared = int(sum(pooled.get(uid, {}).values()))
        s.time_length_corr = pearson_from_sums(s.n_timed, *sums.get(uid, [0.0] * 5))
        s.median_time_ms = median_from_log_histogram(hists.get((uid, "time"), {}))
        s.median_ms_per_1k_chars = median_from_log_histogram(hists.get((uid, "speed"), {}))
    _add_model_agreement(session, stats, since, until,
                         _recent_cutoff(session, model_sample) if model_sample is not None else None)
    pair_kappas = _pair_kappas(session, names, since, until, pair_sample)

    annotators = sorted(stats.values(), key=lambda s: s.username)
    for s in annotators:
        s.flags = flags_for(s, thresholds)
    return QualityReport(since=since, until=until, annotators=annotators, pair_kappas=pair_kappas,
                         alpha_ordinal=alpha_from_coincidence(coincidence_ordinal, "ordinal"),
                         alpha_nominal=alpha_from_coincidence(coincidence_nominal, "nominal"),
                         overall=_overall(annotators), thresholds=thresholds)


def _edge_rows(session: Session, dialect: str, votes, lo: datetime | None, hi: datetime | None):
    """The judgments of ``[lo, hi)`` aggregated like the rollups: (vote profiles, day sums, histogram counts).

    One statement: the period's facts are joined once (a materialised CTE on PostgreSQL) and
    grouped four ways, padded to one row shape with NULLs.
    """
    period = rollups.in_period(Judgment, lo, hi)
    facts = (rollups.judgment_facts(dialect, period, votes=votes).cte("edge")
             .prefix_with("MATERIALIZED", dialect="postgresql"))
    f = facts.c
    sums = rollups.DAY_SUMS
    null_int, null_str, null_float = cast(null(), Integer), cast(null(), String), cast(null(), Float)

    def shape(part: int, source, *, choice=None, others=None, kind=None, bucket=None, totals=None):
        return select(literal(part).label("part"), source.c.annotator_id.label("uid"),
                      choice if choice is not None else null_str,
                      *(others or [null_int] * len(CHOICES)),
                      kind if kind is not None else null_str, bucket if bucket is not None else null_int,
                      func.count().label("n"), *(totals or [null_float] * len(sums)))

    others = [f[f"o_{c}"] for c in CHOICES]
    probes = rollups.probe_facts(dialect, period).subquery()
    parts = [
        shape(0, facts, choice=f.choice, others=others).group_by(f.annotator_id, f.choice, *others),
        shape(1, facts, totals=[cast(func.sum(f[k]), Float) for k in sums]).group_by(f.annotator_id),
        shape(2, probes, totals=[cast(func.sum(probes.c[k]), Float) for k in sums]).group_by(probes.c.annotator_id),
        *[shape(3, facts, kind=literal(kind, String), bucket=f[f"{kind}_bucket"])
          .where(f[f"{kind}_bucket"].is_not(None)).group_by(f.annotator_id, f[f"{kind}_bucket"])
          for kind in ("time", "speed")],
    ]
    profile_rows, day_rows, hist_rows = [], [], []
    for part, uid, choice, *rest in session.execute(union_all(*parts)).all():
        o, (kind, bucket, n), totals = rest[:len(CHOICES)], rest[len(CHOICES):len(CHOICES) + 3], rest[-len(sums):]
        if part == 0:
            profile_rows.append((uid, choice, *o, n))
        elif part in (1, 2):
            day_rows.append((uid, *totals))
        else:
            hist_rows.append((uid, kind, bucket, n))
    return profile_rows, day_rows, hist_rows


def _add_model_agreement(session: Session, stats: dict[int, AnnotatorStats], since, until,
                         cutoff: int | None) -> None:
    """Decisive judgments on comparisons the model is confident about, and how many pick its favourite."""
    j = Judgment
    is_a, is_b = j.choice == Choice.a, j.choice == Choice.b
    p = Comparison.model_p_a
    rows = session.execute(
        select(j.annotator_id, func.count(), _n(or_(and_(is_a, p > 0.5), and_(is_b, p < 0.5))))
        .join(Comparison, Comparison.id == j.comparison_id)
        .where(_live(j), j.is_probe.is_(False), _in_period(j, since, until), or_(is_a, is_b),
               p.is_not(None), func.abs(p - 0.5) >= MODEL_CONFIDENCE,
               j.id > cutoff if cutoff is not None else true())
        .group_by(j.annotator_id)).all()
    for uid, n, agree in rows:
        if uid in stats:
            stats[uid].n_model = int(n)
            stats[uid].n_model_agree = int(agree or 0)


def coincidence_rows(own: str, others: Mapping[str, int], order: Sequence[str]) -> np.ndarray:
    """One judgment's share of Krippendorff's coincidence matrix over the values in ``order``.

    A value ``own`` in a unit whose other pairable values are ``others`` adds
    ``others[k] / (m_u - 1)`` to cell ``(own, k)``, with ``m_u`` the unit's
    pairable values (values outside ``order`` are missing).
    """
    out = np.zeros((len(order), len(order)))
    if own not in order:
        return out
    m = 1 + sum(others.get(k, 0) for k in order)
    if m < 2:
        return out
    row = order.index(own)
    for col, k in enumerate(order):
        out[row, col] = others.get(k, 0) / (m - 1)
    return out


def coincidence_from_units(value_counts: np.ndarray) -> np.ndarray:
    """The coincidence matrix of a ``(units, values)`` count matrix (for tests and small data)."""
    vc = np.asarray(value_counts, dtype=float)
    out = np.zeros((vc.shape[1], vc.shape[1]))
    for unit in vc:
        m = unit.sum()
        if m >= 2:
            out += (np.outer(unit, unit) - np.diag(unit)) / (m - 1)
    return out


def alpha_from_coincidence(coincidence: np.ndarray, level: str = "ordinal") -> float | None:
    """Krippendorff's α from a coincidence matrix whose rows/columns are ordered values.

    Same definition as the ``krippendorff`` package (nominal: δ = [c ≠ k];
    ordinal: δ = (Σ_{g=c..k} n_g − (n_c + n_k)/2)²). None without two values in use.
    """
    o = np.asarray(coincidence, dtype=float)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    if n <= 1 or np.count_nonzero(n_c) < 2:
        return None
    v = len(n_c)
    if level == "nominal":
        delta = 1.0 - np.eye(v)
    elif level == "ordinal":
        cum = np.concatenate([[0.0], np.cumsum(n_c)])
        delta = np.zeros((v, v))
        for c in range(v):
            for k in range(v):
                lo, hi = min(c, k), max(c, k)
                delta[c, k] = (cum[hi + 1] - cum[lo] - (n_c[c] + n_c[k]) / 2) ** 2
    else:
        raise ValueError("level is 'nominal' or 'ordinal'")
    expected = (np.outer(n_c, n_c) * delta).sum()
    if expected <= 0:
        return None
    return float(1.0 - (n - 1) * (o * delta).sum() / expected)


LOG_BUCKETS_PER_E = rollups.LOG_BUCKETS_PER_E


def median_from_log_histogram(hist: Mapping[int, int], per_e: int = LOG_BUCKETS_PER_E) -> float | None:
    """The median of values counted in log-scale buckets ``floor(ln(v) * per_e)``.

    The ``c`` values of a bucket are read at the middles of ``c`` equal slices of
    it (in log space); the median is the middle one of an odd count, the mean of
    the two middle ones of an even count (as ``numpy.median``). Each value read
    lies in its true value's bucket, so the result is within one bucket of the
    exact median (about 6 % at the default resolution), even when the two middle
    values are buckets apart.
    """
    buckets = [(b, hist[b]) for b in sorted(hist) if hist[b] > 0]
    total = sum(count for _, count in buckets)
    if total <= 0:
        return None

    def value_at(rank: int) -> float:
        seen = 0
        for bucket, count in buckets:
            if rank < seen + count:
                return math.exp((bucket + (rank - seen + 0.5) / count) / per_e)
            seen += count
        raise AssertionError("rank beyond the histogram")

    middle = total // 2
    if total % 2:
        return value_at(middle)
    return (value_at(middle - 1) + value_at(middle)) / 2.0


def _pair_kappas(session: Session, names: Mapping[int, str], since, until,
                 sample: int | None) -> list[tuple[str, str, float | None, int]]:
    """Cohen's κ for every pair of annotators on the comparisons they share.

    Pairs two annotators' judgments of a comparison when at least one of them was made in the period,
    as the per-annotator κ does (each pairing once), among the most recent ``sample`` judgments (by id;
    None: all of them).
    """
    j1, j2 = aliased(Judgment), aliased(Judgment)
    cutoff = _recent_cutoff(session, sample) if sample is not None else None
    recent = [j1.id > cutoff, j2.id > cutoff] if cutoff is not None else []
    rows = session.execute(
        select(j1.annotator_id, j2.annotator_id, j1.choice, j2.choice, func.count())
        .join(j2, and_(j2.comparison_id == j1.comparison_id, j2.annotator_id != j1.annotator_id))
        .where(_live(j1), _live(j2), j1.is_probe.is_(False), j2.is_probe.is_(False), *recent,
               _in_period(j1, since, until),
               or_(j2.annotator_id > j1.annotator_id, ~_in_period(j2, since, until)))
        .group_by(j1.annotator_id, j2.annotator_id, j1.choice, j2.choice)).all()
    tables: dict[tuple[int, int], dict[tuple[str, str], int]] = {}
    for a1, a2, c1, c2, n in rows:
        c1, c2 = Choice(c1).value, Choice(c2).value
        if a1 > a2:
            a1, a2, c1, c2 = a2, a1, c2, c1
        t = tables.setdefault((a1, a2), {})
        t[(c1, c2)] = t.get((c1, c2), 0) + n
    return sorted(((names.get(a1, "?"), names.get(a2, "?"), kappa_from_table(t), int(sum(t.values())))
                   for (a1, a2), t in tables.items()), key=lambda r: (r[0], r[1]))


def _overall(annotators: Sequence[AnnotatorStats]) -> AnnotatorStats:
    total = AnnotatorStats(annotator_id=0, username="(all)")
    for s in annotators:
        for key in ("n", "n_decisive", "n_left", "n_ties", "n_both_bad", "n_length_decisive", "n_longer",
                    "n_gold", "n_gold_correct", "n_model", "n_model_agree", "n_majority", "n_majority_agree",
                    "n_probes", "n_flips", "n_timed"):
            setattr(total, key, getattr(total, key) + getattr(s, key))
    return total


# --------------------------------------------------------------------------- adaptive overlap


def gold_accuracy_of(session: Session, annotator_id: int) -> tuple[int, int]:
    """(correct, judged) on gold pairs for one annotator, all time."""
    row = session.execute(
        select(_n(Judgment.choice == Comparison.gold_choice), func.count(Judgment.id))
        .join(Comparison, Comparison.id == Judgment.comparison_id)
        .where(Judgment.annotator_id == annotator_id, Judgment.was_gold.is_(True), _live(),
               Judgment.is_probe.is_(False), Comparison.gold_choice.is_not(None))).one()
    return int(row[0] or 0), int(row[1] or 0)


def needs_another_judgment(choices: Sequence[str], latest: str, model_p_a: float | None,
                           gold: tuple[int, int] | None, thresholds: Thresholds = THRESHOLDS) -> str | None:
    """Why a comparison whose judgments are ``choices`` should get one more (or None).

    ``latest`` is the newest judgment's choice; ``gold`` the newest judge's
    (correct, judged) on gold pairs.
    """
    if len(set(choices)) > 1:
        return "disagreement"
    if (model_p_a is not None and abs(model_p_a - 0.5) >= MODEL_CONFIDENCE and latest in ("a", "b")
            and (latest == "a") != (model_p_a > 0.5)):
        return "contradicts_model"
    if gold is not None:
        correct, judged = gold
        if judged >= thresholds.overlap_gold_min_n and correct / judged < thresholds.overlap_gold_accuracy:
            return "low_gold_accuracy"
    return None


def extend_overlap_if_needed(session: Session, comparison_id: int, options, *,
                             thresholds: Thresholds = THRESHOLDS) -> bool:
    """Ask for one more judgment on a comparison that just reached its overlap, when warranted.

    Raises ``overlap_target`` by one and reopens the comparison (unless late judgments
    already reach the new target) when its annotators disagree, when the newest
    judgment contradicts a confident model, or when the newest judge's gold accuracy is below
    ``thresholds.overlap_gold_accuracy``; and to one more than its judgment count when its
    imported votes leave all its votes without a majority — never beyond ``options.max_overlap``,
    never for gold or retired pairs. Returns True when it extended. Called by
    :func:`annotate.judgments.submit` in the same transaction; the update is
    conditional on the target it read, so two concurrent submits extend once.
    """
    row = session.execute(
        select(Comparison.overlap_target, Comparison.judgment_count, Comparison.status, Comparison.is_gold,
               Comparison.model_p_a).where(Comparison.id == comparison_id)).one_or_none()
    if row is None:
        return False
    target, count, status, is_gold, model_p_a = row
    if is_gold or status == ComparisonStatus.retired or count < target or target >= options.max_overlap:
        return False
    judged = session.execute(
        select(Judgment.choice, Judgment.annotator_id).where(
            Judgment.comparison_id == comparison_id, _live(), Judgment.is_probe.is_(False))
        .order_by(Judgment.id)).all()
    imported = session.scalars(select(Judgment.choice).where(
        Judgment.comparison_id == comparison_id, Judgment.state == JudgmentState.active,
        Judgment.source == JudgmentSource.imported, Judgment.is_probe.is_(False))).all()
    if not judged and not imported:
        return False
    choices = [Choice(ch).value for ch, _ in judged]
    reason, new_target = None, target + 1
    if judged:
        latest_choice, latest_annotator = choices[-1], judged[-1][1]
        reason = needs_another_judgment(choices, latest_choice, model_p_a,
                                        gold_accuracy_of(session, latest_annotator), thresholds)
    if imported and count < options.max_overlap:
        # Imported votes count in the export's majority: annotators who agree with each other, or none at all
        # (a pair back from gold or retirement), beside imported votes that split it evenly leave it without
        # one. It needs one more judgment than it has, whatever else asks for one: imported votes can be past
        # its target, where "one more than the target" completed it split.
        if majority(Counter([*choices, *(Choice(ch).value for ch in imported)])) is None:
            reason, new_target = reason or "no_majority", count + 1
    if reason is None:
        return False
    # Open unless the pair already has the judgment asked for: a judgment sent on a lease that had
    # expired is kept, so the count can be past the target it read.
    result = session.execute(
        update(Comparison)
        .where(Comparison.id == comparison_id, Comparison.overlap_target == target)
        .values(overlap_target=new_target,
                status=case((Comparison.judgment_count >= new_target, ComparisonStatus.complete),
                            else_=ComparisonStatus.open))
        .execution_options(synchronize_session=False))
    return bool(result.rowcount)


def length_rule(longer_wins_accuracy: float | None) -> str | None:
    """Which length rule the length baseline is: ``"longer wins"`` or ``"shorter wins"`` (None when unknown).

    The baseline is the better of the two on the held-out pairs; on HH-RLHF harmless the shorter response is
    the safer bet, and that direction is what a reward model exploiting length would follow."""
    if longer_wins_accuracy is None:
        return None
    return "longer wins" if longer_wins_accuracy >= 0.5 else "shorter wins"
