"""The running counts behind the annotator figures equal a recount from the judgments
(after a random mix of submits, probes, undos, re-judgments, gold changes and imports),
on SQLite and PostgreSQL, and concurrent votes on one comparison are all counted."""

from __future__ import annotations

import math
import random
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, inspect, select, text, update
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from annotate import dashboard, judgments, migrate, quality, rollups
from annotate.db import create_db_engine
from annotate.errors import QueueError
from annotate.models import (
    AnnotatorDay,
    AnnotatorHistogram,
    AnnotatorVotes,
    Comparison,
    ComparisonVotes,
    Judgment,
    JudgmentSource,
    JudgmentState,
    Lease,
    utcnow,
)
from annotate.settings import load_settings
from tests.factories import make_comparisons, make_user
from tests.test_migrations import empty_url  # noqa: F401 - the fixture (an empty SQLite or PostgreSQL database)

TABLES = (ComparisonVotes, AnnotatorVotes, AnnotatorDay, AnnotatorHistogram)


def _table_rows(session: Session) -> dict[str, dict[tuple, tuple]]:
    """Every rollup table as {primary key: non-key values}, rows whose values are all zero left out."""
    out = {}
    for model in TABLES:
        table = model.__table__
        keys = [c.name for c in table.primary_key.columns]
        rows = {}
        for row in session.execute(select(table)).mappings():
            values = tuple(row[c.name] for c in table.columns if c.name not in keys)
            if any(values):
                rows[tuple(row[k] for k in keys)] = values
        out[table.name] = rows
    return out


def _assert_same_rows(incremental, recounted):
    for name, rows in recounted.items():
        assert set(incremental[name]) == set(rows), name
        for key, values in rows.items():
            assert incremental[name][key] == pytest.approx(values, rel=1e-9), (name, key)


def _assert_same_report(fast: quality.QualityReport, slow: quality.QualityReport):
    assert [a.username for a in fast.annotators] == [a.username for a in slow.annotators]
    for a, b in zip(fast.annotators, slow.annotators):
        ra, rb = a.as_row(), b.as_row()
        for key, value in rb.items():
            if isinstance(value, float):
                assert ra[key] == pytest.approx(value, rel=1e-9), (a.username, key)
            else:
                assert ra[key] == value, (a.username, key)
        assert (a.kappa_shared, a.n_majority, a.n_majority_agree) == (b.kappa_shared, b.n_majority,
                                                                      b.n_majority_agree)
    for x, y in ((fast.alpha_ordinal, slow.alpha_ordinal), (fast.alpha_nominal, slow.alpha_nominal)):
        assert (x is None and y is None) or math.isclose(x, y, rel_tol=1e-9)


def _random_history(db, settings, seed: int):
    """A week of random annotator work through the real services; returns (admin, start, end)."""
    rng = random.Random(seed)
    with db.begin() as s:
        admin = make_user(s, "boss", "admin")
        people = [make_user(s, f"ann{i}") for i in range(5)]
        cids = make_comparisons(s, 14, overlap=3)
        gold = make_comparisons(s, 3, gold=True, start=100)
        for cid in cids[:8]:
            s.execute(update(Comparison).where(Comparison.id == cid).values(model_p_a=rng.random()))
    everything = cids + gold
    start = utcnow() - timedelta(days=7)
    t = start
    for _ in range(260):
        t += timedelta(minutes=rng.randint(5, 90))
        actor = rng.choice(people)
        action = rng.random()
        with db.begin() as s:
            live = set(s.scalars(select(Judgment.comparison_id).where(
                Judgment.annotator_id == actor.id, Judgment.state == "active", Judgment.is_probe.is_(False))))
            if action < 0.6:
                free = [c for c in everything if c not in live]
                if free:
                    _submit(s, settings, actor, rng.choice(free), rng, t)
            elif action < 0.72 and live:
                # a swapped repeat: the queue would hand out a probe lease like this one
                cid = rng.choice(sorted(live))
                s.execute(update(Lease).where(Lease.annotator_id == actor.id, Lease.comparison_id == cid)
                          .values(is_probe=True))
                if s.scalar(select(Lease.id).where(Lease.annotator_id == actor.id, Lease.comparison_id == cid)) is None:
                    s.add(Lease(comparison_id=cid, annotator_id=actor.id, is_probe=True, created_at=t,
                                expires_at=t + timedelta(minutes=10)))
                    s.flush()
                _submit(s, settings, actor, cid, rng, t)
            elif action < 0.87:
                undone = judgments.undo_last(s, settings, actor=actor, now=t)
                if undone is not None and rng.random() < 0.6:  # judge it again: supersedes the retracted one
                    _submit(s, settings, actor, undone, rng, t + timedelta(minutes=1))
            elif action < 0.93:
                cid = rng.choice(gold + cids[:2])
                if rng.random() < 0.7:
                    dashboard.mark_gold(s, actor=admin, comparison_id=cid, choice=rng.choice("ab"))
                elif s.get(Comparison, cid).is_gold:
                    dashboard.unmark_gold(s, settings, actor=admin, comparison_id=cid)
            else:
                # imported judgments are no annotator's: they count for none of the figures
                s.add(Judgment(comparison_id=rng.choice(everything), annotator_id=None,
                               source=JudgmentSource.imported, choice=rng.choice("ab"), created_at=t))
    return admin, start, t


def _submit(s, settings, actor, cid, rng, when):
    shown = rng.choice(["left", "right", "left", "right", "tie", "both_bad"])
    try:
        with s.begin_nested():
            judgments.submit(s, settings, actor=actor, comparison_id=cid, shown=shown,
                             time_spent_ms=rng.choice([None, 0, rng.randint(800, 90_000)]), now=when)
    except QueueError:
        pass  # e.g. a pair leased to them that they already judged: the real app refuses it too


@pytest.mark.parametrize("seed", [1, 2])
def test_running_counts_equal_a_recount(db, settings, seed):
    admin, start, end = _random_history(db, settings, seed)
    with db.read() as s:
        kinds = s.execute(select(func.count().filter(Judgment.state == "retracted"),
                                 func.count().filter(Judgment.is_probe.is_(True)),
                                 func.count().filter(Judgment.supersedes_id.is_not(None)),
                                 func.count().filter(Judgment.was_gold.is_(True)))).one()
        assert all(kinds), f"the history has undos, probes, re-judgments and gold judgments: {kinds}"
        incremental = _table_rows(s)
        assert incremental["annotator_votes"], "the history produced agreement counts"
        midnight = end.replace(hour=0, minute=0, second=0, microsecond=0)
        periods = [(None, None), (start + timedelta(days=2, hours=5), None),
                   (start + timedelta(days=1, hours=13), end - timedelta(days=2, hours=3)),
                   (end - timedelta(hours=20), end - timedelta(hours=2)),
                   # whole days minus the raw parts outside the period, at both ends
                   (midnight - timedelta(days=3) + timedelta(hours=2), midnight - timedelta(hours=4)),
                   (midnight - timedelta(days=4) + timedelta(hours=20), midnight - timedelta(days=1, hours=19))]
        for since, until in periods:
            fast = quality.annotator_quality(s, actor=admin, since=since, until=until)
            slow = quality.annotator_quality(s, actor=admin, since=since, until=until, use_rollups=False)
            assert fast.annotators, (since, until)
            _assert_same_report(fast, slow)
    with db.begin() as s:
        rollups.rebuild(s.connection())
    with db.read() as s:
        _assert_same_rows(incremental, _table_rows(s))


def test_split_period_whole_days_and_signed_edges():
    day = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    d = timedelta(days=1)
    # late start, early end: add the short raw edges
    since, until = day - 3 * d - timedelta(hours=5), day + timedelta(hours=7)
    assert quality.split_period(since, until) == (((day - 3 * d).date(), day.date()),
                                                  [(since, day - 3 * d, 1), (day, until, 1)])
    # early start, late end: take the whole days and subtract what lies outside the period
    since, until = day - 2 * d + timedelta(hours=3), day + timedelta(hours=20)
    assert quality.split_period(since, until) == (((day - 2 * d).date(), (day + d).date()),
                                                  [(day - 2 * d, since, -1), (until, day + d, -1)])
    assert quality.split_period(None, None) == ((None, None), [])
    assert quality.split_period(day, None) == ((day.date(), None), [])
    short = (day + timedelta(hours=1), day + timedelta(hours=2))
    assert quality.split_period(*short) == (None, [(*short, 1)])


# every field rollups refuses to change in place on a live judgment, with a different value for it; listed
# here rather than read from rollups._APPEND_ONLY so that dropping a field there fails this test
PROTECTED_CHANGES = {
    "choice": lambda j, other: "tie",
    "a_on_left": lambda j, other: not j.a_on_left,
    "time_spent_ms": lambda j, other: j.time_spent_ms + 1_000,
    "comparison_id": lambda j, other: other["cid"],
    "annotator_id": lambda j, other: other["annotator_id"],
    "is_probe": lambda j, other: True,
    "was_gold": lambda j, other: True,
    "created_at": lambda j, other: j.created_at - timedelta(days=2),
    "source": lambda j, other: JudgmentSource.imported,
}


def test_the_protected_fields_are_the_ones_rollups_guards():
    assert set(PROTECTED_CHANGES) == set(rollups._APPEND_ONLY)


def _vote_rows(db):
    with db.read() as s:
        return _table_rows(s)


@pytest.mark.parametrize("field", sorted(PROTECTED_CHANGES))
def test_appending_is_the_only_change_allowed(db, settings, field):
    with db.begin() as s:
        ann, bob = make_user(s, "ann"), make_user(s, "bob")
        cid, other_cid = make_comparisons(s, 2, overlap=2)
        done = judgments.submit(s, settings, actor=ann, comparison_id=cid, shown="left", time_spent_ms=5_000)
    before = _vote_rows(db)
    assert sum(before["comparison_votes"].get((cid,), ())) == 1
    with pytest.raises(ValueError, match="append-only"):
        with db.begin() as s:
            j = s.get(Judgment, done.judgment_id)
            setattr(j, field, PROTECTED_CHANGES[field](j, {"cid": other_cid, "annotator_id": bob.id}))
    assert _vote_rows(db) == before  # refused and rolled back: the counts are untouched
    # the change that is allowed, retracting it (what undo does), commits and takes it out of the counts
    with db.begin() as s:
        j = s.get(Judgment, done.judgment_id)
        j.state, j.retracted_at = JudgmentState.retracted, utcnow()
    with db.read() as s:
        assert s.get(Judgment, done.judgment_id).state == JudgmentState.retracted
        after = _table_rows(s)
    assert sum(after["comparison_votes"].get((cid,), ())) == 0
    with db.begin() as s:
        rollups.rebuild(s.connection())
    _assert_same_rows(after, _vote_rows(db))


@pytest.mark.postgres
def test_concurrent_votes_on_one_comparison_are_all_counted(pg_db, pg_clean_url, tmp_path):
    settings = load_settings(environ={}, data_dir=tmp_path / "data", database_url=pg_clean_url, env="test")
    n = 6
    with pg_db.begin() as s:
        people = [make_user(s, f"ann{i}") for i in range(n)]
        cids = make_comparisons(s, 4, overlap=n)
    errors = []
    for cid in cids:
        barrier = threading.Barrier(n)

        def work(actor, cid=cid, barrier=barrier):
            try:
                barrier.wait()
                with pg_db.begin() as s:
                    judgments.submit(s, settings, actor=actor, comparison_id=cid,
                                     shown=("left", "right", "tie")[actor.id % 3], time_spent_ms=5_000)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(p,)) for p in people]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors, errors
    with pg_db.read() as s:
        incremental = _table_rows(s)
        assert sum(sum(v) for v in incremental["comparison_votes"].values()) == n * len(cids)
    with pg_db.begin() as s:
        rollups.rebuild(s.connection())
    with pg_db.read() as s:
        _assert_same_rows(incremental, _table_rows(s))


def test_migration_0003_counts_existing_judgments(empty_url):  # noqa: F811 - the fixture
    migrate.upgrade(empty_url, "0002")
    engine = create_db_engine(empty_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO users (id, username, password_hash, role, active, failed_logins, "
                              "created_at) VALUES (1, 'u1', 'x', 'annotator', true, 0, CURRENT_TIMESTAMP), "
                              "(2, 'u2', 'x', 'annotator', true, 0, CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO prompts (id, content_hash, text, created_at) "
                              "VALUES (1, 'p', 'prompt', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO responses (id, prompt_id, content_hash, text, n_chars, created_at) "
                              "VALUES (1, 1, 'a', 'short', 5, CURRENT_TIMESTAMP), "
                              "(2, 1, 'b', 'much longer', 11, CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO comparisons (id, prompt_id, response_a_id, response_b_id, status, "
                              "overlap_target, judgment_count, is_gold, priority, created_at) "
                              "VALUES (1, 1, 1, 2, 'complete', 2, 2, false, 0.5, CURRENT_TIMESTAMP)"))
            conn.execute(text(
                "INSERT INTO judgments (comparison_id, annotator_id, source, choice, flags, a_on_left, "
                "time_spent_ms, is_probe, was_gold, state, created_at) VALUES "
                "(1, 1, 'annotator', 'a', '[]', true, 4000, false, false, 'active', CURRENT_TIMESTAMP), "
                "(1, 2, 'annotator', 'b', '[]', false, 6000, false, false, 'active', CURRENT_TIMESTAMP), "
                "(1, 1, 'annotator', 'tie', '[]', true, 1000, false, false, 'retracted', CURRENT_TIMESTAMP), "
                "(1, NULL, 'imported', 'a', '[]', NULL, NULL, false, false, 'active', CURRENT_TIMESTAMP)"))
        migrate.upgrade(empty_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT n_a, n_b, n_tie, n_both_bad FROM comparison_votes")).all() == [
                (1, 1, 0, 0)]
            assert sorted(conn.execute(text(
                "SELECT annotator_id, choice, o_a, o_b, n FROM annotator_votes")).all()) == [
                (1, "a", 0, 1, 1), (2, "b", 1, 0, 1)]
            assert sorted(conn.execute(text(
                "SELECT annotator_id, n, n_left, n_longer, n_timed, sx FROM annotator_days")).all()) == [
                (1, 1, 1, 0, 1, 4000.0), (2, 1, 1, 1, 1, 6000.0)]  # B shown on the left for u2
        migrate.downgrade(empty_url, "0002")
        assert "comparison_votes" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_concurrent_votes_on_comparisons_that_share_annotators_do_not_deadlock(pg_db, pg_clean_url, tmp_path):
    # Each last vote re-counts the other annotators' rows; with the same votes on every comparison
    # those rows are shared, and taken in different orders they deadlocked (seen in CI).
    settings = load_settings(environ={}, data_dir=tmp_path / "data", database_url=pg_clean_url, env="test")
    n, rounds = 6, 3
    with pg_db.begin() as s:
        people = [make_user(s, f"ann{i}") for i in range(n)]
    shown = {p.id: ("left", "right", "tie")[i % 3] for i, p in enumerate(people)}

    def vote(actor, cid):
        with pg_db.begin() as s:
            judgments.submit(s, settings, actor=actor, comparison_id=cid, shown=shown[actor.id],
                             time_spent_ms=5_000)

    errors = []
    for r in range(rounds):
        with pg_db.begin() as s:
            cids = make_comparisons(s, n, overlap=n, start=r * n)
        for i, cid in enumerate(cids):
            for j, actor in enumerate(people):
                if j != i:
                    vote(actor, cid)
        barrier = threading.Barrier(n)

        def last(actor, cid, barrier=barrier):
            try:
                barrier.wait()
                vote(actor, cid)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=last, args=(p, c)) for p, c in zip(people, cids)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors, errors[:3]
    with pg_db.read() as s:
        incremental = _table_rows(s)
        assert sum(sum(v) for v in incremental["comparison_votes"].values()) == n * n * rounds
    with pg_db.begin() as s:
        rollups.rebuild(s.connection())
    with pg_db.read() as s:
        _assert_same_rows(incremental, _table_rows(s))
