"""Many annotators draining one queue at once: overlap holds, nothing is lost."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import replace

import pytest
from sqlalchemy import select

from annotate import judgments, queue
from annotate.campaign import get_options
from annotate.db import Database, FairGate, create_db_engine
from annotate.errors import QueueError
from annotate.models import Comparison, ComparisonStatus, Judgment, JudgmentState
from annotate.settings import load_settings
from tests.factories import make_comparisons, make_user

N_PAIRS = 500


def _drain(db: Database, settings, n_annotators: int, overlap: int):
    # Adaptive overlap off (max = overlap): each pair must get exactly `overlap` judgments.
    settings = replace(settings, overlap=overlap, max_overlap=overlap)
    with db.begin() as s:
        actors = [make_user(s, f"worker{i}") for i in range(n_annotators)]
        make_comparisons(s, N_PAIRS, overlap=overlap)
        options = replace(get_options(s, settings), gold_rate=0.0, probe_rate=0.0)

    submitted: list[tuple[int, int, int]] = []  # (judgment id, comparison id, annotator id)
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n_annotators)

    def work(actor):
        try:
            barrier.wait()
            idle = 0
            while True:
                with db.begin() as s:
                    asg = queue.next_comparison(s, settings, options, actor=actor)
                if asg is None:
                    # Nothing free right now: rows may be locked or leased by
                    # others for a moment. An annotator would reload; so do we.
                    idle += 1
                    if idle > 5:
                        return
                    time.sleep(0.1)
                    continue
                idle = 0
                shown = ("left", "right", "tie")[asg.comparison_id % 3]
                with db.begin() as s:
                    done = judgments.submit(s, settings, actor=actor, comparison_id=asg.comparison_id, shown=shown)
                with lock:
                    submitted.append((done.judgment_id, asg.comparison_id, actor.id))
        except BaseException as exc:  # surfaced below; a thread must not die silently
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(a,)) for a in actors]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors[:3]

    with db.read() as s:
        rows = s.execute(select(Judgment.id, Judgment.comparison_id, Judgment.annotator_id)
                         .where(Judgment.state == JudgmentState.active)).all()
        comparisons = s.scalars(select(Comparison)).all()
    stored = {tuple(r) for r in rows}
    assert stored == set(submitted), "every submitted judgment is stored, and nothing else"
    per_pair = Counter(c for _, c, _ in stored)
    pairs_annotator = Counter((c, a) for _, c, a in stored)
    assert max(pairs_annotator.values()) == 1, "no annotator twice on one pair"
    assert max(per_pair.values()) <= overlap, "no pair judged more often than its overlap"
    expected = N_PAIRS * overlap if n_annotators >= overlap else None
    assert len(stored) == expected, "the queue drains completely"
    assert all(c.status is ComparisonStatus.complete and c.judgment_count == overlap for c in comparisons)
    assert len({a for _, _, a in stored}) == n_annotators, "everyone got work"


@pytest.mark.parametrize("overlap", [1, 2])
def test_sqlite_five_annotators(sqlite_db, sqlite_settings, overlap):
    _drain(sqlite_db, sqlite_settings, 5, overlap)


@pytest.mark.postgres
@pytest.mark.parametrize("overlap", [1, 2])
def test_postgres_twenty_annotators(pg_db, tmp_path, pg_clean_url, overlap):
    settings = load_settings(environ={}, data_dir=tmp_path, database_url=pg_clean_url, env="test")
    _drain(pg_db, settings, 20, overlap)


def _served_pair(db, settings):
    """A new annotator and the pair the queue serves them (no gold, no probes): ``(actor, id, options)``."""
    with db.begin() as s:
        actor = make_user(s, "clicker")
        make_comparisons(s, 3)
        options = replace(get_options(s, settings), gold_rate=0.0, probe_rate=0.0)
    with db.begin() as s:
        cid = queue.next_comparison(s, settings, options, actor=actor).comparison_id
    return actor, cid, options


def _submit_at_once(db, settings, actor, cid: int, shown: str, n: int) -> list[str]:
    """``n`` simultaneous submits of one pair (a double click, two tabs): each ``ok`` or ``refused``."""
    start = threading.Barrier(n)
    outcomes = []

    def click():
        start.wait()
        try:
            with db.begin() as s:
                judgments.submit(s, settings, actor=actor, comparison_id=cid, shown=shown)
            outcomes.append("ok")
        except QueueError:
            outcomes.append("refused")

    threads = [threading.Thread(target=click) for _ in range(n)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return sorted(outcomes)


def test_concurrent_double_click_records_once(db, settings):
    actor, cid, _ = _served_pair(db, settings)
    assert _submit_at_once(db, settings, actor, cid, "left", 8) == ["ok"] + ["refused"] * 7
    with db.read() as s:
        assert len(s.scalars(select(Judgment)).all()) == 1


def test_concurrent_double_submit_of_a_probe_records_it_once(db, settings):
    """A probe (a judged pair shown again, sides swapped) has no unique index to fall back on:
    the lease is the one-time token, so simultaneous submits must take it one at a time."""
    from datetime import timedelta

    from sqlalchemy import update

    from annotate.models import utcnow

    actor, cid, options = _served_pair(db, settings)
    with db.begin() as s:
        judgments.submit(s, settings, actor=actor, comparison_id=cid, shown="left")
    with db.begin() as s:
        s.execute(update(Judgment).values(created_at=utcnow() - timedelta(minutes=5)))
    with db.begin() as s:
        served = queue.next_comparison(s, settings, replace(options, probe_rate=1.0), actor=actor)
    assert served.is_probe and served.comparison_id == cid
    assert _submit_at_once(db, settings, actor, cid, "right", 6) == ["ok"] + ["refused"] * 5
    with db.read() as s:
        stored = s.scalars(select(Judgment).where(Judgment.comparison_id == cid)).all()
    assert sorted(j.is_probe for j in stored) == [False, True]


def test_briefly_locked_sqlite_waits_instead_of_failing(sqlite_db, sqlite_settings):
    """Another process holding the write lock for a moment delays a write; it does not fail."""
    import sqlite3
    import time

    db, settings = sqlite_db, sqlite_settings
    with db.begin() as s:
        make_user(s, "first")
    path = settings.sqlalchemy_url.removeprefix("sqlite:///")
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    released = threading.Timer(1.5, lambda: blocker.execute("COMMIT"))
    released.start()
    t0 = time.monotonic()
    with db.begin() as s:
        make_user(s, "second")
    waited = time.monotonic() - t0
    released.join()
    blocker.close()
    assert waited >= 1.0
    with db.read() as s:
        from annotate.models import User
        assert {u.username for u in s.scalars(select(User))} == {"first", "second"}


@pytest.mark.postgres
def test_postgres_claim_waits_for_rows_locked_by_a_long_transaction(pg_db, tmp_path, pg_clean_url):
    """While the retraining job's final transaction holds every open row, a claim waits; it is not 'no work'."""
    from sqlalchemy import text as sql

    settings = load_settings(environ={}, data_dir=tmp_path, database_url=pg_clean_url, env="test")
    with pg_db.begin() as s:
        actor = make_user(s, "waiter")
        make_comparisons(s, 5)
        options = replace(get_options(s, settings), gold_rate=0.0, probe_rate=0.0)
    holder = pg_db.engine.connect()
    tx = holder.begin()
    holder.execute(sql("SELECT id FROM comparisons WHERE status = 'open' FOR UPDATE"))
    timer = threading.Timer(1.0, tx.commit)
    timer.start()
    t0 = time.monotonic()
    with pg_db.begin() as s:
        asg = queue.next_comparison(s, settings, options, actor=actor)
    waited = time.monotonic() - t0
    timer.join()
    holder.close()
    assert asg is not None
    assert waited >= 0.8


@pytest.mark.postgres
def test_postgres_renewal_counts_a_claim_that_holds_the_row(pg_db, tmp_path, pg_clean_url):
    """An expired lease is renewed only when there is room, counted once the comparison row is locked:
    another annotator's claim of the pair, still in progress, is waited for and its lease counted (overlap 1)."""
    from datetime import timedelta

    from sqlalchemy import text as sql
    from sqlalchemy.orm import Session

    from annotate.models import Lease, utcnow

    settings = load_settings(environ={}, data_dir=tmp_path, database_url=pg_clean_url, env="test")
    with pg_db.begin() as s:
        a, b = make_user(s, "a"), make_user(s, "b")
        low, high = make_comparisons(s, 2, priority=lambda i: i)
        options = replace(get_options(s, settings), gold_rate=0.0, probe_rate=0.0)
    t0 = utcnow()
    with pg_db.begin() as s:
        assert queue.next_comparison(s, settings, options, actor=a, now=t0).comparison_id == high
    later = t0 + timedelta(seconds=settings.lease_seconds + 60)

    claim = Session(pg_db.engine)  # b's claim of `high`, not committed yet
    claim.execute(select(Comparison.id).where(Comparison.id == high).with_for_update())
    claim.add(Lease(comparison_id=high, annotator_id=b.id, created_at=later,
                    expires_at=later + timedelta(seconds=settings.lease_seconds)))
    claim.flush()
    served = []

    def ask():
        try:
            with pg_db.begin() as s:
                served.append(queue.next_comparison(s, settings, options, actor=a, now=later).comparison_id)
        except BaseException as exc:  # surfaced by the assertion below
            served.append(exc)

    renewal = threading.Thread(target=ask)
    renewal.start()
    try:
        with pg_db.engine.connect() as watcher:
            def waiting_on_a_lock():
                waiting = watcher.execute(sql("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                              "current_database() AND wait_event_type = 'Lock'")).scalar()
                watcher.rollback()  # a transaction keeps seeing its first snapshot of pg_stat_activity
                return waiting > 0
            _wait_until(lambda: waiting_on_a_lock() or not renewal.is_alive(), timeout=60)
    finally:
        claim.commit()
        claim.close()
    renewal.join(timeout=60)
    assert served == [low], "b's lease fills the overlap: a must not get `high` back"


def _wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.001)


def test_fair_gate_serves_writers_in_arrival_order():
    gate = FairGate()
    assert gate.acquire(timeout=1)
    order: list[int] = []
    threads = []
    for i in range(6):
        def take(i=i):
            assert gate.acquire(timeout=10)
            order.append(i)
            gate.release()
        t = threading.Thread(target=take)
        t.start()
        threads.append(t)
        _wait_until(lambda: len(gate._waiters) == i + 1)  # queued before the next one arrives
    gate.release()
    for t in threads:
        t.join(timeout=10)
    assert order == list(range(6))
    assert gate.acquire(timeout=0.01), "free again once everyone has passed"
    gate.release()


def test_fair_gate_timeout_reentry_and_misuse():
    gate = FairGate()
    assert gate.acquire(timeout=1) and gate.acquire(timeout=1), "re-entrant for its holder"
    result = []
    t = threading.Thread(target=lambda: result.append(gate.acquire(timeout=0.05)))
    t.start()
    t.join()
    assert result == [False] and not gate._waiters, "a timed-out waiter leaves the queue"
    gate.release()
    t = threading.Thread(target=lambda: result.append(gate.acquire(timeout=0.05)))
    t.start()
    t.join()
    assert result == [False, False], "still held once: it was taken twice"
    gate.release()
    with pytest.raises(RuntimeError):
        gate.release()
    t = threading.Thread(target=lambda: (result.append(gate.acquire(timeout=0.05)), gate.release()))
    t.start()
    t.join()
    assert result[-1] is True


def test_sqlite_writers_of_one_process_take_turns(sqlite_db):
    """Writers queue in arrival order behind a long write instead of polling SQLite's lock."""
    db = sqlite_db
    order: list[str] = []
    with db.begin() as s:
        make_user(s, "holder")
        threads = []
        for i in range(4):
            def write(i=i):
                with db.begin() as s2:
                    make_user(s2, f"w{i}")
                    order.append(f"w{i}")
            t = threading.Thread(target=write)
            t.start()
            threads.append(t)
            _wait_until(lambda: len(db._gate._waiters) == i + 1)
    for t in threads:
        t.join(timeout=30)
    assert order == ["w0", "w1", "w2", "w3"]


def _lock_waiters(engine) -> int:
    """Backends of this database waiting for a lock (a fresh snapshot of pg_stat_activity each call)."""
    from sqlalchemy import text as sql

    with engine.connect() as conn:
        return conn.execute(sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                "AND wait_event_type = 'Lock'")).scalar()


@pytest.mark.postgres
def test_postgres_undo_and_lease_renewal_of_one_annotator_do_not_deadlock(pg_db, tmp_path, pg_clean_url):
    """One annotator, two tabs: undo in one while a page load in the other renews expired leases.

    The renewal holds the annotator's expired leases and locks each lease's comparison row in turn;
    a third session holding the first of those rows stops it there. Meanwhile the undo withdraws the
    judgment of the pair the second expired lease (a probe of that judged pair) is on. Before the
    fix the undo locked that comparison row and then waited for the lease row, while the renewal,
    let go, waited for the comparison row: a deadlock, PostgreSQL aborting one of them (undo with
    DeadlockDetected or the page load with the 'queue is being reordered' message). With leases
    locked before comparison rows on every path both complete. Neither runs under transact's
    retries, so a deadlock shows as an error here.
    """
    from datetime import timedelta

    from sqlalchemy.orm import Session

    from annotate.models import Lease, utcnow

    settings = load_settings(environ={}, data_dir=tmp_path, database_url=pg_clean_url, env="test")
    t0 = utcnow()
    with pg_db.begin() as s:
        a, b = make_user(s, "two-tabs"), make_user(s, "other")
        filled, judged, _ = make_comparisons(s, 3)
        options = replace(get_options(s, settings), gold_rate=0.0, probe_rate=0.0)
    with pg_db.begin() as s:
        judgments.submit(s, settings, actor=b, comparison_id=filled, shown="tie", now=t0)  # no room left for a
        judgments.submit(s, settings, actor=a, comparison_id=judged, shown="left", now=t0)
        expires = t0 + timedelta(seconds=settings.lease_seconds)
        s.add(Lease(comparison_id=filled, annotator_id=a.id, created_at=t0, expires_at=expires))
        s.add(Lease(comparison_id=judged, annotator_id=a.id, is_probe=True, created_at=t0 + timedelta(seconds=1),
                    expires_at=expires))
    later = t0 + timedelta(seconds=settings.lease_seconds + 60)

    outcome: dict[str, object] = {}

    def page_load():
        try:
            with pg_db.begin() as s:
                outcome["served"] = queue.next_comparison(s, settings, options, actor=a, now=later).comparison_id
        except BaseException as exc:  # surfaced by the assertions below
            outcome["served"] = exc

    def undo():
        try:
            with pg_db.begin() as s:
                outcome["undone"] = judgments.undo_last_action(s, settings, actor=a, now=later).comparison_id
        except BaseException as exc:
            outcome["undone"] = exc

    blocker = Session(pg_db.engine)
    blocker.execute(select(Comparison.id).where(Comparison.id == filled).with_for_update())
    renewal = threading.Thread(target=page_load)
    undoing = threading.Thread(target=undo)
    try:
        renewal.start()
        _wait_until(lambda: _lock_waiters(pg_db.engine) == 1 or not renewal.is_alive(), timeout=60)
        undoing.start()
        _wait_until(lambda: _lock_waiters(pg_db.engine) == 2 or not undoing.is_alive(), timeout=60)
    finally:
        blocker.rollback()
        blocker.close()
    renewal.join(timeout=60)
    undoing.join(timeout=60)
    assert not renewal.is_alive() and not undoing.is_alive()
    assert outcome == {"served": judged, "undone": judged}, outcome
