"""Races between one annotator's tabs, and between annotators, forced into one interleaving.

On PostgreSQL one transaction is held open (or paused at a statement) while another runs
into it; each test names the error the interleaving produced before its fix. SQLite runs
one writer at a time, so there the same actions can only happen one after the other: the
serial tests check that they end in the same state on both backends.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from annotate import judgments, queue
from annotate.campaign import get_options
from annotate.errors import NotFound
from annotate.models import Comparison, Judgment, JudgmentState, Lease, User, utcnow
from annotate.settings import load_settings
from tests.factories import make_comparisons, make_user
from tests.test_concurrency import _lock_waiters, _wait_until


@pytest.fixture
def pg_settings(tmp_path, pg_clean_url):
    return load_settings(environ={}, data_dir=tmp_path, database_url=pg_clean_url, env="test")


def _in_thread(db, work) -> tuple[threading.Thread, list]:
    """Start ``work(session)`` in its own unit of work on another thread: ``(thread, [result or exception])``."""
    out: list = []

    def run():
        try:
            with db.begin() as s:
                result = work(s)
            out.append(result)  # committed
        except BaseException as exc:  # surfaced by the caller's assertions
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def _second_runs_into_first(db, first, second):
    """``first(session)`` done but not committed; ``second`` started and run until it finishes or waits
    for a lock; then ``first`` commits. ``(first's result, second's result or exception)``."""
    held = Session(db.engine)
    try:
        first_result = first(held)
        held.flush()
        thread, out = _in_thread(db, second)
        _wait_until(lambda: _lock_waiters(db.engine) > 0 or not thread.is_alive(), timeout=60)
        held.commit()
    finally:
        held.close()
    thread.join(timeout=60)
    assert not thread.is_alive()
    return first_result, out[0]


@contextmanager
def _paused_before(db, prefix: str, work, *, wait: bool = True):
    """``work(session)`` on another thread (as :func:`_in_thread`), stopped just before it sends a
    statement starting with ``prefix``: yields ``(thread, [result or exception], paused, go)``. With
    ``wait`` the block starts once it is paused; ``go.set()`` lets it go on (so does leaving the block)."""
    paused, go, threads = threading.Event(), threading.Event(), []

    def pause(conn, cursor, statement, *args):
        if threads and threading.current_thread() is threads[0] and statement.startswith(prefix):
            paused.set()
            assert go.wait(timeout=60)

    def registered(session):
        threads.append(threading.current_thread())
        return work(session)

    event.listen(db.engine, "before_cursor_execute", pause)
    try:
        thread, out = _in_thread(db, registered)
        assert not wait or paused.wait(timeout=60)
        yield thread, out, paused, go
    finally:
        go.set()
        event.remove(db.engine, "before_cursor_execute", pause)


def _page_loads_behind(db, lock_rows, actors, load) -> list:
    """Hold ``lock_rows`` (a ``FOR UPDATE`` select) in a third session, start ``load(session, actor)``
    for each actor in turn, each once the previous one waits on a lock, then let go: their results."""
    blocker = Session(db.engine)
    loads = []
    try:
        blocker.execute(lock_rows)
        for waiters, actor in enumerate(actors, start=1):
            loads.append(_in_thread(db, lambda s, actor=actor: load(s, actor)))
            _wait_until(lambda: _lock_waiters(db.engine) == waiters or not loads[-1][0].is_alive(), timeout=60)
    finally:
        blocker.rollback()
        blocker.close()
    for thread, _ in loads:
        thread.join(timeout=60)
    return [out[0] for _, out in loads]


# -- a probe of a judged pair, and an undo of that judgment (or a second probe) in another tab ------------

def _judged_pair(db, settings):
    """An annotator with one judgment (old enough to be probed), no leases, and one fresh pair:
    ``(actor, judged, fresh, options with every claim a probe, now)``."""
    now = utcnow()
    with db.begin() as s:
        actor = make_user(s, "two-tabs")
        judged, fresh = make_comparisons(s, 2)
        options = replace(get_options(s, settings), gold_rate=0.0, probe_rate=1.0)
    with db.begin() as s:
        judgments.submit(s, settings, actor=actor, comparison_id=judged, shown="left", now=now - timedelta(minutes=10))
    return actor, judged, fresh, options, now


def _state_of(db, actor, comparison_id):
    """``(judgment states, [(is_probe, live) of each lease])`` of ``actor`` on the pair."""
    with db.read() as s:
        states = s.scalars(select(Judgment.state).where(Judgment.comparison_id == comparison_id,
                                                        Judgment.annotator_id == actor.id)).all()
        leases = s.execute(select(Lease.is_probe, Lease.expires_at).where(
            Lease.comparison_id == comparison_id, Lease.annotator_id == actor.id)).all()
    return states, [(is_probe, expires > utcnow()) for is_probe, expires in leases]


UNDONE = ([JudgmentState.retracted], [(False, True)])
"""After an undo of the judgment: it is withdrawn and the pair is leased back as an ordinary pair
(a probe lease would record the new answer as a probe, not counted, and map the sides swapped)."""


@pytest.mark.postgres
def test_postgres_undo_in_one_tab_while_another_claims_a_probe_of_that_pair(pg_db, pg_settings):
    """Before the fix the probe's lease insert waited on the undo's uncommitted lease of the same
    pair and failed with an IntegrityError (uq leases comparison/annotator): a traceback on the page.
    The page load now waits for the undo (the annotator's tabs take turns on their user row) and
    shows the pair the undo put back first, as an ordinary pair."""
    actor, judged, fresh, options, now = _judged_pair(pg_db, pg_settings)
    undone, served = _second_runs_into_first(
        pg_db,
        lambda s: judgments.undo_last_action(s, pg_settings, actor=actor, now=now).comparison_id,
        lambda s: queue.next_comparison(s, pg_settings, options, actor=actor, now=now))
    assert (undone, served.comparison_id, served.is_probe) == (judged, judged, False)
    assert _state_of(pg_db, actor, judged) == UNDONE


@pytest.mark.postgres
def test_postgres_probe_claimed_in_one_tab_while_another_undoes_its_judgment(pg_db, pg_settings):
    """Before the fix the undo's lease insert waited on the probe's uncommitted lease and failed
    with an IntegrityError; now it waits for the judgment row and replaces the probe lease."""
    actor, judged, _, options, now = _judged_pair(pg_db, pg_settings)
    served, undone = _second_runs_into_first(
        pg_db,
        lambda s: queue.next_comparison(s, pg_settings, options, actor=actor, now=now),
        lambda s: judgments.undo_last_action(s, pg_settings, actor=actor, now=now).comparison_id)
    assert (served.comparison_id, served.is_probe, undone) == (judged, True, judged)
    assert _state_of(pg_db, actor, judged) == UNDONE


@pytest.mark.postgres
def test_postgres_two_tabs_claim_the_same_probe(pg_db, pg_settings):
    """Both tabs draw the same probe (same seed, same count). Before the fix the second insert
    failed with an IntegrityError; now it waits for the first and both show the probe."""
    actor, judged, _, options, now = _judged_pair(pg_db, pg_settings)

    def load(s):
        asg = queue.next_comparison(s, pg_settings, options, actor=actor, now=now)
        return asg.comparison_id, asg.is_probe, asg.a_on_left

    first, second = _second_runs_into_first(pg_db, load, load)
    assert first == second and first[:2] == (judged, True)
    assert _state_of(pg_db, actor, judged) == ([JudgmentState.active], [(True, True)])


@pytest.mark.postgres
def test_postgres_undo_lands_between_a_probe_pick_and_its_lease(pg_db, pg_settings):
    """The undo commits after the probe picked the judged pair and before it wrote its lease.
    Before the fix the probe deleted the undo's fresh lease and leased the pair as a probe of a
    withdrawn judgment, so the re-judgment would have been stored as a probe (not counted, sides
    swapped). Now the undo waits for the probe's transaction (the annotator's user row, and the judgment
    row it holds), and replaces the probe."""
    db = pg_db
    actor, judged, _, options, now = _judged_pair(db, pg_settings)
    with _paused_before(db, "DELETE FROM leases", lambda s: queue.next_comparison(
            s, pg_settings, options, actor=actor, now=now)) as (load, served, _, go):
        undo, undone = _in_thread(db, lambda s: judgments.undo_last_action(s, pg_settings, actor=actor,
                                                                           now=now).comparison_id)
        _wait_until(lambda: _lock_waiters(db.engine) > 0 or not undo.is_alive(), timeout=60)
        go.set()
        load.join(timeout=60)
        undo.join(timeout=60)
    assert (served[0].comparison_id, undone[0]) == (judged, judged)
    assert _state_of(db, actor, judged) == UNDONE


@pytest.mark.parametrize("action", ["serve", "submit"])
def test_postgres_action_that_waited_out_a_deactivation_is_refused(pg_db, pg_settings, action):
    """Deactivation releases the account's leases. A page load (or a judgment) of that account that passed
    its active check and then waited for the user row behind the deactivation went on: the load leased a
    new pair, held from everyone for the lease time; the judgment found no lease and was recorded as a
    lease-less judgment. Both are refused now, and nothing is left leased or recorded."""
    from annotate import accounts
    from annotate.errors import PermissionDenied

    options = replace(get_options_for(pg_db, pg_settings), gold_rate=0.0, probe_rate=0.0)
    with pg_db.begin() as s:
        ann, boss = make_user(s, "ann"), make_user(s, "boss", role="admin")
        make_comparisons(s, 3)
    with pg_db.begin() as s:
        held = queue.next_comparison(s, pg_settings, options, actor=ann).comparison_id

    def deactivate(session):
        accounts.set_active(session, "ann", False, actor=boss)

    def work(session):
        if action == "serve":
            return queue.next_comparison(session, pg_settings, options, actor=ann)
        return judgments.submit(session, pg_settings, actor=ann, comparison_id=held, shown="left")

    _, result = _second_runs_into_first(pg_db, deactivate, work)
    assert isinstance(result, PermissionDenied), result
    with pg_db.read() as s:
        assert s.scalars(select(Lease).where(Lease.annotator_id == ann.id)).all() == []
        assert s.scalars(select(Judgment)).all() == []


def get_options_for(db, settings):
    with db.read() as s:
        return get_options(s, settings)


def test_undo_and_probe_claim_one_after_the_other(db, settings):
    """The serial orders of the races above (all SQLite can do): the undone pair comes back as an
    ordinary pair, whichever came first."""
    actor, judged, _, options, now = _judged_pair(db, settings)
    with db.begin() as s:
        assert queue.next_comparison(s, settings, options, actor=actor, now=now).is_probe
    with db.begin() as s:
        assert judgments.undo_last_action(s, settings, actor=actor, now=now).comparison_id == judged
    assert _state_of(db, actor, judged) == UNDONE
    with db.begin() as s:
        again = queue.next_comparison(s, settings, options, actor=actor, now=now)
    assert (again.comparison_id, again.is_probe) == (judged, False)
    assert _state_of(db, actor, judged) == UNDONE


def test_a_press_on_sides_that_another_tab_swapped_is_not_saved(db, settings):
    """Tab 1 shows the probe of a judged pair (sides swapped); tab 2 undoes that judgment, so the
    pair is leased back as an ordinary pair with the original sides. Tab 1's press was read
    against the new lease's sides, recording the response the annotator did not pick; now it is
    refused, and the pair is judged as it is shown next."""
    from annotate.errors import QueueError
    from annotate.models import Choice

    actor, judged, _, options, now = _judged_pair(db, settings)
    with db.begin() as s:
        probe = queue.next_comparison(s, settings, options, actor=actor, now=now)
    assert (probe.comparison_id, probe.is_probe) == (judged, True)
    with db.begin() as s:
        judgments.undo_last_action(s, settings, actor=actor, now=now)
    with pytest.raises(QueueError, match="swapped its sides"), db.begin() as s:
        judgments.submit(s, settings, actor=actor, comparison_id=judged, shown="left",
                         a_on_left_shown=probe.a_on_left, now=now)
    assert _state_of(db, actor, judged) == UNDONE
    with db.begin() as s:
        again = queue.next_comparison(s, settings, options, actor=actor, now=now)
        assert (again.comparison_id, again.is_probe, again.a_on_left) == (judged, False, not probe.a_on_left)
        judgments.submit(s, settings, actor=actor, comparison_id=judged, shown="left",
                         a_on_left_shown=again.a_on_left, now=now)
    with db.read() as s:
        live = s.scalar(select(Judgment).where(Judgment.comparison_id == judged, Judgment.annotator_id == actor.id,
                                               Judgment.state == JudgmentState.active))
        assert live.choice == (Choice.a if again.a_on_left else Choice.b)


def test_a_skipped_probe_is_not_served_again(db, settings):
    """Skip promises the pair never comes back; a probe's pair was probed again. (Also keeps a probe
    claim off skipped lease rows, which an undo locks before the judgment the probe locks.)"""
    actor, judged, fresh, options, now = _judged_pair(db, settings)
    with db.begin() as s:
        assert queue.next_comparison(s, settings, options, actor=actor, now=now).comparison_id == judged
        queue.skip(s, actor=actor, comparison_id=judged, now=now)
    with db.begin() as s:
        assert queue.next_comparison(s, settings, options, actor=actor, now=now).comparison_id == fresh


# -- two annotators renewing expired leases on the same two pairs, in opposite orders ---------------------

def _crossed_expired_leases(db, settings):
    """a's expired leases are on (x, y), b's on (y, x), oldest first; d holds both pairs live (overlap 1),
    so neither can renew; two free pairs remain. ``(a, b, (x, y), free pairs, options, now)``."""
    t0 = utcnow()
    later = t0 + timedelta(seconds=settings.lease_seconds + 60)
    with db.begin() as s:
        a, b, d = make_user(s, "a"), make_user(s, "b"), make_user(s, "d")
        x, y, *free = make_comparisons(s, 4)
        options = replace(get_options(s, settings), gold_rate=0.0, probe_rate=0.0)
        expired = t0 + timedelta(seconds=settings.lease_seconds)
        for who, first, second in ((a, x, y), (b, y, x)):
            s.add(Lease(comparison_id=first, annotator_id=who.id, created_at=t0, expires_at=expired))
            s.add(Lease(comparison_id=second, annotator_id=who.id, created_at=t0 + timedelta(seconds=1),
                        expires_at=expired))
        for pair in (x, y):
            s.add(Lease(comparison_id=pair, annotator_id=d.id, created_at=later,
                        expires_at=later + timedelta(seconds=settings.lease_seconds)))
    return a, b, (x, y), set(free), options, later


@pytest.mark.postgres
def test_postgres_two_annotators_renewing_in_opposite_orders_do_not_deadlock(pg_db, pg_settings):
    """A third session holds x and y; a's page load waits for x, b's for y; it lets go. Each then
    finds no room on its first pair and goes on to the other's. Before the fix each kept the row it
    could not renew, so each waited for the other: PostgreSQL aborted one as a deadlock, shown as
    'the queue is being reordered'. Now a pair that cannot be renewed is unlocked before the next."""
    db, settings = pg_db, pg_settings
    a, b, (x, y), free, options, now = _crossed_expired_leases(db, settings)
    served = _page_loads_behind(
        db, select(Comparison.id).where(Comparison.id.in_((x, y))).with_for_update(), (a, b),
        lambda s, actor: queue.next_comparison(s, settings, options, actor=actor, now=now).comparison_id)
    assert set(served) == free, served


def test_two_annotators_with_crossed_expired_leases_get_free_pairs(db, settings):
    """The serial version (both backends): neither renews a pair d holds; each gets a free pair."""
    a, b, (x, y), free, options, now = _crossed_expired_leases(db, settings)
    served = set()
    for actor in (a, b):
        with db.begin() as s:
            served.add(queue.next_comparison(s, settings, options, actor=actor, now=now).comparison_id)
    assert served == free


# -- a judgment and a skip of the same pair from two tabs --------------------------------------------------

@pytest.mark.postgres
def test_postgres_skip_in_one_tab_while_another_submits_the_pair(pg_db, pg_settings):
    """The submit deletes the lease the skip read. Before the fix the skip's UPDATE matched no row
    at commit (StaleDataError: a traceback); now it locks the lease first, finds it gone, and says so."""
    db, settings = pg_db, pg_settings
    with db.begin() as s:
        actor = make_user(s, "two-tabs")
        make_comparisons(s, 2)
        options = replace(get_options(s, settings), gold_rate=0.0, probe_rate=0.0)
    with db.begin() as s:
        cid = queue.next_comparison(s, settings, options, actor=actor).comparison_id
    _, skipped = _second_runs_into_first(
        db,
        lambda s: judgments.submit(s, settings, actor=actor, comparison_id=cid, shown="left"),
        lambda s: queue.skip(s, actor=actor, comparison_id=cid))
    assert isinstance(skipped, NotFound), skipped
    with db.read() as s:
        assert s.scalar(select(Judgment.state).where(Judgment.comparison_id == cid)) is JudgmentState.active
        assert s.scalar(select(Lease.id).where(Lease.comparison_id == cid)) is None


# -- two annotators waiting for the same row while the retraining job holds them all -----------------------

@pytest.mark.postgres
def test_postgres_two_annotators_waiting_out_a_reorder_both_get_a_pair(pg_db, pg_settings):
    """While one transaction holds every open row (the retraining job's), both annotators' claims
    wait for the best row (the fallback that does not skip locked rows). Neither holds a comparison
    row while it waits, so they cannot deadlock; the first takes the row (overlap 1) and the second,
    let in after it, finds no room there. Before the fix the second was told there were no more
    pairs while two were free; now it claims one of those."""
    db, settings = pg_db, pg_settings
    with db.begin() as s:
        a, b = make_user(s, "a"), make_user(s, "b")
        pairs = make_comparisons(s, 3, priority=lambda i: i)
        options = replace(get_options(s, settings), gold_rate=0.0, probe_rate=0.0)
    served = _page_loads_behind(  # the retraining job's transaction holds every row
        db, select(Comparison.id).with_for_update(), (a, b),
        lambda s, actor: queue.next_comparison(s, settings, options, actor=actor).comparison_id)
    assert served[0] == pairs[-1], "the first to wait gets the best pair"
    assert served[1] in pairs[:-1], served


# -- found by bench/soak.py: deadlocks with the retraining job's rewrite and between one annotator's tabs ------

@pytest.mark.postgres
def test_postgres_claim_that_waits_out_a_reorder_holds_no_row_it_found_full(pg_db, pg_settings):
    """The retraining job's rewrite holds the best pair and is about to lock the next. A claim locked
    that next pair (free in its query's snapshot) and found it full when it re-counted: a claim by
    another annotator committed in between (stood in for by a lease written without the FK check's
    row lock, which would wait for the claim). Before the fix the claim kept that row while it waited
    for the best one, and the rewrite waited for it: a deadlock (the page said 'the queue is being
    reordered', or the job's transaction was aborted). Now the rows it found full are unlocked first."""
    from sqlalchemy import text, update

    db, settings = pg_db, pg_settings
    now = utcnow()
    with db.begin() as s:
        a, d = make_user(s, "a"), make_user(s, "d")
        best, nearly_full = make_comparisons(s, 2, priority=lambda i: 1 - i)
        options = replace(get_options(s, settings), gold_rate=0.0, probe_rate=0.0)
    reorder = Session(db.engine)
    try:
        reorder.execute(select(Comparison.id).where(Comparison.id == best).with_for_update())
        with _paused_before(db, "SELECT count(leases.id)", lambda s: queue.next_comparison(
                s, settings, options, actor=a, now=now).comparison_id) as (load, served, _, go):
            # it holds nearly_full, locked by its query
            with db.engine.begin() as conn:
                conn.execute(text("SET LOCAL session_replication_role = replica"))
                conn.execute(Lease.__table__.insert().values(
                    comparison_id=nearly_full, annotator_id=d.id, created_at=now,
                    expires_at=now + timedelta(seconds=settings.lease_seconds)))
            go.set()
            _wait_until(lambda: _lock_waiters(db.engine) == 1 or not load.is_alive(), timeout=60)
            reorder.execute(update(Comparison).where(Comparison.id == nearly_full).values(priority=0.5))
            reorder.commit()
    finally:
        reorder.close()
    load.join(timeout=60)
    assert served == [best]


@pytest.mark.postgres
def test_postgres_undo_while_other_tabs_claim_and_judge_a_new_pair_does_not_deadlock(pg_db, pg_settings):
    """Tab 1 undoes a judgment: it locked the annotator's leases (none then) and withdrew the judgment
    (updating the annotator's running counts), and is about to put the pair back first, which updates
    all their leases. Meanwhile tab 2 claims a new pair and tab 3 judges it. Before the fix tab 2 got
    in (no lease row to wait for), tab 3 locked the new lease and waited for the counts tab 1 held,
    and tab 1 then waited for that lease: a deadlock. Now every write of one annotator takes their
    user row first, so their tabs take turns."""
    db, settings = pg_db, pg_settings
    now = utcnow()
    with db.begin() as s:
        actor = make_user(s, "three-tabs")
        judged, fresh = make_comparisons(s, 2, priority=lambda i: 1 - i)
        options = replace(get_options(s, settings), gold_rate=0.0, probe_rate=0.0)
    with db.begin() as s:
        judgments.submit(s, settings, actor=actor, comparison_id=judged, shown="left", now=now - timedelta(seconds=1))
    with _paused_before(db, "UPDATE leases SET created_at", lambda s: judgments.undo_last_action(
            s, settings, actor=actor, now=now).comparison_id) as (undo, undone, _, go):
        load, served = _in_thread(db, lambda s: queue.next_comparison(s, settings, options, actor=actor,
                                                                      now=now).comparison_id)
        _wait_until(lambda: _lock_waiters(db.engine) == 1 or not load.is_alive(), timeout=60)
        waiting = _lock_waiters(db.engine)
        press, pressed = _in_thread(db, lambda s: judgments.submit(s, settings, actor=actor, comparison_id=fresh,
                                                                  shown="right", now=now).comparison_id)
        _wait_until(lambda: _lock_waiters(db.engine) == waiting + 1 or not press.is_alive(), timeout=60)
        go.set()
        for thread in (undo, load, press):
            thread.join(timeout=60)
    assert (undone, pressed) == ([judged], [fresh]), (undone, pressed)
    assert served[0] in (judged, fresh), served
    assert _state_of(db, actor, judged) == UNDONE
    assert _state_of(db, actor, fresh)[0] == [JudgmentState.active]


def _waiting_for(engine, pid: int) -> int:
    """Backends of this database waiting for a lock that backend ``pid`` holds."""
    from sqlalchemy import text

    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                 "AND :pid = ANY(pg_blocking_pids(pid))"), {"pid": pid}).scalar()


@pytest.mark.postgres
def test_postgres_claim_keeps_no_row_filled_while_it_waited(pg_db, pg_settings):
    """Every free row is locked: the best by another annotator's judgment of it (not committed yet),
    the next by the retraining job's rewrite. The claim waits for the best; the judgment commits and
    fills it. Before the fix the waiting query kept that row locked (PostgreSQL re-checks a row it
    waited for and skips it, still locked, when it no longer matches) and went on to wait for the
    next, held by the rewrite, which then wanted the filled row: a deadlock. Now it waits for one
    row at a time, by id, unlocking it when it cannot take it."""
    from sqlalchemy import text, update
    from sqlalchemy.exc import OperationalError

    db, settings = pg_db, pg_settings
    with db.begin() as s:
        a, d = make_user(s, "a"), make_user(s, "d")
        best, next_best = make_comparisons(s, 2, priority=lambda i: 1 - i)
        options = replace(get_options(s, settings), gold_rate=0.0, probe_rate=0.0)
    judging, reorder = Session(db.engine), Session(db.engine)
    rewrite_error = None
    try:
        judgments.submit(judging, settings, actor=d, comparison_id=best, shown="left")
        judging.flush()
        reorder.execute(select(Comparison.id).where(Comparison.id == next_best).with_for_update())
        reorder_pid = reorder.execute(text("SELECT pg_backend_pid()")).scalar()
        load, served = _in_thread(db, lambda s: queue.next_comparison(s, settings, options, actor=a).comparison_id)
        _wait_until(lambda: _lock_waiters(db.engine) == 1 or not load.is_alive(), timeout=60)
        judging.commit()
        _wait_until(lambda: _waiting_for(db.engine, reorder_pid) == 1 or not load.is_alive(), timeout=60)
        try:
            reorder.execute(update(Comparison).where(Comparison.id == best).values(priority=0.5))
            reorder.commit()
        except OperationalError as exc:
            rewrite_error = exc
    finally:
        judging.close()
        reorder.close()
    load.join(timeout=60)
    assert (served, rewrite_error) == ([next_best], None)


@pytest.mark.postgres
def test_postgres_rewrite_waiting_for_a_row_a_claim_unlocked_is_let_go(pg_db, pg_settings):
    """The retraining job's rewrite (first transaction) holds every open row; a claim waits for the
    best. The rewrite commits with the best pair filled (a lease of another annotator). The claim
    locks it and, before it has found it full and unlocked it, the next rewrite has locked the other
    pair and begun waiting for the best. Before the fix the claim locked it in a savepoint nested in
    the one it rolled back, released first: PostgreSQL then moved the rewrite on to wait for the
    claim's whole transaction, which went on to wait for the other pair: 'deadlock detected' (the
    page said 'the queue is being reordered', or the job's transaction was aborted). Now the row is
    locked by the savepoint that is rolled back, which lets the rewrite go on; the claim then takes
    the other pair once the rewrite commits."""
    import numpy as np
    from sqlalchemy import update

    from annotate import retrain

    db, settings = pg_db, pg_settings
    now = utcnow()
    with db.begin() as s:
        a, d = make_user(s, "a"), make_user(s, "d")
        best, other = make_comparisons(s, 2, priority=lambda i: 1 - i)
        options = replace(get_options(s, settings), gold_rate=0.0, probe_rate=0.0)

    def rewrite(s):  # the next rewrite, which happens to lock the other pair first
        for cid in (other, best):
            retrain.write_priorities(s, np.array([cid]), np.array([0.5]), np.array([1.0 if cid == best else 0.0]),
                                     None, strategy="test", model_version_id=None)
        return True

    first = Session(db.engine)
    try:
        first.execute(update(Comparison).where(Comparison.id.in_([best, other])).values(priority=Comparison.priority))
        first.add(Lease(comparison_id=best, annotator_id=d.id, expires_at=now + timedelta(seconds=settings.lease_seconds)))
        first.flush()
        with _paused_before(db, "SET LOCAL lock_timeout = 0", lambda s: queue.next_comparison(
                s, settings, options, actor=a, now=now).comparison_id, wait=False) as (load, served, paused, go):
            _wait_until(lambda: _lock_waiters(db.engine) == 1 or not load.is_alive(), timeout=60)
            first.commit()
            assert paused.wait(timeout=60)  # the claim holds the best pair, now full
            job, rewritten = _in_thread(db, rewrite)
            _wait_until(lambda: _lock_waiters(db.engine) == 1 or not job.is_alive(), timeout=60)
            go.set()
            job.join(timeout=60)
            load.join(timeout=60)
    finally:
        first.close()
    assert (served, rewritten) == ([other], [True]), (served, rewritten)


@pytest.mark.postgres
def test_postgres_page_load_chosen_as_a_deadlock_victim_while_it_waits_is_run_again(pg_db, pg_settings):
    """A claim waits for the best pair, which another transaction holds; that transaction then
    wants the annotator's user row, which the claim took first: a deadlock, and the claim, the first
    to wait, is PostgreSQL's victim. Such an attempt wrote nothing and ``Database.transact`` runs it
    again. Before the fix the wait turned the deadlock into "the queue is being reordered; try
    again", a QueueError that is not retried (the soak's 'reordered' toasts); now it is served."""
    db, settings = pg_db, pg_settings
    with db.begin() as s:
        actor = make_user(s, "victim")
        pairs = make_comparisons(s, 2, priority=lambda i: i)
        options = replace(get_options(s, settings), gold_rate=0.0, probe_rate=0.0)
    out: list = []

    def load():
        try:
            out.append(db.transact(lambda s: queue.next_comparison(s, settings, options, actor=actor).comparison_id))
        except BaseException as exc:  # surfaced by the assertion below
            out.append(exc)

    blocker, thread = Session(db.engine), threading.Thread(target=load)
    try:
        blocker.execute(select(Comparison.id).with_for_update())
        thread.start()
        _wait_until(lambda: _lock_waiters(db.engine) == 1 or not thread.is_alive(), timeout=60)
        wants_user = threading.Thread(target=lambda: blocker.execute(
            select(User.id).where(User.id == actor.id).with_for_update(key_share=True)))
        wants_user.start()  # granted once the claim, deadlocked, is rolled back
        wants_user.join(timeout=60)
        assert not wants_user.is_alive()
    finally:
        blocker.rollback()
        blocker.close()
    thread.join(timeout=60)
    assert out == [pairs[-1]]
