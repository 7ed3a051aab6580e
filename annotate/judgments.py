"""Recording judgments: submit, undo, and the annotator's progress.

Judgments are append-only. Undo reverses the annotator's latest action: it
marks their last judgment ``retracted`` (kept, with the time) and hands the pair
back to them, and judging it again inserts a new row that ``supersedes`` the
retracted one; or, when they skipped a pair after that judgment, it un-skips
that pair and serves it again.

Submit and undo lock the annotator (their user row, then lease rows) before the
judgment and comparison rows, the lock order :mod:`annotate.queue` documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo

from sqlalchemy import case, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from annotate.accounts import Actor, require_active
from annotate.campaign import get_options
from annotate.errors import NotFound, QueueError
from annotate.models import (
    Choice,
    Comparison,
    ComparisonStatus,
    Judgment,
    JudgmentSource,
    JudgmentState,
    Lease,
    utcnow,
)
from annotate.quality import extend_overlap_if_needed
from annotate.queue import a_on_left_for, lock_annotator, release_lease, renew_lease, shown_a_on_left
from annotate.settings import Settings

FLAGS = ("unsafe", "needs_expert", "broken_text", "not_english")
FLAG_LABELS = {"unsafe": "unsafe", "needs_expert": "needs expert", "broken_text": "broken text",
               "not_english": "not English"}
"""How the pages name each flag."""
STRENGTHS = {1: "slightly better", 2: "clearly better", 3: "much better"}
MAX_RATIONALE_CHARS = 2000


def canonical_choice(shown: str, a_on_left: bool) -> Choice:
    """Turn what the annotator pressed (left/right/tie/both_bad) into canonical A/B terms."""
    if shown in ("tie", "both_bad"):
        return Choice(shown)
    if shown not in ("left", "right"):
        raise QueueError(f"unknown choice {shown!r}")
    return Choice.a if (shown == "left") == a_on_left else Choice.b


@dataclass(frozen=True)
class Submitted:
    judgment_id: int
    comparison_id: int
    choice: Choice
    is_probe: bool
    extra: bool = False
    """The pair already had the judgments it needed (others filled it while this annotator's lease had
    expired): the judgment is kept, as one vote more than asked for."""


SIDES_CHANGED = ("this pair was judged or undone in another tab since it was shown here, which swapped its "
                 "sides, so nothing was saved; judge it again as it is shown now")


def submit(session: Session, settings: Settings, *, actor: Actor, comparison_id: int, shown: str,
           strength: int | None = None, rationale: str | None = None, flags: list[str] | tuple[str, ...] = (),
           time_spent_ms: int | None = None, a_on_left_shown: bool | None = None,
           now: datetime | None = None) -> Submitted:
    """Record the annotator's judgment of a pair they were served.

    ``shown`` is what they pressed (``left``, ``right``, ``tie``, ``both_bad``);
    the side mapping comes from the server's lease, never from the client. A
    judgment whose lease has expired is still kept (never silently lost).
    ``a_on_left_shown`` is the side the page showed A on: when the lease's mapping
    has changed since (the pair became a probe, or a probe an ordinary lease, in
    another tab), nothing is saved, rather than the press being read against
    sides the annotator never saw.
    """
    user = require_active(session, actor)
    now = now or utcnow()
    if strength is not None and (strength not in STRENGTHS or shown in ("tie", "both_bad")):
        raise QueueError("strength is 1, 2 or 3 and only applies when one response is better")
    rationale = (rationale or "").strip() or None
    if rationale is not None and len(rationale) > MAX_RATIONALE_CHARS:
        raise QueueError(f"keep the rationale under {MAX_RATIONALE_CHARS} characters")
    bad_flags = set(flags) - set(FLAGS)
    if bad_flags:
        raise QueueError(f"unknown flags: {', '.join(sorted(bad_flags))}")

    # The annotator's tabs take turns (queue's lock order: the user row, then lease rows,
    # before the judgment and comparison rows). The lease is a one-time token: simultaneous
    # submits of the pair (a double click, two tabs) take it one at a time and the later ones
    # find it gone; a probe has no unique index to fall back on. (SQLite already runs one
    # writer at a time and ignores FOR UPDATE.)
    lock_annotator(session, user.id)
    lease = session.scalar(select(Lease).where(Lease.comparison_id == comparison_id, Lease.annotator_id == user.id)
                           .with_for_update())
    comparison = session.get(Comparison, comparison_id)
    if comparison is None:
        raise NotFound(f"comparison {comparison_id} does not exist")
    is_probe = bool(lease is not None and lease.is_probe)
    if lease is not None and not lease.skipped:
        a_left = shown_a_on_left(session, lease, settings.queue_seed)
    elif lease is None and not _has_live(session, comparison_id, user.id):
        a_left = a_on_left_for(comparison_id, user.id, settings.queue_seed)
    else:
        raise QueueError("this pair is not assigned to you any more (skipped or judged in another tab); "
                         "here is the next one")
    if a_on_left_shown is not None and bool(a_on_left_shown) != a_left:
        raise QueueError(SIDES_CHANGED)
    if not is_probe and _has_live(session, comparison_id, user.id):
        raise QueueError("you already judged this pair; press undo to change your answer")

    previous = session.scalar(
        select(Judgment.id).where(Judgment.comparison_id == comparison_id, Judgment.annotator_id == user.id,
                                  Judgment.state == JudgmentState.retracted, Judgment.is_probe.is_(is_probe))
        .order_by(Judgment.id.desc()).limit(1))
    judgment = Judgment(
        comparison_id=comparison_id, annotator_id=user.id, source=JudgmentSource.annotator,
        choice=canonical_choice(shown, a_left), strength=strength, rationale=rationale, flags=sorted(set(flags)),
        a_on_left=a_left, time_spent_ms=time_spent_ms, is_probe=is_probe, was_gold=comparison.is_gold,
        model_version_id=lease.model_version_id if lease else None,
        acquisition_strategy=lease.acquisition_strategy if lease else None,
        acquisition_score=lease.acquisition_score if lease else None,
        supersedes_id=previous, created_at=now,
    )
    try:
        with session.begin_nested():
            session.add(judgment)
            session.flush()
    except IntegrityError:
        raise QueueError("you already judged this pair; press undo to change your answer") from None
    extra = (not is_probe and not comparison.is_gold and comparison.status != ComparisonStatus.retired
             and comparison.judgment_count >= comparison.overlap_target)
    release_lease(session, comparison_id, user.id)
    if not is_probe:
        _bump_count(session, comparison_id, +1)
        extend_overlap_if_needed(session, comparison_id, get_options(session, settings))
    return Submitted(judgment.id, comparison_id, judgment.choice, is_probe, extra)


def _has_live(session: Session, comparison_id: int, annotator_id: int) -> bool:
    return session.scalar(select(Judgment.id).where(
        Judgment.comparison_id == comparison_id, Judgment.annotator_id == annotator_id,
        Judgment.state == JudgmentState.active, Judgment.is_probe.is_(False)).limit(1)) is not None


def _bump_count(session: Session, comparison_id: int, delta: int) -> None:
    """Atomically change the judgment count and keep the status in step with it."""
    new_count = Comparison.judgment_count + delta
    session.execute(
        update(Comparison).where(Comparison.id == comparison_id).values(
            judgment_count=new_count,
            status=case(
                (Comparison.status == ComparisonStatus.retired, Comparison.status),
                (Comparison.is_gold, ComparisonStatus.open),
                (new_count >= Comparison.overlap_target, ComparisonStatus.complete),
                else_=ComparisonStatus.open,
            ),
        ).execution_options(synchronize_session=False))


@dataclass(frozen=True)
class Undone:
    """What undo reversed: a judgment (withdrawn, its pair served again) or a skip."""

    comparison_id: int
    skip: bool
    served: bool
    """Whether the pair is leased back to them now (an un-skipped pair waits for room under its overlap)."""
    strength: int | None = None
    rationale: str | None = None
    flags: tuple[str, ...] = ()
    """The withdrawn judgment's optional inputs, to show the pair again as it was judged (none for a skip)."""


def undo_last(session: Session, settings: Settings, *, actor: Actor, now: datetime | None = None,
              within: timedelta = timedelta(hours=12)) -> int | None:
    """:func:`undo_last_action`, returning only the comparison id (or None)."""
    undone = undo_last_action(session, settings, actor=actor, now=now, within=within)
    return undone.comparison_id if undone is not None else None


def undo_last_action(session: Session, settings: Settings, *, actor: Actor, now: datetime | None = None,
                     within: timedelta = timedelta(hours=12)) -> Undone | None:
    """Reverse the annotator's most recent judgment or skip (within ``within``) and hand the pair back.

    A skip newer than their latest live judgment is undone: the pair is no longer
    skipped and is leased to them again, ahead of what they hold, if it still has
    room (else it comes back once it has). Otherwise the latest judgment is
    retracted and its pair leased back to them (``served``), unless an admin retired the pair since.
    None when there is nothing recent.
    """
    user = require_active(session, actor)
    now = now or utcnow()
    # The annotator, then lease rows, before the judgment and comparison rows (queue's lock order).
    lock_annotator(session, user.id)
    # A skip releases the lease with expires_at = the time of the skip, and nothing changes it after.
    skipped = session.scalar(
        select(Lease).where(Lease.annotator_id == user.id, Lease.skipped.is_(True), Lease.expires_at > now - within)
        .order_by(Lease.expires_at.desc(), Lease.id.desc()).limit(1).with_for_update())
    last = session.scalar(
        select(Judgment).where(Judgment.annotator_id == user.id, Judgment.state == JudgmentState.active,
                               Judgment.created_at > now - within)
        .order_by(Judgment.id.desc()).limit(1).with_for_update())
    if skipped is not None and (last is None or skipped.expires_at > last.created_at):
        skipped.skipped = False
        _put_first(session, skipped, user.id, now)
        return Undone(skipped.comparison_id, skip=True, served=renew_lease(session, settings, skipped, now))
    if last is None:
        return None
    last.state = JudgmentState.retracted
    last.retracted_at = now
    if not last.is_probe:
        _bump_count(session, last.comparison_id, -1)
    release_lease(session, last.comparison_id, user.id)
    status = session.scalar(select(Comparison.status).where(Comparison.id == last.comparison_id))
    if status == ComparisonStatus.retired:  # an admin took the pair out since: withdrawn, not served again
        return Undone(last.comparison_id, skip=False, served=False, strength=last.strength,
                      rationale=last.rationale, flags=tuple(last.flags or ()))
    lease = Lease(comparison_id=last.comparison_id, annotator_id=user.id, is_probe=last.is_probe,
                  is_gold=last.was_gold, expires_at=now + timedelta(seconds=settings.lease_seconds),
                  model_version_id=last.model_version_id, acquisition_strategy=last.acquisition_strategy,
                  acquisition_score=last.acquisition_score)
    session.add(lease)
    _put_first(session, lease, user.id, now)
    return Undone(last.comparison_id, skip=False, served=True, strength=last.strength, rationale=last.rationale,
                  flags=tuple(last.flags or ()))


def _put_first(session: Session, lease: Lease, annotator_id: int, now: datetime) -> None:
    """Put ``lease``'s pair back in front of the annotator, ahead of anything else they hold.

    Leases are served oldest first, so the pair gets a time a second before the oldest of their
    other unskipped leases (only those are served), which keep their order: after U, U, U the
    three undone pairs come back in the order they were first judged, then the pair that was on
    screen (before, the others all got the same time and came back in the order of their ids,
    the pair on screen first and the undone ones last to first)."""
    session.flush()
    oldest = session.scalar(select(func.min(Lease.created_at)).where(
        Lease.annotator_id == annotator_id, Lease.id != lease.id, Lease.skipped.is_(False)))
    lease.created_at = min(oldest, now) - timedelta(seconds=1) if oldest is not None else now
    session.flush()


@dataclass(frozen=True)
class Latest:
    """The annotator's latest judgment, as they saw it: ``shown`` is left/right/tie/both_bad."""

    comparison_id: int
    shown: str
    strength: int | None
    has_rationale: bool
    flags: tuple[str, ...]


def latest_judgment(session: Session, *, actor: Actor, now: datetime | None = None,
                    within: timedelta = timedelta(hours=12)) -> Latest | None:
    """The judgment Undo would take back now, as stored: the annotator's latest live judgment within
    ``within``, unless they skipped a pair after it (Undo then brings back that pair). None otherwise.

    The annotation page shows it after each judgment, so that what was recorded (a strength key
    included) is read back from the database, not from what the page meant to send."""
    now = now or utcnow()
    last = session.scalar(
        select(Judgment).where(Judgment.annotator_id == actor.id, Judgment.state == JudgmentState.active,
                               Judgment.created_at > now - within)
        .order_by(Judgment.id.desc()).limit(1))
    if last is None:
        return None
    skipped_after = session.scalar(
        select(Lease.id).where(Lease.annotator_id == actor.id, Lease.skipped.is_(True),
                               Lease.expires_at > last.created_at).limit(1))
    if skipped_after is not None:
        return None
    if last.choice in (Choice.tie, Choice.both_bad):
        shown = last.choice.value
    else:  # a_on_left is recorded with every judgment made on the page; A was on the left by default
        shown = "left" if (last.choice is Choice.a) == (last.a_on_left is not False) else "right"
    return Latest(last.comparison_id, shown, last.strength, bool(last.rationale), tuple(last.flags or ()))


@dataclass(frozen=True)
class Progress:
    judged_today: int
    judged_total: int
    remaining: int


def progress(session: Session, *, actor: Actor, now: datetime | None = None,
             tz: tzinfo = timezone.utc) -> Progress:
    """What the annotation page shows: judged today (since midnight in ``tz``, the annotator's time zone),
    in total, and pairs left for them."""
    from annotate.queue import remaining_for

    now = now or utcnow()
    start = now.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0).astimezone(timezone.utc)
    base = select(func.count(Judgment.id)).where(Judgment.annotator_id == actor.id,
                                                 Judgment.state == JudgmentState.active)
    return Progress(
        judged_today=session.scalar(base.where(Judgment.created_at >= start)) or 0,
        judged_total=session.scalar(base) or 0,
        remaining=remaining_for(session, actor=actor),
    )
