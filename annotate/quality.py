"""Annotator and data quality: agreement, bias and self-consistency metrics.

The module has two layers:

* pure functions over plain values (:func:`cohen_kappa`, :func:`krippendorff_alpha`,
  :func:`flip_rate`, :func:`left_rate`, :func:`longer_wins_rate`,
  :func:`calibration_bins`, :func:`flags_for`...), unit-tested on hand-computed cases;
* service functions that aggregate judgments in the database (GROUP BY in SQL, so
  a million judgments never travel to Python) and feed the pure functions:
  :func:`annotator_quality` and the adaptive-overlap hook
  :func:`extend_overlap_if_needed`.

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
  on longer pairs; a speed-clicker's time does not follow length).

Flag thresholds live in :class:`Thresholds` (one place).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from sqlalchemy import Float, and_, case, cast, func, or_, select, true, update
from sqlalchemy.orm import Session, aliased

from annotate.accounts import Actor, require_admin
from annotate.models import (
    Choice,
    Comparison,
    ComparisonStatus,
    Judgment,
    JudgmentSource,
    JudgmentState,
    Response,
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
    kappa_min: float = 0.2
    kappa_min_shared: int = 20
    flip_max: float = 0.3
    flip_min_n: int = 5
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


def binomial_p(k: int, n: int, p: float = 0.5) -> float | None:
    """Two-sided exact binomial test p-value of ``k`` successes in ``n`` trials."""
    if n <= 0:
        return None
    from scipy.stats import binomtest

    return float(binomtest(k, n, p).pvalue)


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
        """A flat dict for tables (rates rounded for display by the caller)."""
        return {
            "annotator": self.username, "judgments": self.n, "flags": ", ".join(self.flags),
            "kappa": self.kappa, "majority_agreement": self.majority_agreement,
            "gold_accuracy": self.gold_accuracy, "gold_n": self.n_gold,
            "model_agreement": self.model_agreement, "flip_rate": self.flip_rate, "probes": self.n_probes,
            "left_rate": self.left_rate, "longer_rate": self.longer_rate, "tie_rate": self.tie_rate,
            "both_bad_rate": self.both_bad_rate, "median_time_s": (self.median_time_ms / 1000
                                                                   if self.median_time_ms is not None else None),
            "ms_per_1k_chars": self.median_ms_per_1k_chars, "time_length_corr": self.time_length_corr,
        }


def flags_for(stats: AnnotatorStats, thresholds: Thresholds = THRESHOLDS) -> list[str]:
    """The flags (keys of :data:`FLAG_TEXT`) this annotator's figures raise."""
    t, flags = thresholds, []
    left = stats.left_rate
    if (stats.n_decisive >= t.left_min_n and left is not None
            and not t.left_rate_low <= left <= t.left_rate_high
            and (binomial_p(stats.n_left, stats.n_decisive) or 1.0) < t.left_binomial_p):
        flags.append("left_bias")
    if stats.n_gold >= t.gold_min_n and (stats.gold_accuracy or 0.0) < t.gold_min_accuracy:
        flags.append("gold")
    if stats.kappa_shared >= t.kappa_min_shared and stats.kappa is not None and stats.kappa < t.kappa_min:
        flags.append("low_kappa")
    if stats.n_probes >= t.flip_min_n and (stats.flip_rate or 0.0) > t.flip_max:
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


def _live(j=Judgment):
    return and_(j.state == JudgmentState.active, j.source == JudgmentSource.annotator, j.annotator_id.is_not(None))


def _in_period(j, since: datetime | None, until: datetime | None):
    conds = []
    if since is not None:
        conds.append(j.created_at >= since)
    if until is not None:
        conds.append(j.created_at < until)
    return and_(true(), *conds)


def _n(cond):
    return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)


def _choice_counts_subquery(since, until):
    """Per comparison: how many live, non-probe judgments chose each option."""
    j = aliased(Judgment)
    return (
        select(j.comparison_id.label("cid"),
               *[_n(j.choice == Choice(c)).label(f"n_{c}") for c in CHOICES])
        .where(_live(j), j.is_probe.is_(False), _in_period(j, since, until))
        .group_by(j.comparison_id)
        .subquery("votes")
    )


def annotator_quality(session: Session, *, actor: Actor, since: datetime | None = None,
                      until: datetime | None = None, thresholds: Thresholds = THRESHOLDS) -> QualityReport:
    """Every annotator's agreement, bias and consistency figures over ``[since, until)`` (admin only)."""
    require_admin(session, actor)
    dialect = session.bind.dialect.name
    j = Judgment
    c = Comparison
    ra, rb = aliased(Response), aliased(Response)
    votes = _choice_counts_subquery(since, until)
    la, lb = func.length(ra.text), func.length(rb.text)
    is_a, is_b = j.choice == Choice.a, j.choice == Choice.b
    decisive = or_(is_a, is_b)

    # Leave-one-out counts of the *other* annotators' choices on this comparison.
    others = {ch: getattr(votes.c, f"n_{ch}") - case((j.choice == Choice(ch), 1), else_=0) for ch in CHOICES}

    def plurality(ch):
        return and_(*[others[ch] > others[o] for o in CHOICES if o != ch])

    has_majority = or_(*[plurality(ch) for ch in CHOICES])
    agrees_majority = or_(*[and_(j.choice == Choice(ch), plurality(ch)) for ch in CHOICES])
    confident = func.abs(c.model_p_a - 0.5) >= MODEL_CONFIDENCE
    timed = and_(j.time_spent_ms.is_not(None), j.time_spent_ms > 0)
    x = cast(j.time_spent_ms, Float)
    y = cast(la + lb, Float)

    columns = [
        j.annotator_id,
        func.count(j.id).label("n"),
        _n(decisive).label("n_decisive"),
        _n(and_(decisive, j.a_on_left.is_not(None), or_(and_(is_a, j.a_on_left.is_(True)),
                                                         and_(is_b, j.a_on_left.is_(False))))).label("n_left"),
        _n(and_(decisive, j.a_on_left.is_not(None))).label("n_sided"),
        _n(j.choice == Choice.tie).label("n_ties"),
        _n(j.choice == Choice.both_bad).label("n_both_bad"),
        _n(and_(decisive, la != lb)).label("n_length_decisive"),
        _n(or_(and_(is_a, la > lb), and_(is_b, lb > la))).label("n_longer"),
        _n(and_(j.was_gold.is_(True), c.gold_choice.is_not(None))).label("n_gold"),
        _n(and_(j.was_gold.is_(True), j.choice == c.gold_choice)).label("n_gold_correct"),
        _n(and_(decisive, c.model_p_a.is_not(None), confident)).label("n_model"),
        _n(and_(c.model_p_a.is_not(None), confident,
                or_(and_(is_a, c.model_p_a > 0.5), and_(is_b, c.model_p_a < 0.5)))).label("n_model_agree"),
        _n(has_majority).label("n_majority"),
        _n(agrees_majority).label("n_majority_agree"),
        _n(timed).label("n_timed"),
        func.sum(case((timed, x))).label("sx"),
        func.sum(case((timed, y))).label("sy"),
        func.sum(case((timed, x * x))).label("sxx"),
        func.sum(case((timed, y * y))).label("syy"),
        func.sum(case((timed, x * y))).label("sxy"),
    ]
    per_1k = case((and_(timed, la + lb > 0), x * 1000.0 / y))
    if dialect == "postgresql":
        columns += [func.percentile_cont(0.5).within_group(case((timed, x))).label("median_time"),
                    func.percentile_cont(0.5).within_group(per_1k).label("median_per_1k")]
    stmt = (
        select(*columns)
        .select_from(j)
        .join(c, c.id == j.comparison_id)
        .join(ra, ra.id == c.response_a_id)
        .join(rb, rb.id == c.response_b_id)
        .join(votes, votes.c.cid == j.comparison_id)
        .where(_live(j), j.is_probe.is_(False), _in_period(j, since, until))
        .group_by(j.annotator_id)
    )
    rows = session.execute(stmt).mappings().all()
    names = dict(session.execute(select(User.id, User.username)).all())
    stats: dict[int, AnnotatorStats] = {}
    for row in rows:
        s = AnnotatorStats(annotator_id=row["annotator_id"], username=names.get(row["annotator_id"], "?"))
        for key in ("n", "n_left", "n_ties", "n_both_bad", "n_length_decisive", "n_longer", "n_gold",
                    "n_gold_correct", "n_model", "n_model_agree", "n_majority", "n_majority_agree", "n_timed"):
            setattr(s, key, int(row[key] or 0))
        s.n_decisive = int(row["n_sided"] or 0)
        s.time_length_corr = pearson_from_sums(s.n_timed, *(float(row[k] or 0.0)
                                                            for k in ("sx", "sy", "sxx", "syy", "sxy")))
        if dialect == "postgresql":
            s.median_time_ms = _float(row["median_time"])
            s.median_ms_per_1k_chars = _float(row["median_per_1k"])
        stats[s.annotator_id] = s
    if dialect != "postgresql" and stats:
        _medians_in_python(session, stats, since, until)

    _add_flips(session, stats, since, until)
    pair_kappas = _add_kappas(session, stats, names, since, until)
    alpha_ord, alpha_nom = _alphas(session, since, until)

    annotators = sorted(stats.values(), key=lambda s: s.username)
    for s in annotators:
        s.flags = flags_for(s, thresholds)
    return QualityReport(since=since, until=until, annotators=annotators, pair_kappas=pair_kappas,
                         alpha_ordinal=alpha_ord, alpha_nominal=alpha_nom, overall=_overall(annotators),
                         thresholds=thresholds)


def _float(value) -> float | None:
    return None if value is None else float(value)


def _medians_in_python(session: Session, stats: dict[int, AnnotatorStats], since, until) -> None:
    # SQLite has no percentile aggregate; small deployments only, so fetch the two columns.
    ra, rb = aliased(Response), aliased(Response)
    rows = session.execute(
        select(Judgment.annotator_id, Judgment.time_spent_ms, func.length(ra.text) + func.length(rb.text))
        .join(Comparison, Comparison.id == Judgment.comparison_id)
        .join(ra, ra.id == Comparison.response_a_id).join(rb, rb.id == Comparison.response_b_id)
        .where(_live(), Judgment.is_probe.is_(False), _in_period(Judgment, since, until),
               Judgment.time_spent_ms > 0)).all()
    per: dict[int, tuple[list[float], list[float]]] = {}
    for annotator_id, ms, length in rows:
        times, per_1k = per.setdefault(annotator_id, ([], []))
        times.append(ms)
        if length:
            per_1k.append(ms * 1000.0 / length)
    for annotator_id, (times, per_1k) in per.items():
        if annotator_id in stats:
            stats[annotator_id].median_time_ms = float(np.median(times)) if times else None
            stats[annotator_id].median_ms_per_1k_chars = float(np.median(per_1k)) if per_1k else None


def _add_flips(session: Session, stats: dict[int, AnnotatorStats], since, until) -> None:
    probe, orig = aliased(Judgment), aliased(Judgment)
    rows = session.execute(
        select(probe.annotator_id, func.count(probe.id), _n(probe.choice != orig.choice))
        .join(orig, and_(orig.comparison_id == probe.comparison_id, orig.annotator_id == probe.annotator_id,
                         orig.is_probe.is_(False), orig.state == JudgmentState.active))
        .where(_live(probe), probe.is_probe.is_(True), _in_period(probe, since, until))
        .group_by(probe.annotator_id)).all()
    for annotator_id, n, flips in rows:
        if annotator_id in stats:
            stats[annotator_id].n_probes = int(n)
            stats[annotator_id].n_flips = int(flips or 0)


def _add_kappas(session: Session, stats: dict[int, AnnotatorStats], names: Mapping[int, str],
                since, until) -> list[tuple[str, str, float | None, int]]:
    j1, j2 = aliased(Judgment), aliased(Judgment)
    rows = session.execute(
        select(j1.annotator_id, j2.annotator_id, j1.choice, j2.choice, func.count())
        .join(j2, and_(j2.comparison_id == j1.comparison_id, j2.annotator_id > j1.annotator_id))
        .where(_live(j1), _live(j2), j1.is_probe.is_(False), j2.is_probe.is_(False),
               _in_period(j1, since, until), _in_period(j2, since, until))
        .group_by(j1.annotator_id, j2.annotator_id, j1.choice, j2.choice)).all()
    tables: dict[tuple[int, int], dict[tuple[str, str], int]] = {}
    pooled: dict[int, dict[tuple[str, str], int]] = {}
    for a1, a2, c1, c2, n in rows:
        c1, c2 = Choice(c1).value, Choice(c2).value
        t = tables.setdefault((a1, a2), {})
        t[(c1, c2)] = t.get((c1, c2), 0) + n
        for me, mine, theirs in ((a1, c1, c2), (a2, c2, c1)):
            p = pooled.setdefault(me, {})
            p[(mine, theirs)] = p.get((mine, theirs), 0) + n
    for annotator_id, table in pooled.items():
        if annotator_id in stats:
            stats[annotator_id].kappa = kappa_from_table(table)
            stats[annotator_id].kappa_shared = int(sum(table.values()))
    return sorted(((names.get(a1, "?"), names.get(a2, "?"), kappa_from_table(t), int(sum(t.values())))
                   for (a1, a2), t in tables.items()), key=lambda r: (r[0], r[1]))


def _alphas(session: Session, since, until) -> tuple[float | None, float | None]:
    votes = _choice_counts_subquery(since, until)
    cols = [getattr(votes.c, f"n_{ch}") for ch in CHOICES]
    # Units with the same vote pattern are interchangeable for α: fetch patterns, not units.
    patterns = session.execute(
        select(*cols, func.count()).where(sum(cols[1:], cols[0]) >= 2).group_by(*cols)).all()
    if not patterns:
        return None, None
    counts = np.array([p[:4] for p in patterns], dtype=float)
    weights = np.array([p[4] for p in patterns], dtype=int)
    units = np.repeat(counts, weights, axis=0)
    nominal = krippendorff_alpha(units, "nominal")
    ordinal = krippendorff_alpha(units[:, [0, 2, 1]], "ordinal")  # columns a, tie, b
    return ordinal, nominal


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

    Raises ``overlap_target`` by one and reopens the comparison when its
    annotators disagree, when the newest judgment contradicts a confident model,
    or when the newest judge's gold accuracy is below
    ``thresholds.overlap_gold_accuracy`` — never beyond ``options.max_overlap``,
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
    if not judged:
        return False
    choices = [Choice(ch).value for ch, _ in judged]
    latest_choice, latest_annotator = choices[-1], judged[-1][1]
    reason = needs_another_judgment(choices, latest_choice, model_p_a,
                                    gold_accuracy_of(session, latest_annotator), thresholds)
    if reason is None:
        return False
    result = session.execute(
        update(Comparison)
        .where(Comparison.id == comparison_id, Comparison.overlap_target == target)
        .values(overlap_target=target + 1, status=ComparisonStatus.open)
        .execution_options(synchronize_session=False))
    return bool(result.rowcount)
