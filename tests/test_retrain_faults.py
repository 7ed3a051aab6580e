"""The retraining job under faults a deployment meets: judgments, closes and locks during a run.

Runs use the tiny encoder of ``tests/test_retrain.py``. Nothing here asserts on
timings: where another connection must hold a lock while the run reaches its
final transaction, a hook at the start of the ``promote`` step takes it first.
"""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from sqlalchemy import func, select, text

from annotate import retrain
from annotate.db import Database, create_db_engine
from annotate.models import (
    Comparison,
    ComparisonStatus,
    Judgment,
    JudgmentSource,
    ModelVersion,
    TrainingRun,
)
from tests.test_retrain import (  # noqa: F401 - tiny_encoder and rt_settings are fixtures
    _artifact_dirs,
    active_id,
    add_pairs,
    priorities_state,
    rt_settings,
    tiny_encoder,
)


def _first_run(db, settings, n_open: int = 20):
    with db.begin() as s:
        add_pairs(s, 0, 60, judged=True)
        open_ids = add_pairs(s, 1000, n_open, judged=False)
    first = retrain.run_once(settings, db=db)
    assert first.status == "succeeded", first.summary()
    return first, open_ids


def _at_promote(monkeypatch, hook) -> None:
    """Call ``hook()`` once, when the run records that it starts its final transaction."""
    original = retrain._record

    def record(db, run_id, **values):
        original(db, run_id, **values)
        if values.get("step") == "promote":
            hook()

    monkeypatch.setattr(retrain, "_record", record)


def _judge(session, cid: int) -> None:
    """An imported judgment that completes comparison ``cid`` (as a judgment would)."""
    c = session.get(Comparison, cid)
    c.status, c.judgment_count = ComparisonStatus.complete, 1
    session.add(Judgment(comparison_id=cid, annotator_id=None, source=JudgmentSource.imported, choice="a"))


@pytest.mark.postgres
def test_a_judgment_committed_after_the_snapshot_below_its_largest_id_triggers_the_next_run(
        pg_clean_url, tmp_path, tiny_encoder):  # noqa: F811
    """PostgreSQL takes a judgment's id at insert and shows the row at commit: one with a smaller id
    than the snapshot's largest can commit after it. Counting ids above that largest one never
    counted it, so the only new judgment never made a run (not the watcher's, not --once's)."""
    from annotate.settings import load_settings

    settings = load_settings(environ={}, data_dir=tmp_path / "data", database_url=pg_clean_url, env="test",
                             encoder_path=str(tiny_encoder), cold_start=0, torch_threads=1)
    db = Database(create_db_engine(pg_clean_url))
    late = Database(create_db_engine(pg_clean_url))
    try:
        first, _ = _first_run(db, settings)
        with late.begin() as slow:  # an annotator's judgment, inserted but not yet committed
            add_pairs(slow, 2000, 1, judged=True)
            slow.flush()
            with db.begin() as s:  # another one, committed at once with a larger id
                add_pairs(s, 3000, 1, judged=True)
            second = retrain.run_once(settings, db=db)
            assert second.status in ("succeeded", "rejected"), second.summary()
            assert second.counts["n_judgments"] == 61  # the slow one is not in the snapshot
            with db.read() as s:  # a poll now must not take "none late" as final: the slow one is open
                assert retrain.new_judgments(s)[0] == 0
        # ... and commits now, below the snapshot's largest id.
        with db.read() as s:
            slow_id = s.scalar(select(func.min(Judgment.id)).where(Judgment.id > 60))
            assert slow_id < second.counts["max_judgment_id"]
            assert retrain.new_judgments(s)[0] == 1
        third = retrain.run_once(settings, db=db)  # not forced
        assert third.status in ("succeeded", "rejected"), third.summary()
        assert third.counts["n_judgments"] == 62
        with db.read() as s:
            assert retrain.new_judgments(s)[0] == 0
        assert retrain.run_once(settings, db=db).status == "skipped"
    finally:
        late.dispose()
        db.dispose()


def test_judgments_and_closes_during_a_run(db, rt_settings, monkeypatch):  # noqa: F811
    """While a run trains, judgments arrive and pairs are judged to completion or retired: the run
    counts the judgments for the next run, and its rescore leaves the closed pairs as they are."""
    first, open_ids = _first_run(db, rt_settings)
    with db.begin() as s:
        add_pairs(s, 2000, 5, judged=True)
    judged_during, retired_during = open_ids[0], open_ids[1]
    import rm.train

    train = rm.train.train_ensemble

    def train_while_annotating(*args, **kwargs):
        with db.begin() as s:
            _judge(s, judged_during)
            s.get(Comparison, retired_during).status = ComparisonStatus.retired
            add_pairs(s, 4000, 2, judged=True)
        return train(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(rm.train, "train_ensemble", train_while_annotating)
        with db.read() as s:
            before = priorities_state(s)
        second = retrain.run_once(rt_settings, db=db)
    assert second.status in ("succeeded", "rejected"), second.summary()
    assert second.counts["n_open"] == len(open_ids)
    assert second.counts["n_priorities_written"] == len(open_ids) - 2  # the closed two were not touched
    with db.read() as s:
        after = priorities_state(s)
        assert s.get(Comparison, judged_during).status == ComparisonStatus.complete
        assert s.get(Comparison, retired_during).status == ComparisonStatus.retired
        assert retrain.new_judgments(s)[0] == 3
    assert after[judged_during] == before[judged_during]
    assert after[retired_during] == before[retired_during]
    assert all(after[c][3] == active_id_of(db) for c in open_ids[2:])
    third = retrain.run_once(rt_settings, db=db)  # not forced: the three count
    assert third.status in ("succeeded", "rejected") and third.counts["n_judgments"] == 68


def active_id_of(db):
    with db.read() as s:
        return active_id(s)


@pytest.mark.postgres
def test_promote_waits_for_an_annotators_row_lock_and_skips_the_pair_they_close(pg_db, pg_clean_url, tmp_path,
                                                                                tiny_encoder):  # noqa: F811
    """An annotator holds an open pair's row (a claim, FOR UPDATE) while the run writes priorities: the
    run waits for it, and when the annotator's judgment closes the pair, the rescore leaves it closed."""
    from annotate.settings import load_settings

    settings = load_settings(environ={}, data_dir=tmp_path / "data", database_url=pg_clean_url, env="test",
                             encoder_path=str(tiny_encoder), cold_start=0, torch_threads=1)
    first, open_ids = _first_run(pg_db, settings)
    with pg_db.begin() as s:
        add_pairs(s, 2000, 5, judged=True)
    claimed = open_ids[3]
    with pg_db.read() as s:
        before = priorities_state(s)
    annotator = Database(create_db_engine(pg_clean_url))
    holding, errors = threading.Event(), []

    def annotate():
        try:
            with annotator.begin() as s:
                s.scalar(select(Comparison).where(Comparison.id == claimed).with_for_update())
                holding.set()
                deadline = time.monotonic() + 120
                while not _someone_waits_on_a_row_lock(annotator):  # the run's UPDATE, blocked by this claim
                    if time.monotonic() > deadline:
                        raise AssertionError("the run never waited for the claimed row")
                    time.sleep(0.05)
                _judge(s, claimed)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
            holding.set()

    thread = threading.Thread(target=annotate, daemon=True)

    def start_annotator():
        thread.start()
        holding.wait(60)

    try:
        with pytest.MonkeyPatch.context() as m:
            _at_promote(m, start_annotator)
            second = retrain.run_once(settings, db=pg_db)
        thread.join(60)
        assert not errors, errors
        assert second.status in ("succeeded", "rejected"), second.summary()
        assert second.counts["n_priorities_written"] == len(open_ids) - 1
        with pg_db.read() as s:
            after = priorities_state(s)
            scorer = active_id(s)
            assert s.get(Comparison, claimed).status == ComparisonStatus.complete
        assert after[claimed] == before[claimed]
        assert all(after[c][3] == scorer for c in open_ids if c != claimed)
    finally:
        annotator.dispose()


def _someone_waits_on_a_row_lock(db) -> bool:
    # Its own transaction each time: pg_stat_activity is read once per transaction.
    with db.read() as session:
        return bool(session.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query ILIKE 'UPDATE comparisons%'")))


def _hold_sqlite_write_lock(path: str, release: threading.Event, holding: threading.Event) -> threading.Thread:
    """Another writer (its own connection) holding SQLite's write lock until ``release`` is set."""

    def hold():
        conn = sqlite3.connect(path, isolation_level=None, timeout=60)
        try:
            conn.execute("BEGIN IMMEDIATE")
            holding.set()
            release.wait(120)
            conn.execute("COMMIT")
        finally:
            holding.set()
            conn.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    return thread


def test_sqlite_promote_waits_for_another_writer(sqlite_db, sqlite_settings, tiny_encoder, monkeypatch):  # noqa: F811
    """A writer holding SQLite's lock when the final transaction starts: the run waits and commits it whole."""
    import dataclasses

    settings = dataclasses.replace(sqlite_settings, encoder_path=str(tiny_encoder), cold_start=0, torch_threads=1)
    first, open_ids = _first_run(sqlite_db, settings)
    with sqlite_db.begin() as s:
        add_pairs(s, 2000, 5, judged=True)
    path = sqlite_db.engine.url.database
    release, holding = threading.Event(), threading.Event()
    threads = []

    def writer_arrives():
        threads.append(_hold_sqlite_write_lock(path, release, holding))
        holding.wait(60)
        # Let go well inside the busy timeout (30 s), from another thread.
        threading.Timer(1.0, release.set).start()

    _at_promote(monkeypatch, writer_arrives)
    second = retrain.run_once(settings, db=sqlite_db)
    threads[0].join(60)
    assert second.status in ("succeeded", "rejected"), second.summary()
    assert second.counts["n_priorities_written"] == len(open_ids)
    with sqlite_db.read() as s:
        state, scorer = priorities_state(s), active_id(s)
    assert all(state[c][3] == scorer for c in open_ids)


def test_sqlite_promote_fails_cleanly_when_the_lock_stays_taken(sqlite_settings, tiny_encoder, monkeypatch):  # noqa: F811
    """A writer that keeps SQLite's lock past the busy timeout: the run fails without writing anything
    (no version, no priority, no artifact), run_once returns instead of raising, and the next run works."""
    import dataclasses

    from annotate import db as dbmod

    settings = dataclasses.replace(sqlite_settings, encoder_path=str(tiny_encoder), cold_start=0, torch_threads=1)
    db = Database(create_db_engine(settings.sqlalchemy_url))
    try:
        first, _ = _first_run(db, settings)
        with db.begin() as s:
            add_pairs(s, 2000, 5, judged=True)
            before = priorities_state(s)
    finally:
        db.dispose()
    kept = _artifact_dirs(settings)
    monkeypatch.setattr(dbmod, "SQLITE_BUSY_TIMEOUT_S", 1)
    db = Database(create_db_engine(settings.sqlalchemy_url))  # connections with the short timeout
    release, holding = threading.Event(), threading.Event()
    threads = []
    try:
        with monkeypatch.context() as m:
            _at_promote(m, lambda: (threads.append(_hold_sqlite_write_lock(db.engine.url.database, release,
                                                                           holding)), holding.wait(60)))
            result = retrain.run_once(settings, db=db)
        release.set()
        threads[0].join(60)
        assert result.status == "failed" and "locked" in result.message, result.summary()
        with db.read() as s:
            assert priorities_state(s) == before
            assert active_id(s) == first.model_version_id
            assert s.scalar(select(func.count(ModelVersion.id))) == 1
        assert _artifact_dirs(settings) == kept
        after = retrain.run_once(settings, db=db)
        assert after.status in ("succeeded", "rejected"), after.summary()
        with db.read() as s:
            failed = s.get(TrainingRun, result.run_id)
            assert failed.status == "failed"
    finally:
        release.set()
        db.dispose()


def test_a_promote_aborted_as_a_deadlock_victim_is_run_again_not_thrown_away(db, rt_settings, monkeypatch):  # noqa: F811
    """PostgreSQL may abort the final transaction as a deadlock victim (a re-import or an annotator's
    claim locking the same rows in another order). That attempt wrote nothing; the trained model was
    discarded with it and the run failed. Now the transaction runs again and the run succeeds, with
    one model version and every open pair rescored."""
    import psycopg
    from sqlalchemy.exc import OperationalError

    from annotate import db as db_module

    first, open_ids = _first_run(db, rt_settings)
    with db.begin() as s:
        add_pairs(s, 2000, 5, judged=True)
    write, calls = retrain.write_priorities, []

    def deadlocked_once(session, *args, **kwargs):
        calls.append(1)
        written = write(session, *args, **kwargs)
        if len(calls) == 1:
            raise OperationalError("UPDATE comparisons", {}, psycopg.errors.DeadlockDetected("deadlock detected"))
        return written

    monkeypatch.setattr(db_module.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(retrain, "write_priorities", deadlocked_once)
    second = retrain.run_once(rt_settings, db=db)
    assert second.status in ("succeeded", "rejected"), second.summary()
    assert len(calls) == 2
    with db.read() as s:
        versions = s.scalars(select(ModelVersion.id).order_by(ModelVersion.id)).all()
        assert versions == [first.model_version_id, second.model_version_id]
        run = s.get(TrainingRun, second.run_id)
        assert (run.status, run.counts["n_priorities_written"]) == (second.status, len(open_ids))


def test_undone_and_revised_judgments_are_no_new_labels(db, rt_settings):  # noqa: F811
    """Quality audit: the watcher's "N new judgments" (and the Overview's labels until the next retrain) counted
    rows, so each undo and judge-again counted twice, and a revision's replaced row too."""
    from annotate.models import JudgmentState

    _first_run(db, rt_settings)
    with db.begin() as s:
        add_pairs(s, 2000, 4, judged=True)
    with db.begin() as s:
        rows = list(s.scalars(select(Judgment).where(Judgment.id > 60).order_by(Judgment.id)))
        assert len(rows) == 4
        rows[0].state = JudgmentState.retracted  # undone
        rows[1].state = JudgmentState.superseded  # revised: the new row below replaces it
        s.add(Judgment(comparison_id=rows[1].comparison_id, annotator_id=None, source=rows[1].source, choice="b"))
    with db.read() as s:
        assert retrain.new_judgments(s)[0] == 3  # rows 3 and 4, and the revision
