"""The annotation queue: which comparison an annotator judges next.

A comparison is served to an annotator when it is open, needs more judgments,
has not been judged (or skipped) by them, and is not leased to others beyond
what its overlap allows; highest priority first. The claim inserts a lease.

A lease that ran out while its pair was on screen is renewed at the
annotator's next request when the pair is still theirs to judge (open, and
with room under its overlap), so the pair does not change under them. When
there is no room the expired lease hides nothing: the pair can be claimed
again once it has room.

Concurrency: on PostgreSQL candidate rows are locked with ``FOR UPDATE SKIP
LOCKED`` and the capacity is re-counted by a fresh statement *after* the lock
is held (under READ COMMITTED a new statement sees every lease committed by
whoever held the lock before). Submitting a judgment updates the comparison
row, so it serialises with claims on that row. Renewing an expired lease
waits for the comparison row rather than skipping it (skipping would swap the
pair on screen), and re-counts the same way. On SQLite every write
transaction is ``BEGIN IMMEDIATE``, which serialises writers outright.

Lock order, on every path that writes for an annotator: their user row first
(:func:`lock_annotator`, which then locks their unskipped lease rows in id order),
then the judgment row, then comparison rows. The user row makes one annotator's
tabs take turns: locking only the lease rows that exist when a transaction
starts is not enough, since another tab can commit a new lease meanwhile (a
claim, when there was none to wait for) that a third tab then locks and judges,
waiting for the running counts (``annotate.rollups``) the first one updated, while
the first one (an undo putting its pair first) waits for that lease: a deadlock.
A probe locks the judgment it repeats, as undo does, so the two cannot both
lease the pair. Other annotators and the retraining job never lock a user row.

Between annotators: a renewal unlocks (savepoint rollback) each comparison row
whose lease it cannot renew before it locks the next, so it waits holding no
comparison row, and two annotators whose expired leases are on the same pairs
cannot deadlock. Likewise a claim waits holding no comparison row: the
retraining job's rewrite locks every open row, so a claim that kept a row while
it waited for one the rewrite holds would deadlock with it. Rows a claim locked
without taking one (found full when re-counted) are unlocked (savepoint
rollback) before it waits, and it waits for the best row by its id, alone (see
:func:`_claim`). The savepoint rolled back must be the one that locked the row, not an
outer one around a nested savepoint that locked it and was released: a rewrite that began
waiting for the row meanwhile would wait for the claim's whole transaction from then on
(see :func:`_lock_waiting`), though the row was unlocked.

Gold pairs and self-consistency probes are mixed in at the configured rates;
both look exactly like any other pair in the UI.
"""

from __future__ import annotations

import hashlib
import random
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from annotate.accounts import Actor, release_leases, require_active
from annotate.campaign import CampaignOptions
from annotate.db import is_transient
from annotate.errors import NotFound, PermissionDenied, QueueError
from annotate.models import (
    Comparison,
    ComparisonStatus,
    Judgment,
    JudgmentState,
    Lease,
    Prompt,
    Response,
    User,
    retired_comparison_ids,
    utcnow,
)
from annotate.settings import Settings

CANDIDATES_PER_CLAIM = 8
CLAIM_WAITS = 3
"""Rows a claim waits for, one after the other, when every free one is locked."""
REORDERING = "the queue is being reordered by the retraining job; try again in a few seconds"


@dataclass(frozen=True)
class Assignment:
    """A pair as one annotator sees it: left/right already resolved."""

    comparison_id: int
    prompt_text: str | None
    prompt_messages: list[dict[str, Any]] | None
    left_text: str
    right_text: str
    a_on_left: bool
    expires_at: datetime
    is_probe: bool

    @property
    def is_chat(self) -> bool:
        return self.prompt_messages is not None


def a_on_left_for(comparison_id: int, annotator_id: int, seed: int) -> bool:
    """Which side response A is shown on: random per (comparison, annotator), stable on reload."""
    digest = hashlib.sha256(f"{seed}:{comparison_id}:{annotator_id}".encode()).digest()
    return digest[0] & 1 == 1


def _live_judgment(comparison_id, annotator_id):
    return exists().where(
        Judgment.comparison_id == comparison_id,
        Judgment.annotator_id == annotator_id,
        Judgment.state == JudgmentState.active,
        Judgment.is_probe.is_(False),
    )


def _own_lease(comparison_id, annotator_id, now):
    """A lease of mine that keeps the pair out of my claims: a live one, or one I skipped.

    An expired one does not: renewing it needs room, and without room it must not
    hide the pair from me once room returns."""
    return exists().where(Lease.comparison_id == comparison_id, Lease.annotator_id == annotator_id,
                          or_(Lease.skipped.is_(True), Lease.expires_at > now))


def _others_live_leases(comparison_id, annotator_id, now):
    return (
        select(func.count(Lease.id))
        .where(Lease.comparison_id == comparison_id, Lease.annotator_id != annotator_id,
               Lease.expires_at > now, Lease.is_probe.is_(False))
        .scalar_subquery()
    )


def _draw(seed: int, annotator_id: int, n_done: int, salt: str) -> float:
    return random.Random(f"{seed}:{annotator_id}:{n_done}:{salt}").random()


def next_comparison(session: Session, settings: Settings, options: CampaignOptions, *,
                    actor: Actor, now: datetime | None = None) -> Assignment | None:
    """Lease and return the next comparison for ``actor``, or None when nothing is left.

    A live lease the annotator already holds is returned first, so a reload (or
    a retrain that reorders the queue) never changes the pair on screen; then
    one of theirs that expired, renewed if they may still judge its pair.
    """
    user = require_active(session, actor)
    now = now or utcnow()
    lock_annotator(session, user.id)  # before any comparison row: see the lock order above
    held = session.scalar(  # not a pair an admin retired after this lease was made (a probe racing the retire)
        select(Lease).where(Lease.annotator_id == user.id, Lease.expires_at > now, Lease.skipped.is_(False),
                            Lease.comparison_id.not_in(retired_comparison_ids()))
        .order_by(Lease.created_at, Lease.id).limit(1))
    if held is not None:
        return _assignment(session, held, settings.queue_seed)
    renewed = _renew_expired(session, settings, user.id, now)
    if renewed is not None:
        return _assignment(session, renewed, settings.queue_seed)

    n_done = session.scalar(select(func.count(Judgment.id)).where(Judgment.annotator_id == user.id)) or 0
    lease = None
    if n_done and _draw(settings.queue_seed, user.id, n_done, "probe") < options.probe_rate:
        lease = _claim_probe(session, settings, user.id, now)
    if lease is None and _draw(settings.queue_seed, user.id, n_done, "gold") < options.gold_rate:
        lease = _claim(session, settings, user.id, now, gold=True)
    if lease is None:
        lease = _claim(session, settings, user.id, now, gold=False)
    return _assignment(session, lease, settings.queue_seed) if lease is not None else None


def candidate_query(annotator_id: int, now: datetime, *, gold: bool, dialect: str, skip_locked: bool = True,
                    limit: int = CANDIDATES_PER_CLAIM, lock: bool = True, only: int | None = None):
    """Open comparisons this annotator may take, best first (served by ix_comparisons_queue).

    Locked on PostgreSQL unless ``lock`` is False; ``only`` keeps just that comparison."""
    query = (
        select(Comparison.id)
        .where(
            Comparison.status == ComparisonStatus.open,
            Comparison.is_gold.is_(gold),
            ~_live_judgment(Comparison.id, annotator_id),
            ~_own_lease(Comparison.id, annotator_id, now),
        )
        .order_by(Comparison.priority.desc(), Comparison.id.desc())
        .limit(limit)
    )
    if not gold:
        query = query.where(Comparison.judgment_count + _others_live_leases(Comparison.id, annotator_id, now)
                            < Comparison.overlap_target)
    if only is not None:
        query = query.where(Comparison.id == only)
    if dialect == "postgresql" and lock:
        query = query.with_for_update(skip_locked=skip_locked, of=Comparison)
    return query


def _claim(session: Session, settings: Settings, annotator_id: int, now: datetime, *, gold: bool) -> Lease | None:
    dialect = session.bind.dialect.name

    def candidates(**options):
        return session.scalars(candidate_query(annotator_id, now, gold=gold, dialect=dialect, **options)).all()

    if dialect != "postgresql":
        return _claim_from(session, settings, annotator_id, now, candidates(), gold=gold)

    def claim_or_unlock(locked_ids) -> Lease | None:
        # A savepoint rolled back when nothing was claimed unlocks every row its query locked
        # (found full, or no longer a candidate after a wait), so no later wait holds them.
        with session.begin_nested() as attempt:
            lease = _claim_from(session, settings, annotator_id, now, locked_ids(), gold=gold)
            if lease is None:
                attempt.rollback()
        return lease

    def wait_for(comparison_id):
        # Runs in claim_or_unlock's savepoint, not a nested one of its own: see _lock_waiting.
        with _lock_waiting(session):
            return candidates(skip_locked=False, limit=1, only=comparison_id)

    lease = claim_or_unlock(candidates)
    for _ in range(CLAIM_WAITS):
        if lease is not None:
            break
        # Every free row was locked: by other claims (milliseconds) or by the
        # retraining job's final transaction, which rewrites all priorities at
        # once (seconds). Wait for the best row instead of reporting an empty
        # queue, but not forever, and for that row alone: a query that waits
        # for each row in turn keeps the ones that stopped being candidates
        # while it waited, locked, and the job wants them too.
        best = session.scalar(candidate_query(annotator_id, now, gold=gold, dialect=dialect, lock=False, limit=1))
        if best is None:
            break
        lease = claim_or_unlock(lambda: wait_for(best))
        if lease is None:
            # Others waited for the same row and the first of them filled it; the rows
            # that were locked may be free now.
            lease = claim_or_unlock(candidates)
    return lease


def lock_annotator(session: Session, annotator_id: int) -> None:
    """Lock the annotator's user row, then their unskipped lease rows in id order (PostgreSQL;
    SQLite serialises writers).

    The first lock of every transaction that writes for the annotator (serve, submit,
    skip, undo), so that their tabs take turns and lease rows come before comparison
    rows (the module's lock order). ``FOR NO KEY UPDATE``: rows that merely refer to
    the user (their judgments and leases, audit events) do not wait for it. Raises
    PermissionDenied if the account was deactivated while this waited for its row.
    """
    if session.bind.dialect.name != "postgresql":
        return
    active = session.scalar(select(User.active).where(User.id == annotator_id).with_for_update(key_share=True))
    if not active:
        # Deactivated while this waited for the row (the caller checked before): deactivation released
        # the user's leases, so a claim now would hold a pair from everyone, and a submit would find no
        # lease and record a judgment of an account that is no longer active.
        raise PermissionDenied("this account is deactivated")
    session.execute(select(Lease.id).where(Lease.annotator_id == annotator_id, Lease.skipped.is_(False))
                    .order_by(Lease.id).with_for_update())


def _has_room(session: Session, comparison_id: int, annotator_id: int, now: datetime) -> bool:
    """Whether the pair's overlap leaves room for this annotator: judgments plus others' live leases,
    counted by fresh statements (call it with the comparison row locked)."""
    others = session.scalar(
        select(func.count(Lease.id)).where(
            Lease.comparison_id == comparison_id, Lease.annotator_id != annotator_id,
            Lease.expires_at > now, Lease.is_probe.is_(False)))
    count, target = session.execute(
        select(Comparison.judgment_count, Comparison.overlap_target).where(Comparison.id == comparison_id)
        .execution_options(populate_existing=True)).one()
    return count + others < target


def _lock_comparison(session: Session, comparison_id: int) -> Comparison | None:
    """The comparison row, locked on PostgreSQL (waiting for a claim or a retrain that holds it)."""
    query = select(Comparison).where(Comparison.id == comparison_id).execution_options(populate_existing=True)
    if session.bind.dialect.name != "postgresql":
        return session.scalar(query)
    with _lock_waiting(session):
        return session.scalar(query.with_for_update(of=Comparison))


@contextmanager
def _lock_waiting(session: Session):
    """Wait for row locks at most 20 s inside the block; a timeout is :data:`REORDERING` (PostgreSQL).

    Deliberately no savepoint of its own: the row must be locked by the savepoint that is rolled
    back when it is not taken (the caller's). A lock taken in a nested savepoint that is then
    released belongs to the whole transaction as far as a waiter is concerned: PostgreSQL
    (``XactLockTableWait``) moves a backend that waited for the row from the ended subtransaction
    on to the top-level one, and it keeps waiting for that even after the outer savepoint is
    rolled back and the row unlocked. The retraining job's rewrite, waiting so, then deadlocks
    with the claim's next wait. After a timeout the caller's savepoint (or transaction) is aborted;
    the QueueError rolls it back on its way out. A deadlock or serialization failure met while
    waiting is not a timeout: it propagates, so that ``Database.transact`` runs the unit of work
    again (the aborted attempt wrote nothing).
    """
    try:
        session.execute(text("SET LOCAL lock_timeout = '20s'"))
        yield
        session.execute(text("SET LOCAL lock_timeout = 0"))
    except OperationalError as exc:
        if is_transient(exc):
            raise
        raise QueueError(REORDERING) from None


def renew_lease(session: Session, settings: Settings, lease: Lease, now: datetime) -> bool:
    """Extend ``lease`` (not skipped, expired) if its annotator may still judge its pair; False if not.

    A probe needs the judgment it repeats to be live; any other pair must be open,
    not judged by them, and (unless gold) have room, counted with the row locked as
    a claim does. The caller holds the annotator's lease rows (:func:`lock_annotator`): the
    comparison row is locked after them.
    """
    comparison = _lock_comparison(session, lease.comparison_id)
    judged = session.scalar(select(_live_judgment(lease.comparison_id, lease.annotator_id)))
    if lease.is_probe:
        servable = judged and comparison is not None and comparison.status is not ComparisonStatus.retired
    else:
        servable = (comparison is not None and comparison.status is ComparisonStatus.open and not judged
                    and (comparison.is_gold or _has_room(session, comparison.id, lease.annotator_id, now)))
    if servable:
        lease.expires_at = now + timedelta(seconds=settings.lease_seconds)
        session.flush()
    return bool(servable)


def _renew_expired(session: Session, settings: Settings, annotator_id: int, now: datetime) -> Lease | None:
    """The annotator's oldest expired (not skipped) lease that can be renewed, renewed; else None.

    The ones tried first that cannot be renewed (their pair closed, full, or judged) are deleted.

    The caller holds the annotator's lease rows (:func:`lock_annotator`). Each try runs in a
    savepoint that is rolled back when the lease cannot be renewed, which unlocks its
    comparison row: a renewal holds at most one comparison row while it waits for the next,
    so two annotators renewing leases on the same pairs in opposite orders cannot deadlock.
    """
    expired = session.scalars(
        select(Lease).where(Lease.annotator_id == annotator_id, Lease.expires_at <= now, Lease.skipped.is_(False))
        .order_by(Lease.created_at, Lease.id).limit(CANDIDATES_PER_CLAIM)).all()
    for lease in expired:
        with session.begin_nested() as attempt:
            if renew_lease(session, settings, lease, now):
                return lease
            attempt.rollback()
        # Dropped: kept, the oldest of such leases were tried (a lock and a count each) at every claim, and
        # once there were CANDIDATES_PER_CLAIM of them none behind was ever renewed. The pair is not hidden
        # by an expired lease, so it comes back in the queue's order once it has room.
        session.delete(lease)
        session.flush()
    return None


def _claim_from(session: Session, settings: Settings, annotator_id: int, now: datetime, comparison_ids: list[int],
                *, gold: bool) -> Lease | None:
    """Lease the first of ``comparison_ids`` (locked by the candidate query) that still has room."""
    for comparison_id in comparison_ids:
        comparison = session.get(Comparison, comparison_id)
        # Re-count with a fresh statement now that the row lock is held.
        if not gold and not _has_room(session, comparison_id, annotator_id, now):
            continue
        release_lease(session, comparison_id, annotator_id)  # an expired lease of mine (one row per pair)
        lease = Lease(
            comparison_id=comparison_id, annotator_id=annotator_id,
            expires_at=now + timedelta(seconds=settings.lease_seconds), is_gold=gold,
            model_version_id=comparison.priority_model_version_id,
            acquisition_strategy=comparison.priority_strategy,
            acquisition_score=comparison.priority_score,
        )
        session.add(lease)
        session.flush()
        return lease
    return None


PROBE_STRATEGY = "probe"
"""The ``acquisition_strategy`` a self-consistency probe's judgment records (no model version, no score)."""


def _claim_probe(session: Session, settings: Settings, annotator_id: int, now: datetime) -> Lease | None:
    """Re-serve one of the annotator's own judged pairs (sides swapped), once; never a pair they skipped
    or one an admin retired.

    The judgment it repeats is locked (after the lease rows, as the lock order says) and must
    still be live: an undo in another tab locks it before it re-leases the pair, so the two
    take turns instead of both inserting the pair's lease (or the probe replacing the undo's).
    """
    probed = select(Judgment.comparison_id).where(Judgment.annotator_id == annotator_id, Judgment.is_probe.is_(True))
    skipped = select(Lease.comparison_id).where(Lease.annotator_id == annotator_id, Lease.skipped.is_(True))
    candidates = session.scalars(
        select(Judgment.comparison_id)
        .where(Judgment.annotator_id == annotator_id, Judgment.state == JudgmentState.active,
               Judgment.is_probe.is_(False), Judgment.comparison_id.not_in(probed),
               Judgment.comparison_id.not_in(skipped), Judgment.comparison_id.not_in(retired_comparison_ids()),
               Judgment.created_at < now - timedelta(minutes=2))
        .order_by(Judgment.id.desc()).limit(50)).all()
    if not candidates:
        return None
    rng = random.Random(f"{settings.queue_seed}:{annotator_id}:{len(candidates)}:probe-pick")
    comparison_id = rng.choice(candidates)
    if session.bind.dialect.name == "postgresql" and session.scalar(
            select(Judgment.id).where(Judgment.comparison_id == comparison_id, Judgment.annotator_id == annotator_id,
                                      Judgment.state == JudgmentState.active, Judgment.is_probe.is_(False))
            .with_for_update()) is None:
        return None  # withdrawn by an undo in another tab since it was picked; that undo leased the pair back
    session.execute(delete(Lease).where(Lease.comparison_id == comparison_id, Lease.annotator_id == annotator_id))
    # Provenance: the probe rate put it in front of them, not a model (a probe's judgment trains nothing).
    lease = Lease(comparison_id=comparison_id, annotator_id=annotator_id, is_probe=True,
                  expires_at=now + timedelta(seconds=settings.lease_seconds), acquisition_strategy=PROBE_STRATEGY)
    session.add(lease)
    session.flush()
    return lease


def shown_a_on_left(session: Session, lease: Lease, seed: int) -> bool:
    """Side of A for this lease; a probe swaps the side the original judgment saw."""
    if not lease.is_probe:
        return a_on_left_for(lease.comparison_id, lease.annotator_id, seed)
    original = session.scalar(
        select(Judgment.a_on_left).where(
            Judgment.comparison_id == lease.comparison_id, Judgment.annotator_id == lease.annotator_id,
            Judgment.is_probe.is_(False), Judgment.state == JudgmentState.active))
    if original is None:
        original = a_on_left_for(lease.comparison_id, lease.annotator_id, seed)
    return not original


def _assignment(session: Session, lease: Lease, seed: int) -> Assignment:
    comparison = session.get(Comparison, lease.comparison_id)
    prompt = session.get(Prompt, comparison.prompt_id)
    text_a = session.scalar(select(Response.text).where(Response.id == comparison.response_a_id))
    text_b = session.scalar(select(Response.text).where(Response.id == comparison.response_b_id))
    a_left = shown_a_on_left(session, lease, seed)  # the side submit reads the press against
    return Assignment(
        comparison_id=comparison.id, prompt_text=prompt.text, prompt_messages=prompt.messages,
        left_text=text_a if a_left else text_b, right_text=text_b if a_left else text_a,
        a_on_left=a_left, expires_at=lease.expires_at, is_probe=lease.is_probe)


def release_lease(session: Session, comparison_id: int, annotator_id: int) -> None:
    session.execute(delete(Lease).where(Lease.comparison_id == comparison_id, Lease.annotator_id == annotator_id))


def give_back(session: Session, *, actor: Actor) -> int:
    """Release every pair ``actor`` holds (the one on screen, those Undo set aside), so others are served
    them now rather than when their leases lapse: what Log out does. Skipped pairs stay skipped.
    Returns how many. A judgment pressed afterwards in a tab still open is recorded all the same."""
    lock_annotator(session, actor.id)
    return release_leases(session, Lease.annotator_id == actor.id)


def skip(session: Session, *, actor: Actor, comparison_id: int, now: datetime | None = None) -> None:
    """Release the pair to others and never serve it to this annotator again."""
    require_active(session, actor)
    now = now or utcnow()
    lock_annotator(session, actor.id)
    # Locked, so a submit (or undo) of the pair in another tab that deletes the lease is waited for
    # and the lease is then found gone, not updated in place of nothing at commit.
    lease = session.scalar(select(Lease).where(Lease.comparison_id == comparison_id, Lease.annotator_id == actor.id)
                           .with_for_update())
    if lease is None:
        raise NotFound("this pair is not assigned to you any more, so it was not skipped; here is the next one")
    lease.skipped = True
    lease.expires_at = now


def queue_depth(session: Session) -> int:
    """Open, non-gold comparisons that still need judgments."""
    return session.scalar(select(func.count(Comparison.id)).where(
        Comparison.status == ComparisonStatus.open, Comparison.is_gold.is_(False))) or 0


def remaining_for(session: Session, *, actor: Actor) -> int:
    """Open comparisons this annotator could still be served (ignoring others' leases)."""
    return session.scalar(select(func.count(Comparison.id)).where(
        Comparison.status == ComparisonStatus.open, Comparison.is_gold.is_(False),
        ~_live_judgment(Comparison.id, actor.id),
        ~exists().where(and_(Lease.comparison_id == Comparison.id, Lease.annotator_id == actor.id,
                             Lease.skipped.is_(True))))) or 0


__all__ = ["Assignment", "a_on_left_for", "next_comparison", "skip", "queue_depth", "remaining_for",
           "release_lease", "renew_lease", "lock_annotator"]
