"""Retiring a comparison (an admin takes a broken pair out of the campaign) and reopening it.

Retired: never served again (nor as a self-consistency probe), its leases let go, its judgments kept
(one pressed on it afterwards too) but left out of training and of the preference exports, counted
there as ``excluded_retired``; the raw judgment export keeps them with ``comparison_status``.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from annotate import campaign, dashboard, export, judgments, queue, retrain
from annotate.errors import NotFound, PermissionDenied
from annotate.models import AuditEvent, Comparison, ComparisonStatus, Judgment, Lease, utcnow
from tests.factories import make_comparisons, make_user


def _serve(db, settings, actor, now=None):
    return (_lease(db, settings, actor, now) or (None,))[0]


def _lease(db, settings, actor, now=None):
    """``(comparison id, A on the left)`` of the pair served to ``actor``, or None."""
    def work(s):
        got = queue.next_comparison(s, settings, campaign.get_options(s, settings), actor=actor, now=now)
        return None if got is None else (got.comparison_id, got.a_on_left)

    return db.transact(work)


def _judge(db, settings, actor, cid, shown="left", now=None):
    db.transact(lambda s: judgments.submit(s, settings, actor=actor, comparison_id=cid, shown=shown, now=now))


def _audit(db, action):
    with db.read() as s:
        return [e.detail for e in s.scalars(select(AuditEvent).where(AuditEvent.action == action)
                                            .order_by(AuditEvent.id))]


@pytest.fixture
def people(db):
    with db.begin() as s:
        return make_user(s, "boss", "admin"), make_user(s, "ann"), make_user(s, "bea")


def test_a_retired_pair_is_not_served_and_its_leases_are_let_go(db, settings, people):
    admin, ann, bea = people
    with db.begin() as s:
        cids = make_comparisons(s, 3, overlap=2)
    shown = _serve(db, settings, ann)
    assert shown is not None
    for _ in range(2):  # a double click: one change, one audit entry
        db.transact(lambda s: dashboard.retire(s, actor=admin, comparison_id=shown))
    with db.read() as s:
        assert s.get(Comparison, shown).status is ComparisonStatus.retired
        assert s.scalar(select(func.count()).select_from(Lease).where(Lease.comparison_id == shown)) == 0
    assert _audit(db, "comparison.retire") == [
        {"comparison_id": shown, "was": "open", "judgments": 0, "leases_released": 1}]

    # Neither annotator is served it again; the other pairs are.
    served = set()
    for actor in (ann, bea):
        while (cid := _serve(db, settings, actor)) is not None:
            served.add(cid)
            _judge(db, settings, actor, cid)
    assert served == set(cids) - {shown}


def test_a_judgment_pressed_on_a_pair_retired_meanwhile_is_kept_and_the_pair_stays_retired(db, settings, people):
    admin, ann, _ = people
    with db.begin() as s:
        make_comparisons(s, 2)
    shown = _serve(db, settings, ann)
    db.transact(lambda s: dashboard.retire(s, actor=admin, comparison_id=shown))
    _judge(db, settings, ann, shown)  # the page still showed it: the press is recorded, never lost
    with db.read() as s:
        c = s.get(Comparison, shown)
        assert (c.status, c.judgment_count) == (ComparisonStatus.retired, 1)
        assert s.scalar(select(func.count()).select_from(Judgment).where(Judgment.comparison_id == shown)) == 1


def test_retired_pairs_are_never_probes(db, settings, people):
    admin, ann, _ = people
    with db.begin() as s:
        cids = make_comparisons(s, 6)
        campaign.update_options(s, settings, actor=admin, probe_rate=0.5, gold_rate=0.0)
    start = utcnow() - timedelta(hours=1)
    judged = []
    for i in range(3):
        at = start + timedelta(minutes=i)
        judged.append(_serve(db, settings, ann, now=at))
        _judge(db, settings, ann, judged[-1], now=at)
    for cid in judged:
        db.transact(lambda s, cid=cid: dashboard.retire(s, actor=admin, comparison_id=cid))
    # Later, with probes due half the time, only the three open pairs come (each once), never a probe.
    later = start + timedelta(minutes=30)
    served = []
    while (cid := _serve(db, settings, ann, now=later)) is not None:
        served.append(cid)
        _judge(db, settings, ann, cid, now=later)
    assert sorted(served) == sorted(set(cids) - set(judged))
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Judgment).where(Judgment.is_probe.is_(True))) == 0


def test_retired_pairs_train_nothing_and_leave_the_preference_export(db, settings, people):
    admin, ann, bea = people
    with db.begin() as s:
        cids = make_comparisons(s, 4, overlap=2)
    for actor in (ann, bea):  # both prefer A: every pair has a majority
        while (served := _lease(db, settings, actor)) is not None:
            _judge(db, settings, actor, served[0], shown="left" if served[1] else "right")
    with db.begin() as s:
        before = retrain.take_snapshot(s, settings)
        rows = export.preference_rows(s, actor=admin)
    assert len(before.lab_comparison) == 8 and len(rows) == 4

    db.transact(lambda s: dashboard.retire(s, actor=admin, comparison_id=cids[1]))
    with db.begin() as s:
        after = retrain.take_snapshot(s, settings)
        rows = export.preference_rows(s, actor=admin)
        raw = list(export.judgment_rows(s, actor=admin))
    assert len(after.lab_comparison) == 6
    assert [r["comparison_id"] for r in rows] == [cids[0], cids[2], cids[3]]
    assert [e["counts"]["excluded_retired"] for e in _audit(db, "export") if e["kind"] == "preferences"] == [0, 1]
    # The raw log keeps every judgment, saying which pairs are retired.
    assert len(raw) == 8
    assert {r["comparison_id"]: r["comparison_status"] for r in raw} == {
        cids[0]: "complete", cids[1]: "retired", cids[2]: "complete", cids[3]: "complete"}

    for _ in range(2):  # reopen: back as it was (complete: it has its two judgments), once
        db.transact(lambda s: dashboard.reopen(s, settings, actor=admin, comparison_id=cids[1]))
    assert _audit(db, "comparison.reopen") == [{"comparison_id": cids[1], "status": "complete"}]
    with db.begin() as s:
        assert len(retrain.take_snapshot(s, settings).lab_comparison) == 8  # first: it sets the isolation level
        assert s.get(Comparison, cids[1]).status is ComparisonStatus.complete
        assert len(export.preference_rows(s, actor=admin)) == 4


def test_reopen_serves_a_pair_that_still_needs_judgments_and_overlap_never_grows_on_a_retired_one(db, settings,
                                                                                                  people):
    admin, ann, bea = people
    with db.begin() as s:
        [cid] = make_comparisons(s, 1, overlap=2)
        campaign.update_options(s, settings, actor=admin, max_overlap=4)
    assert _serve(db, settings, ann) == cid
    _judge(db, settings, ann, cid, shown="left")
    db.transact(lambda s: dashboard.retire(s, actor=admin, comparison_id=cid))
    assert _serve(db, settings, bea) is None
    db.transact(lambda s: dashboard.reopen(s, settings, actor=admin, comparison_id=cid))
    with db.read() as s:
        assert s.get(Comparison, cid).status is ComparisonStatus.open
    assert _serve(db, settings, bea) == cid

    # Retired while bea has it on screen, she disagrees with ann: a disagreement would raise the pair's
    # overlap (up to the maximum) on an open pair, never on a retired one.
    db.transact(lambda s: dashboard.retire(s, actor=admin, comparison_id=cid))
    _judge(db, settings, bea, cid, shown="right" if _a_left(db, settings, ann, cid) else "left")
    with db.read() as s:
        c = s.get(Comparison, cid)
        assert (c.status, c.judgment_count, c.overlap_target) == (ComparisonStatus.retired, 2, 2)
        assert {j.choice.value for j in s.scalars(select(Judgment).where(Judgment.comparison_id == cid))} == {
            "a", "b"}


def _a_left(db, settings, actor, cid) -> bool:
    """Whether A was on the left for ``actor``'s judgment of ``cid`` (so the other can press the other side)."""
    with db.read() as s:
        return s.scalar(select(Judgment.a_on_left).where(Judgment.comparison_id == cid,
                                                          Judgment.annotator_id == actor.id))


def test_only_admins_retire_and_the_pair_must_exist(db, settings, people):
    admin, ann, _ = people
    with db.begin() as s:
        [cid] = make_comparisons(s, 1)
    for call in (dashboard.retire, lambda s, **kw: dashboard.reopen(s, settings, **kw)):
        with pytest.raises(PermissionDenied):
            db.transact(lambda s, call=call: call(s, actor=ann, comparison_id=cid))
        with pytest.raises(NotFound, match="comparison 99999 does not exist"):
            db.transact(lambda s, call=call: call(s, actor=admin, comparison_id=99_999))
    with db.read() as s:
        assert s.get(Comparison, cid).status is ComparisonStatus.open


def test_undo_of_a_judgment_on_a_pair_retired_since_withdraws_it_and_serves_it_not(db, settings, people):
    """Undo leased the pair back whatever its status, and the queue served a retired pair (review)."""
    admin, ann, _ = people
    with db.begin() as s:
        cids = make_comparisons(s, 2)
    first = _serve(db, settings, ann)
    _judge(db, settings, ann, first)
    db.transact(lambda s: dashboard.retire(s, actor=admin, comparison_id=first))
    undone = db.transact(lambda s: judgments.undo_last_action(s, settings, actor=ann))
    assert (undone.comparison_id, undone.served) == (first, False)
    with db.read() as s:
        assert [j.state.value for j in s.scalars(select(Judgment))] == ["retracted"]
        assert s.get(Comparison, first).judgment_count == 0
    assert _serve(db, settings, ann) == next(c for c in cids if c != first)


@pytest.mark.postgres
def test_retire_takes_the_queue_lock_order_and_does_not_deadlock_with_a_submit(pg_db, pg_clean_url, tmp_path):
    """Retire locked the comparison row, then the lease rows; a submit locks its lease rows, then the
    comparison: pressed at the same moment on PostgreSQL the two deadlocked (review). Now the retire waits
    for the submit and both go through, the judgment recorded on the pair now retired."""
    import threading
    import time

    from annotate.settings import load_settings

    db = pg_db
    settings = load_settings(environ={}, data_dir=tmp_path, database_url=pg_clean_url, env="test")
    with db.begin() as s:
        admin, ann = make_user(s, "boss", "admin"), make_user(s, "ann")
        [cid] = make_comparisons(s, 1)
    assert _serve(db, settings, ann) == cid
    errors = []

    def submit():
        try:
            with db.begin() as s:
                queue.lock_annotator(s, ann.id)  # submit's first locks: the user row, then their lease rows
                time.sleep(1.0)  # meanwhile the admin presses Retire
                judgments.submit(s, settings, actor=ann, comparison_id=cid, shown="left")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def retire():
        time.sleep(0.3)
        try:
            with db.begin() as s:  # one attempt, no retry: a deadlock would show
                dashboard.retire(s, actor=admin, comparison_id=cid)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit), threading.Thread(target=retire)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with db.read() as s:
        c = s.get(Comparison, cid)
        assert (c.status, c.judgment_count) == (ComparisonStatus.retired, 1)


def test_unmarking_gold_or_reopening_a_pair_with_split_votes_asks_for_one_more(db, settings, people):
    """Quality audit: a gold pair with votes 2 a / 1 b at overlap 3 was closed when unmarked, where an ordinary
    pair with such votes is raised to overlap 4; reopening a retired one did the same."""
    admin, ann, bea = people
    with db.begin() as s:
        cids = make_comparisons(s, 2, overlap=2)
        campaign.update_options(s, settings, actor=admin, max_overlap=4)
        dashboard.mark_gold(s, actor=admin, comparison_id=cids[0], choice="a")
    with db.begin() as s:  # split votes on both: one a, one b
        for cid in cids:
            s.add_all([Judgment(comparison_id=cid, annotator_id=ann.id, choice="a", a_on_left=True),
                       Judgment(comparison_id=cid, annotator_id=bea.id, choice="b", a_on_left=True)])
            s.get(Comparison, cid).judgment_count = 2
        s.get(Comparison, cids[1]).status = ComparisonStatus.complete
    db.transact(lambda s: dashboard.retire(s, actor=admin, comparison_id=cids[1]))
    with db.read() as s:
        assert [(s.get(Comparison, c).overlap_target, s.get(Comparison, c).status.value) for c in cids] == [
            (2, "open"), (2, "retired")]
    db.transact(lambda s: dashboard.unmark_gold(s, settings, actor=admin, comparison_id=cids[0]))
    db.transact(lambda s: dashboard.reopen(s, settings, actor=admin, comparison_id=cids[1]))
    with db.read() as s:
        assert [(s.get(Comparison, c).overlap_target, s.get(Comparison, c).status.value) for c in cids] == [
            (3, "open"), (3, "open")]
