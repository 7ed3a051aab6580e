"""The admin console's data: campaign overview, annotator table, model health,
review of one comparison, the audit log, and marking gold pairs.

Every function is admin-only (it calls :func:`require_admin` itself) and reads
with aggregates computed in the database, so the overview stays fast with a
million judgments. Pages draw what these return; they run no SQL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Float, Integer, and_, case, cast, exists, func, or_, select, union
from sqlalchemy.orm import Session, aliased

from annotate import quality, retrain
from annotate.accounts import Actor, audit, release_leases, require_admin
from annotate.campaign import CampaignOptions, get_options
from annotate.errors import NotFound, PrefloopError
from annotate.models import (
    AuditEvent,
    Choice,
    Comparison,
    ComparisonStatus,
    ImportBatch,
    ComparisonVotes,
    Judgment,
    JudgmentSource,
    JudgmentState,
    Lease,
    ModelVersion,
    Prompt,
    Response,
    Role,
    TrainingRun,
    User,
    utcnow,
)
from annotate.settings import Settings

ACTIVE_WINDOW = timedelta(minutes=15)
"""An annotator is active now when their account is active and they judged within this window or hold a live
lease."""


# --------------------------------------------------------------------------- overview


@dataclass
class Overview:
    """Campaign totals and pace (see :func:`overview`)."""

    prompts: int
    comparisons: int
    judgments: int
    """Live judgments (active; probes and imported ones included)."""
    open: int
    complete: int
    retired: int
    gold: int
    queue_depth: int
    active_annotators: int
    judgments_in_period: int
    median_time_ms: float | None
    per_hour: list[tuple[datetime, int]]
    """(UTC hour start, live annotator judgments, probes included) for every hour of the period that had any;
    imported judgments are left out (they carry the time of the import)."""
    target_judgments: int
    counted_judgments: int
    """Live, non-probe annotator judgments: what the target counts."""
    imported_judgments: int
    """Live imported judgments (files' known winners), counted in ``judgments``; the rest of it are probes."""
    annotator_accounts: int
    """Active accounts with the annotator role."""
    active_model: dict[str, Any] | None
    last_run: dict[str, Any] | None
    labels_since_last_run: int
    retrain_every_labels: int
    next_retrain_at: datetime | None
    """When the watcher may next retrain: while it waits after failed runs, the end of that wait;
    else when its time trigger fires if at least one new label arrived (None before any run)."""
    retrain_due: bool
    """Whether the watcher retrains at its next poll (:func:`annotate.retrain.check_due`)."""
    retrain_reason: str
    """The watcher's reason for retraining or waiting, e.g. the wait after failed runs."""
    period_start: datetime
    now: datetime

    @property
    def progress(self) -> float | None:
        if self.target_judgments <= 0:
            return None
        return min(1.0, self.counted_judgments / self.target_judgments)

    @property
    def labels_until_retrain(self) -> int:
        return max(0, self.retrain_every_labels - self.labels_since_last_run)


def _hour_bucket(session: Session, column):
    """The UTC hour a timestamp falls in (naive, read as UTC by :func:`_as_hour`)."""
    if session.bind.dialect.name == "postgresql":
        # date_trunc on a timestamptz truncates in the session's TimeZone (e.g. Asia/Kolkata, +05:30).
        return func.date_trunc("hour", func.timezone("UTC", column))
    return func.strftime("%Y-%m-%d %H:00:00", column)


def _as_hour(value) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _median_time(session: Session, since: datetime) -> float | None:
    # Not probes, as on the Annotators page (the Overview's median was over another set of judgments).
    cond = and_(Judgment.created_at >= since, Judgment.time_spent_ms > 0, Judgment.state == JudgmentState.active,
                Judgment.is_probe.is_(False))
    if session.bind.dialect.name == "postgresql":
        value = session.scalar(select(func.percentile_cont(0.5).within_group(Judgment.time_spent_ms)).where(cond))
        return None if value is None else float(value)
    values = sorted(session.scalars(select(Judgment.time_spent_ms).where(cond)).all())
    if not values:
        return None
    mid = len(values) // 2
    return float(values[mid]) if len(values) % 2 else (values[mid - 1] + values[mid]) / 2.0


def _version_dict(v: ModelVersion) -> dict[str, Any]:
    m = v.metrics or {}
    return {
        "id": v.id, "created_at": v.created_at, "promoted_at": v.promoted_at, "is_active": v.is_active,
        "promoted": v.promoted, "n_train": v.n_train, "n_test": v.n_test, "encoder": v.encoder_id,
        "accuracy": _num(m.get("accuracy")), "log_loss": _num(m.get("log_loss")), "ece": _num(m.get("ece")),
        "length_baseline_accuracy": _num(m.get("length_baseline_accuracy")),
        "length_rule": quality.length_rule(_num(m.get("length_longer_wins_accuracy"))),
        "reward_length_spearman": _num(m.get("reward_length_spearman")),
        "ensemble_prob_std": _num(m.get("ensemble_prob_std")),
        "ensemble_reward_std": _num(m.get("ensemble_reward_std")),
    }


def _num(value) -> float | None:
    """A metric as a finite float, or None (metrics JSON may hold None, NaN or be missing)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def overview(session: Session, settings: Settings, *, actor: Actor, now: datetime | None = None,
             period: timedelta = timedelta(hours=24)) -> Overview:
    """Campaign totals, pace over the last ``period``, the active model and the next retrain (admin only)."""
    require_admin(session, actor)
    quality.without_jit(session)
    now = now or utcnow()
    since = now - period
    options = get_options(session, settings)
    live = Judgment.state == JudgmentState.active

    by_status: dict[ComparisonStatus, int] = {}
    gold = depth = 0
    for status, is_gold, n in session.execute(
            select(Comparison.status, Comparison.is_gold, func.count(Comparison.id))
            .group_by(Comparison.status, Comparison.is_gold)).all():
        status = ComparisonStatus(status)
        by_status[status] = by_status.get(status, 0) + n
        gold += n if is_gold else 0
        depth += n if status is ComparisonStatus.open and not is_gold else 0
    judgment_row = session.execute(select(
        func.count(Judgment.id),
        quality._n(and_(Judgment.is_probe.is_(False), Judgment.source == JudgmentSource.annotator)),
        quality._n(Judgment.source == JudgmentSource.imported),
    ).where(live)).one()
    hour = _hour_bucket(session, Judgment.created_at).label("hour")
    # Pace is annotators' work: an import stamps all its judgments with the import time.
    per_hour = [(_as_hour(h), int(n)) for h, n in session.execute(
        select(hour, func.count(Judgment.id))
        .where(live, Judgment.source == JudgmentSource.annotator, Judgment.created_at >= since)
        .group_by(hour).order_by(hour)).all()]
    recent = select(Judgment.annotator_id.label("uid")).where(Judgment.created_at >= now - ACTIVE_WINDOW,
                                                              Judgment.annotator_id.is_not(None))
    leasing = select(Lease.annotator_id.label("uid")).where(Lease.expires_at > now, Lease.skipped.is_(False))
    working = union(recent, leasing).subquery()
    # A deactivated account is not at work, whatever it judged or held moments ago.
    active_now = session.scalar(select(func.count()).select_from(working)
                                .join(User, and_(User.id == working.c.uid, User.active.is_(True)))) or 0

    active = session.scalar(select(ModelVersion).where(ModelVersion.is_active.is_(True)))
    last_run = session.scalar(select(TrainingRun).order_by(TrainingRun.started_at.desc(), TrainingRun.id.desc())
                              .limit(1))
    # The watcher's own rule, back-off after failed runs included. Before any finished run the time
    # trigger counts from the watcher's start, which this process cannot know: from now, so not due on time.
    due = retrain.check_due(session, settings, since=now, now=now)
    return Overview(
        prompts=session.scalar(select(func.count(Prompt.id))) or 0,
        comparisons=sum(by_status.values()),
        judgments=int(judgment_row[0] or 0),
        open=by_status.get(ComparisonStatus.open, 0),
        complete=by_status.get(ComparisonStatus.complete, 0),
        retired=by_status.get(ComparisonStatus.retired, 0),
        gold=gold,
        queue_depth=depth,  # what queue.queue_depth counts, from the same grouped scan
        active_annotators=int(active_now),
        judgments_in_period=sum(n for _, n in per_hour),
        median_time_ms=_median_time(session, since),
        per_hour=per_hour,
        target_judgments=options.target_judgments,
        counted_judgments=int(judgment_row[1] or 0),
        imported_judgments=int(judgment_row[2] or 0),
        annotator_accounts=session.scalar(select(func.count(User.id)).where(
            User.role == Role.annotator, User.active.is_(True))) or 0,
        active_model=_version_dict(active) if active is not None else None,
        last_run=None if last_run is None else {
            "id": last_run.id, "status": last_run.status, "step": last_run.step, "started_at": last_run.started_at,
            "finished_at": last_run.finished_at, "error": last_run.error},
        labels_since_last_run=due.new_judgments,
        retrain_every_labels=options.retrain_every_labels,
        next_retrain_at=due.next_at,
        retrain_due=due.due,
        retrain_reason=due.reason,
        period_start=since,
        now=now,
    )


# --------------------------------------------------------------------------- annotators


def annotator_table(session: Session, *, actor: Actor, since: datetime | None = None,
                    until: datetime | None = None) -> quality.QualityReport:
    """Per-annotator quality figures and flags over ``[since, until)`` (admin only)."""
    require_admin(session, actor)
    return quality.annotator_quality(session, actor=actor, since=since, until=until)


@dataclass(frozen=True)
class ImportedJudgments:
    """Live imported judgments, which no annotator figure counts (see :func:`imported_judgments`)."""

    n: int
    named: int
    """Those whose file named a rater (``external_annotator``)."""
    raters: int
    """Distinct rater names."""


def imported_judgments(session: Session, *, actor: Actor) -> ImportedJudgments:
    """How many live imported judgments there are, and from how many named raters (admin only).

    One COUNT over the judgments with no annotator of ours (``annotator_id IS NULL``: only imports write
    those), which the ``(annotator_id, created_at)`` index finds without reading annotators' rows.
    """
    require_admin(session, actor)
    n, named, raters = session.execute(
        select(func.count(Judgment.id), func.count(Judgment.external_annotator),
               func.count(Judgment.external_annotator.distinct()))
        .where(Judgment.annotator_id.is_(None), Judgment.source == JudgmentSource.imported,
               Judgment.state == JudgmentState.active)).one()
    return ImportedJudgments(n=int(n or 0), named=int(named or 0), raters=int(raters or 0))


# --------------------------------------------------------------------------- model health


@dataclass
class FreshLabels:
    """The active model against judgments it never saw: made after its run read the labels
    (judgment id above the run's ``max_judgment_id``), on comparisons with no judgment up to that id,
    and scored by this version (``priority_model_version_id``). Decisive (a/b), non-probe, non-gold,
    annotators' own; pairs the model calls exactly even are left out.

    ``random_*`` are pairs served in random order (cold start, held-out prompts, a random campaign):
    an unbiased sample, comparable with the held-out accuracy. ``chosen_*`` are pairs the strategy put
    first; they were picked for the model's uncertainty, so expect lower agreement there.
    """

    version_id: int
    after_judgment_id: int
    random_n: int = 0
    random_correct: int = 0
    chosen_n: int = 0
    chosen_correct: int = 0

    @property
    def random_interval(self) -> tuple[float, float] | None:
        return quality.wilson_interval(self.random_correct, self.random_n)


@dataclass
class ModelHealth:
    """What the model-health page draws (see :func:`model_health`)."""

    versions: list[dict[str, Any]]
    """Every model version, oldest first, with its held-out metrics."""
    learning_curve: list[tuple[int, float, int]]
    """(n_train, held-out accuracy, version id) for versions that report accuracy."""
    active: dict[str, Any] | None
    held_out_calibration: list[dict[str, Any]]
    """The active version's calibration bins from its metrics (lower, upper, predicted, observed, count)."""
    live_calibration: list[quality.CalibrationBin]
    """The current ``model_p_a`` against human majorities on judged comparisons."""
    length_points: list[tuple[int, float]]
    """(length of A - length of B in characters, reward gap logit(model_p_a)) for scored comparisons."""
    length_gap_spearman: float | None
    score_histogram: list[tuple[float, float, int]]
    """(lower, upper, count) of acquisition scores (``priority_score``) in the open pool."""
    open_scored: int
    disagreements: list[dict[str, Any]]
    """Comparisons whose human majority contradicts a confident model, most confident first."""
    runs: list[dict[str, Any]] = field(default_factory=list)
    fresh: FreshLabels | None = None
    """The active model on labels it never trained on (None without an active version from a run)."""


def fresh_labels(session: Session, active: ModelVersion | None) -> FreshLabels | None:
    """:class:`FreshLabels` of ``active`` (two grouped counts, index-backed by judgment id)."""
    if active is None or active.training_run_id is None:
        return None
    counts = session.scalar(select(TrainingRun.counts).where(TrainingRun.id == active.training_run_id)) or {}
    if counts.get("max_judgment_id") is None:
        return None
    mark = int(counts["max_judgment_id"])
    earlier = aliased(Judgment)
    trained_on = exists().where(earlier.comparison_id == Comparison.id, earlier.id <= mark,
                                earlier.is_probe.is_(False))
    p = Comparison.model_p_a
    correct = case((and_(Judgment.choice == Choice.a, p > 0.5), 1), (and_(Judgment.choice == Choice.b, p < 0.5), 1),
                   else_=0)
    in_random_order = Judgment.acquisition_strategy.in_(("random", retrain.HELD_OUT_STRATEGY))
    rows = session.execute(
        select(in_random_order.label("random"), func.count(), func.sum(correct))
        .join(Comparison, Comparison.id == Judgment.comparison_id)
        .where(Judgment.id > mark, Judgment.state == JudgmentState.active, Judgment.is_probe.is_(False),
               Judgment.was_gold.is_(False), Judgment.source == JudgmentSource.annotator,
               Judgment.choice.in_((Choice.a, Choice.b)), Judgment.acquisition_strategy.is_not(None),
               Comparison.priority_model_version_id == active.id, p.is_not(None), p != 0.5, ~trained_on)
        .group_by(in_random_order)).all()
    fresh = FreshLabels(version_id=active.id, after_judgment_id=mark)
    for is_random, n, k in rows:
        if is_random:
            fresh.random_n, fresh.random_correct = int(n), int(k or 0)
        else:
            fresh.chosen_n, fresh.chosen_correct = int(n), int(k or 0)
    return fresh


def _votes_subquery():
    """Per judged comparison: live, non-probe human votes for A, for B and in all (the running counts)."""
    v = ComparisonVotes
    n = (v.n_a + v.n_b + v.n_tie + v.n_both_bad).label("n")
    return (select(v.comparison_id.label("cid"), v.n_a.label("n_a"), v.n_b.label("n_b"), n)
            .where(n > 0).subquery("votes"))


def model_health(session: Session, *, actor: Actor, points: int = 2000, bins: int = 20,
                 disagreements: int = 50) -> ModelHealth:
    """Model versions, learning curve, calibration, length signal, acquisition scores, disagreements (admin only).

    ``points`` caps the reward-vs-length sample (the most recently scored
    comparisons by id); the histogram and calibration are computed in SQL.
    """
    require_admin(session, actor)
    quality.without_jit(session)
    versions = [_version_dict(v) for v in session.scalars(select(ModelVersion).order_by(ModelVersion.id))]
    active_row = session.scalar(select(ModelVersion).where(ModelVersion.is_active.is_(True)))
    active = _version_dict(active_row) if active_row else None
    curve = sorted((v["n_train"], v["accuracy"], v["id"]) for v in versions if v["accuracy"] is not None)
    held_out = []
    if active_row is not None:
        for b in (active_row.metrics or {}).get("calibration") or []:
            if isinstance(b, dict):
                held_out.append({k: b.get(k) for k in ("lower", "upper", "predicted", "observed", "count")})

    votes = _votes_subquery()
    decisive = votes.c.n_a + votes.c.n_b
    # Live calibration: each judged comparison's model P(A) against the humans' share for A, in SQL bins.
    bucket = _floor_int(session, Comparison.model_p_a * 10).label("bucket")
    live_rows = session.execute(
        select(bucket, func.count(), func.sum(Comparison.model_p_a),
               func.sum(cast(votes.c.n_a, Float) / cast(decisive, Float)))
        .join(votes, votes.c.cid == Comparison.id)
        .where(Comparison.model_p_a.is_not(None), decisive > 0)
        .group_by(bucket)).all()
    by_bin: dict[int, tuple[int, float, float]] = {}
    for b, n, sp, so in live_rows:
        b = min(int(b), 9)  # p == 1.0 belongs to the last bin
        old = by_bin.get(b, (0, 0.0, 0.0))
        by_bin[b] = (old[0] + int(n), old[1] + float(sp), old[2] + float(so))
    live_cal = []
    for b in range(10):
        n, sp, so = by_bin.get(b, (0, 0.0, 0.0))
        live_cal.append(quality.CalibrationBin(b / 10, (b + 1) / 10, sp / n if n else None, so / n if n else None, n))

    ra, rb = aliased(Response), aliased(Response)
    point_rows = session.execute(
        select(ra.n_chars - rb.n_chars, Comparison.model_p_a)
        .join(ra, ra.id == Comparison.response_a_id).join(rb, rb.id == Comparison.response_b_id)
        .where(Comparison.model_p_a.is_not(None)).order_by(Comparison.id.desc()).limit(points)).all()
    length_points = [(int(d), _logit(float(p))) for d, p in point_rows]
    rho = quality.spearman([d for d, _ in length_points], [g for _, g in length_points])

    open_pool = and_(Comparison.status == ComparisonStatus.open, Comparison.priority_score.is_not(None))
    lo, hi, n_scored = session.execute(select(func.min(Comparison.priority_score), func.max(Comparison.priority_score),
                                              func.count(Comparison.id)).where(open_pool)).one()
    histogram: list[tuple[float, float, int]] = []
    if n_scored:
        lo, hi = float(lo), float(hi)
        width = (hi - lo) / bins if hi > lo else 1.0
        idx = _floor_int(session, (Comparison.priority_score - lo) / width).label("idx")
        counts: dict[int, int] = {}
        for i, n in session.execute(select(idx, func.count()).where(open_pool).group_by(idx)).all():
            i = min(max(int(i), 0), bins - 1)  # the maximum itself lands in the last bin
            counts[i] = counts.get(i, 0) + int(n)
        histogram = [(lo + i * width, lo + (i + 1) * width, counts.get(i, 0)) for i in range(bins)]

    confident_a = Comparison.model_p_a >= 0.5 + quality.MODEL_CONFIDENCE
    confident_b = Comparison.model_p_a <= 0.5 - quality.MODEL_CONFIDENCE
    dis_rows = session.execute(
        select(Comparison.id, Comparison.model_p_a, votes.c.n_a, votes.c.n_b, votes.c.n)
        .join(votes, votes.c.cid == Comparison.id)
        .where(or_(and_(confident_a, votes.c.n_b > votes.c.n_a), and_(confident_b, votes.c.n_a > votes.c.n_b)))
        .order_by(func.abs(Comparison.model_p_a - 0.5).desc(), Comparison.id).limit(disagreements)).all()
    runs = [{"id": r.id, "status": r.status, "step": r.step, "started_at": r.started_at,
             "finished_at": r.finished_at, "error": r.error}
            for r in session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(20))]
    return ModelHealth(
        versions=versions, learning_curve=curve, active=active, held_out_calibration=held_out,
        live_calibration=live_cal, length_points=length_points, length_gap_spearman=rho,
        score_histogram=histogram, open_scored=int(n_scored or 0),
        disagreements=[{"comparison_id": cid, "model_p_a": float(p), "human_a": int(na), "human_b": int(nb),
                        "judgments": int(n)} for cid, p, na, nb, n in dis_rows],
        runs=runs, fresh=fresh_labels(session, active_row),
    )


def _floor_int(session: Session, expr):
    """floor(expr) as an integer (for non-negative values on SQLite, where CAST truncates)."""
    if session.bind.dialect.name == "postgresql":
        return cast(func.floor(expr), Integer)
    return cast(expr, Integer)


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


# --------------------------------------------------------------------------- review


@dataclass
class JudgmentView:
    id: int
    annotator: str | None
    rater: str | None
    """An imported judgment's rater: the ``annotator`` its file named (``Judgment.external_annotator``)."""
    choice: str
    strength: int | None
    rationale: str | None
    flags: list[str]
    a_on_left: bool | None
    time_spent_ms: int | None
    is_probe: bool
    was_gold: bool
    state: str
    source: str
    created_at: datetime


@dataclass
class ComparisonReview:
    """One comparison with its texts and every judgment (all states)."""

    id: int
    prompt_text: str | None
    prompt_messages: list[dict[str, Any]] | None
    response_a: str
    response_b: str
    generator_a: str | None
    generator_b: str | None
    status: str
    overlap_target: int
    judgment_count: int
    is_gold: bool
    gold_choice: str | None
    model_p_a: float | None
    priority_score: float | None
    source_tag: str | None
    judgments: list[JudgmentView]

    @property
    def votes(self) -> dict[str, int]:
        counts = {c: 0 for c in quality.CHOICES}
        for j in self.judgments:
            if j.state == JudgmentState.active.value and not j.is_probe:
                counts[j.choice] += 1
        return counts


def review_comparison(session: Session, *, actor: Actor, comparison_id: int) -> ComparisonReview:
    """A comparison with its prompt, both responses and all its judgments and rationales (admin only)."""
    require_admin(session, actor)
    c = session.get(Comparison, comparison_id)
    if c is None:
        raise NotFound(f"comparison {comparison_id} does not exist; check the id")
    a, b = session.get(Response, c.response_a_id), session.get(Response, c.response_b_id)
    prompt = session.get(Prompt, c.prompt_id)
    rows = session.execute(
        select(Judgment, User.username).outerjoin(User, User.id == Judgment.annotator_id)
        .where(Judgment.comparison_id == comparison_id).order_by(Judgment.id)).all()
    return ComparisonReview(
        id=c.id, prompt_text=prompt.text, prompt_messages=prompt.messages, response_a=a.text, response_b=b.text,
        generator_a=a.generator, generator_b=b.generator, status=ComparisonStatus(c.status).value,
        overlap_target=c.overlap_target, judgment_count=c.judgment_count, is_gold=c.is_gold,
        gold_choice=Choice(c.gold_choice).value if c.gold_choice else None, model_p_a=c.model_p_a,
        priority_score=c.priority_score, source_tag=c.source_tag,
        judgments=[JudgmentView(
            id=j.id, annotator=name, rater=j.external_annotator, choice=Choice(j.choice).value, strength=j.strength,
            rationale=j.rationale, flags=list(j.flags or []), a_on_left=j.a_on_left, time_spent_ms=j.time_spent_ms,
            is_probe=j.is_probe, was_gold=j.was_gold, state=JudgmentState(j.state).value,
            source=JudgmentSource(j.source).value, created_at=j.created_at) for j, name in rows],
    )


# --------------------------------------------------------------------------- gold


def mark_gold(session: Session, *, actor: Actor, comparison_id: int, choice: str) -> None:
    """Make a comparison a gold pair with the known answer ``choice`` (admin only, audited).

    Gold pairs stay open: the queue mixes them into every annotator's work at
    the configured gold rate.
    """
    require_admin(session, actor)
    try:
        gold_choice = Choice(choice)
    except ValueError:
        raise PrefloopError(f"a gold answer is one of {', '.join(quality.CHOICES)}") from None
    c = session.get(Comparison, comparison_id)
    if c is None:
        raise NotFound(f"comparison {comparison_id} does not exist; check the id")
    if c.is_gold and c.gold_choice == gold_choice:
        return  # already this gold answer (the second press of a double click): no second audit entry
    c.is_gold, c.gold_choice = True, gold_choice
    if c.status != ComparisonStatus.retired:
        c.status = ComparisonStatus.open
    audit(session, actor, "gold.mark", comparison_id=comparison_id, choice=gold_choice.value)


def unmark_gold(session: Session, settings: Settings, *, actor: Actor, comparison_id: int) -> None:
    """Turn a gold pair back into an ordinary comparison (admin only, audited); one that is not gold is left
    as it is, unaudited, as ``mark_gold`` leaves a pair that already has the answer. Back among ordinary pairs,
    its votes are weighed as a judgment's are (:func:`quality.extend_overlap_if_needed`): split votes ask for
    one more (a 2-to-1 pair at overlap 3 was closed, where an ordinary one is raised to 4)."""
    require_admin(session, actor)
    c = session.get(Comparison, comparison_id)
    if c is None:
        raise NotFound(f"comparison {comparison_id} does not exist; check the id")
    if not c.is_gold:
        return  # already ordinary (the second press of a double click): no second audit entry
    c.is_gold, c.gold_choice = False, None
    if c.status != ComparisonStatus.retired:
        c.status = ComparisonStatus.complete if c.judgment_count >= c.overlap_target else ComparisonStatus.open
    session.flush()
    extended = quality.extend_overlap_if_needed(session, comparison_id, get_options(session, settings))
    audit(session, actor, "gold.unmark", comparison_id=comparison_id, **({"overlap_raised": True} if extended else {}))


# --------------------------------------------------------------------------- retiring a pair


def retire(session: Session, *, actor: Actor, comparison_id: int) -> None:
    """Take a comparison out of the campaign (admin only, audited): a broken pair, a prompt that should not
    be there. Nobody is served it again (its leases are let go; an annotator who still has it on screen and
    answers is recorded, as every judgment is), its judgments are kept but left out of training and of
    the preference exports (the raw judgment exports keep them, ``comparison_status`` = ``retired``).
    :func:`reopen` undoes it. A pair already retired is left as it is, unaudited (a double click)."""
    require_admin(session, actor)
    # The queue's lock order (annotate.queue): lease rows before the comparison row. Locked the other way
    # round, a retire and an annotator's submit of the pair deadlocked on PostgreSQL.
    released = release_leases(session, Lease.comparison_id == comparison_id)
    c = session.get(Comparison, comparison_id, with_for_update=True)
    if c is None:
        raise NotFound(f"comparison {comparison_id} does not exist; check the id")
    if c.status == ComparisonStatus.retired:
        return  # nothing is leased on a retired pair, so nothing was let go either
    before = ComparisonStatus(c.status).value
    c.status = ComparisonStatus.retired
    audit(session, actor, "comparison.retire", comparison_id=comparison_id, was=before,
          judgments=c.judgment_count, leases_released=released)


def reopen(session: Session, settings: Settings, *, actor: Actor, comparison_id: int) -> None:
    """Put a retired comparison back (admin only, audited): open while it needs judgments (a gold pair
    always), complete otherwise, and its judgments count again; split votes ask for one more, as after a
    judgment (:func:`quality.extend_overlap_if_needed`, which leaves a retired pair alone). One not retired is
    left as it is."""
    require_admin(session, actor)
    c = session.get(Comparison, comparison_id, with_for_update=True)
    if c is None:
        raise NotFound(f"comparison {comparison_id} does not exist; check the id")
    if c.status != ComparisonStatus.retired:
        return
    c.status = (ComparisonStatus.complete if not c.is_gold and c.judgment_count >= c.overlap_target
                else ComparisonStatus.open)
    session.flush()
    quality.extend_overlap_if_needed(session, comparison_id, get_options(session, settings))
    session.refresh(c)
    audit(session, actor, "comparison.reopen", comparison_id=comparison_id,
          status=ComparisonStatus(c.status).value)


# --------------------------------------------------------------------------- audit log


@dataclass(frozen=True)
class AuditRow:
    id: int
    created_at: datetime
    actor: str | None
    action: str
    detail: dict[str, Any]


def audit_actions(session: Session, *, actor: Actor) -> list[str]:
    """The distinct actions in the audit log, for a filter (admin only)."""
    require_admin(session, actor)
    return list(session.scalars(select(AuditEvent.action).distinct().order_by(AuditEvent.action)))


def audit_log(session: Session, *, actor: Actor, limit: int = 200, action: str | None = None,
              username: str | None = None, before_id: int | None = None) -> list[AuditRow]:
    """The newest audit events first, optionally filtered by action and actor (admin only).

    Page back with ``before_id`` (the smallest id of the previous page).
    """
    require_admin(session, actor)
    stmt = (select(AuditEvent, User.username).outerjoin(User, User.id == AuditEvent.actor_id)
            .order_by(AuditEvent.id.desc()).limit(max(1, min(limit, 1000))))
    if action:
        stmt = stmt.where(AuditEvent.action == action)
    if username:
        stmt = stmt.where(User.username == username)
    if before_id is not None:
        stmt = stmt.where(AuditEvent.id < before_id)
    return [AuditRow(e.id, e.created_at, name, e.action, dict(e.detail or {}))
            for e, name in session.execute(stmt).all()]


# --------------------------------------------------------------------------- settings


def campaign_options(session: Session, settings: Settings, *, actor: Actor) -> CampaignOptions:
    """The effective campaign options, for the settings page (admin only)."""
    require_admin(session, actor)
    return get_options(session, settings)


def strategy_names() -> list[str]:
    """The acquisition strategies the settings page offers (from ``rm.acquisition``)."""
    from rm.acquisition import strategy_names as names

    return names()


def import_of(session: Session, *, actor: Actor, file_hash: str, since: datetime) -> dict[str, Any] | None:
    """The latest import of the file whose bytes hash to ``file_hash`` (sha256) that began at or after
    ``since``, as ``{"id", "created_at", "filename"}``, or None (admin only)."""
    require_admin(session, actor)
    batch = session.scalar(select(ImportBatch).where(ImportBatch.file_hash == file_hash, ImportBatch.created_at >= since)
                           .order_by(ImportBatch.id.desc()).limit(1))
    return None if batch is None else {"id": batch.id, "created_at": batch.created_at, "filename": batch.filename}
