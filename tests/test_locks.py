"""Job locks: one holder across threads and processes, stale takeover (SQLite and PostgreSQL)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from annotate import locks
from annotate.db import Database, create_db_engine
from annotate.models import JobLock, utcnow

REPO = Path(__file__).resolve().parent.parent


def test_one_holder_among_threads(db, settings):
    """Eight threads with their own engines race for the lock: exactly one wins."""
    n = 8
    barrier = threading.Barrier(n)
    results: list = [None] * n
    dbs = [Database(create_db_engine(settings.sqlalchemy_url)) for _ in range(n)]

    def worker(i):
        barrier.wait()
        results[i] = locks.acquire(dbs[i], "job", stale_after=30)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        held = [r for r in results if r is not None]
        assert len(held) == 1
        assert not held[0].lost
        held[0].check()
        held[0].release()
        again = locks.acquire(db, "job")
        assert again is not None
        again.release()
    finally:
        for r in results:
            if r is not None:
                r.release()
        for d in dbs:
            d.dispose()


def test_different_names_do_not_conflict(db):
    a = locks.acquire(db, "one")
    b = locks.acquire(db, "two")
    try:
        assert a is not None and b is not None
    finally:
        a.release()
        b.release()


def test_release_is_idempotent_and_frees(db):
    lock = locks.acquire(db, "job")
    assert locks.acquire(db, "job") is None
    lock.release()
    lock.release()
    other = locks.acquire(db, "job")
    assert other is not None
    other.release()


HOLDER = """
import sys, time
from annotate.db import Database, create_db_engine
from annotate import locks
db = Database(create_db_engine(sys.argv[1]))
lock = locks.acquire(db, "job", stale_after=float(sys.argv[2]))
print("held" if lock else "busy", flush=True)
time.sleep(600)
"""


def _spawn_holder(url: str, stale: float = 60.0) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, url, str(stale)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line == "held", line
    return proc


def test_other_process_excluded_then_killed_holder_taken_over(db, settings):
    proc = _spawn_holder(settings.sqlalchemy_url)
    try:
        assert locks.acquire(db, "job") is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        # PostgreSQL frees the lock with the connection; SQLite sees the holder's pid is gone.
        lock = None
        deadline = time.monotonic() + 20
        while lock is None and time.monotonic() < deadline:
            lock = locks.acquire(db, "job")
            time.sleep(0.1)
        assert lock is not None
        lock.release()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sqlite_stale_row_from_another_host_taken_over(sqlite_db):
    old = utcnow() - timedelta(seconds=120)
    with sqlite_db.begin() as s:
        s.add(JobLock(name="job", holder="otherhost:4242:abcd", acquired_at=old, heartbeat_at=old))
    assert locks.acquire(sqlite_db, "job", stale_after=300) is None  # not stale yet for 300 s
    lock = locks.acquire(sqlite_db, "job", stale_after=60)
    assert lock is not None
    try:
        assert locks.current_holder(sqlite_db, "job") == lock.holder
    finally:
        lock.release()
    assert locks.current_holder(sqlite_db, "job") is None


def test_sqlite_fresh_row_from_another_host_is_respected(sqlite_db):
    with sqlite_db.begin() as s:
        s.add(JobLock(name="job", holder="otherhost:4242:abcd", acquired_at=utcnow(), heartbeat_at=utcnow()))
    assert locks.acquire(sqlite_db, "job", stale_after=60) is None


def test_sqlite_heartbeat_keeps_lock_and_detects_takeover(sqlite_db):
    lock = locks.acquire(sqlite_db, "job", stale_after=0.6, heartbeat_every=0.1)
    try:
        time.sleep(1.5)  # well past stale_after: only the heartbeat keeps it fresh
        assert locks.acquire(sqlite_db, "job", stale_after=0.6, holder="otherhost:1:x") is None
        # Simulate a takeover after missed heartbeats: the old holder notices.
        with sqlite_db.begin() as s:
            s.get(JobLock, "job").holder = "otherhost:1:x"
        assert lock.lost
        with pytest.raises(locks.LockLost):
            lock.check()
    finally:
        lock.release()
    # release() did not delete the new holder's row
    assert locks.current_holder(sqlite_db, "job") == "otherhost:1:x"


def test_pg_lock_lives_on_a_dedicated_connection(pg_db):
    """The advisory lock survives the app's pooled sessions and is released with its connection."""
    lock = locks.acquire(pg_db, "job")
    assert lock is not None
    try:
        with pg_db.begin() as s:  # pooled sessions come and go
            s.execute(locks.text("SELECT 1"))
        assert locks.acquire(pg_db, "job") is None
        assert not lock.lost
    finally:
        lock.release()
    assert lock.lost
    again = locks.acquire(pg_db, "job")
    assert again is not None
    again.release()


def test_pg_lock_whose_connection_dropped_is_lost_and_free_for_others(pg_db):
    """The server ended the lock's connection (a restart, an admin's pg_terminate_backend): the advisory
    lock went with it, so the holder must stop (``check`` raises) and another process may take it."""
    lock = locks.acquire(pg_db, "job")
    assert lock is not None
    try:
        pid = lock._conn.execute(locks.text("SELECT pg_backend_pid()")).scalar()
        with pg_db.begin() as s:
            assert s.execute(locks.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
        assert lock.lost
        with pytest.raises(locks.LockLost, match="connection dropped"):
            lock.check()
        other = locks.acquire(pg_db, "job")
        assert other is not None
        other.release()
    finally:
        lock.release()


def test_sqlite_release_while_the_database_is_locked_does_not_raise_and_frees_the_lock_here(sqlite_settings,
                                                                                            monkeypatch):
    """A release that cannot delete its row (another writer holds SQLite's lock past the busy timeout) must
    not raise out of the job's ``finally``; the row it leaves is this process's to take again at once."""
    import sqlite3

    from annotate import db as dbmod

    monkeypatch.setattr(dbmod, "SQLITE_BUSY_TIMEOUT_S", 1)
    db = Database(create_db_engine(sqlite_settings.sqlalchemy_url))
    try:
        lock = locks.acquire(db, "job", stale_after=60)
        assert lock is not None
        other = sqlite3.connect(db.engine.url.database, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            lock.release()  # raised OperationalError: database is locked
        finally:
            other.execute("COMMIT")
            other.close()
        assert locks.current_holder(db, "job") == lock.holder  # left behind, heartbeat stopped
        assert not locks.is_held(db, "job")
        again = locks.acquire(db, "job", stale_after=60)
        assert again is not None
        again.release()
        assert locks.current_holder(db, "job") is None
    finally:
        db.dispose()
