"""Database.transact: a PostgreSQL deadlock victim or serialization failure is run again; nothing else is."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import psycopg.errors
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from annotate import db as dbmod
from annotate.db import is_transient


def _pg_error(cls):
    return OperationalError("UPDATE t", {}, cls("from the server"))


@contextmanager
def _probe_table(database, rows=()):
    """A scratch table, dropped afterwards (the PostgreSQL test database is shared by the session)."""
    with database.begin() as s:
        s.execute(text("DROP TABLE IF EXISTS transact_probe"))
        s.execute(text("CREATE TABLE transact_probe (id INTEGER PRIMARY KEY, v INTEGER)"))
        for row in rows:
            s.execute(text("INSERT INTO transact_probe VALUES (:id, :v)"), {"id": row[0], "v": row[1]})
    try:
        yield
    finally:
        with database.begin() as s:
            s.execute(text("DROP TABLE transact_probe"))


def test_transient_errors_are_the_deadlock_and_serialization_codes():
    assert is_transient(_pg_error(psycopg.errors.DeadlockDetected))
    assert is_transient(_pg_error(psycopg.errors.SerializationFailure))
    assert not is_transient(_pg_error(psycopg.errors.UniqueViolation))
    assert not is_transient(ValueError("no driver error"))


def test_a_deadlock_victim_is_run_again_and_only_the_last_attempt_is_kept(db, monkeypatch):
    monkeypatch.setattr(dbmod.time, "sleep", lambda s: None)
    calls = []

    def work(session):
        calls.append(1)
        session.execute(text("INSERT INTO transact_probe (id, v) VALUES (:i, :i)"), {"i": len(calls)})
        if len(calls) < 3:
            raise _pg_error(psycopg.errors.DeadlockDetected)
        return "done"

    with _probe_table(db):
        assert db.transact(work) == "done" and len(calls) == 3
        with db.read() as s:  # attempts 1 and 2 were rolled back
            assert s.execute(text("SELECT id FROM transact_probe")).scalars().all() == [3]


def test_other_errors_and_exhausted_retries_are_raised(db, monkeypatch):
    monkeypatch.setattr(dbmod.time, "sleep", lambda s: None)
    calls = []

    def unique(session):
        calls.append(1)
        raise _pg_error(psycopg.errors.UniqueViolation)

    with pytest.raises(OperationalError):
        db.transact(unique)
    assert len(calls) == 1

    def always(session):
        calls.append(1)
        raise _pg_error(psycopg.errors.SerializationFailure)

    with pytest.raises(OperationalError):
        db.transact(always, attempts=3)
    assert len(calls) == 1 + 3


@pytest.mark.postgres
def test_a_real_deadlock_is_resolved_by_running_the_victim_again(pg_db):
    with _probe_table(pg_db, rows=[(1, 0), (2, 0)]):
        _deadlock_two_workers(pg_db)


def _deadlock_two_workers(pg_db):
    barrier = threading.Barrier(2)
    attempts = {1: 0, 2: 0}
    errors = []

    def worker(first, second):
        def work(session):
            attempts[first] += 1
            session.execute(text("UPDATE transact_probe SET v = v + 1 WHERE id = :i"), {"i": first})
            if attempts[first] == 1:
                barrier.wait(timeout=10)  # both hold one row; each now asks for the other's
            session.execute(text("UPDATE transact_probe SET v = v + 1 WHERE id = :i"), {"i": second})
        try:
            pg_db.transact(work)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(1, 2)), threading.Thread(target=worker, args=(2, 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sorted(attempts.values()) == [1, 2]  # PostgreSQL aborted one; it ran again
    with pg_db.read() as s:
        assert dict(s.execute(text("SELECT id, v FROM transact_probe")).all()) == {1: 2, 2: 2}
