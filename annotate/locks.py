"""Named job locks that hold across processes and machines.

PostgreSQL: a session-level ``pg_try_advisory_lock`` on a dedicated
connection from a ``NullPool`` engine in autocommit mode. A pooled connection
would keep the session lock after being returned to the pool, and an open
transaction would pin a snapshot for the whole job. The server releases the
lock when the connection closes, so a killed holder frees it at once.

SQLite: a row in ``job_locks`` refreshed by a heartbeat thread. A row whose
heartbeat is older than ``stale_after`` seconds, or whose holder is a process
on this host that no longer exists, is taken over; so is one left by this
process after it released the lock (the database was locked when it tried to
delete the row).

Usage::

    lock = acquire(db, "retrain")
    if lock is None:
        ...  # someone else is running
    try:
        lock.check()        # raises LockLost if it was taken over meanwhile
    finally:
        lock.release()
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import uuid
from datetime import timedelta

from sqlalchemy import delete, select, text, update
from sqlalchemy.pool import NullPool

from annotate.db import Database, create_db_engine
from annotate.errors import PrefloopError
from annotate.models import JobLock, utcnow

DEFAULT_STALE_SECONDS = 60.0
log = logging.getLogger("prefloop.locks")
_held: set[str] = set()
"""Holders of the ``job_locks`` rows this process holds now (a row of ours not in it was released)."""
_held_lock = threading.Lock()


class LockLost(PrefloopError):
    """This process no longer holds the lock (it was taken over or its connection dropped)."""


def holder_id() -> str:
    """``host:pid:random`` naming this process as a lock holder."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def advisory_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name``."""
    digest = hashlib.sha256(f"prefloop:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _process_gone(holder: str) -> bool:
    """True when ``holder`` names a process on this host that does not exist."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class PgAdvisoryLock:
    """A held PostgreSQL advisory lock; :meth:`release` frees it and closes its connection."""

    def __init__(self, url: str, name: str):
        self.name = name
        self.key = advisory_key(name)
        self._engine = create_db_engine(url, poolclass=NullPool).execution_options(isolation_level="AUTOCOMMIT")
        self._conn = None
        self._released = False

    def _try(self) -> bool:
        self._conn = self._engine.connect()
        got = self._conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar()
        if not got:
            self._close()
        return bool(got)

    @property
    def lost(self) -> bool:
        if self._released or self._conn is None:
            return True
        # A session lock lives as long as its connection: a live connection holds it.
        try:
            self._conn.execute(text("SELECT 1"))
        except Exception:
            return True
        return False

    def check(self) -> None:
        """Raise :class:`LockLost` unless the lock is still held."""
        if self.lost:
            raise LockLost(f"the {self.name!r} lock was lost (database connection dropped); "
                           "this run stops without changing anything")

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None
        self._engine.dispose()

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._released:
            return
        self._released = True
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            except Exception:
                pass  # closing the connection releases it anyway
        self._close()


class RowLock:
    """A held ``job_locks`` row with a heartbeat thread (SQLite)."""

    def __init__(self, db: Database, name: str, holder: str, heartbeat_every: float):
        self.db = db
        self.name = name
        self.holder = holder
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_every,),
                                        name=f"lock-heartbeat-{name}", daemon=True)
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                with self.db.begin() as session:
                    n = session.execute(
                        update(JobLock).where(JobLock.name == self.name, JobLock.holder == self.holder)
                        .values(heartbeat_at=utcnow())).rowcount
            except Exception:
                continue  # a busy database: try again at the next beat; staleness decides
            if n == 0:
                self._lost.set()
                return

    @property
    def lost(self) -> bool:
        if self._lost.is_set():
            return True
        with self.db.read() as session:
            holder = session.scalar(select(JobLock.holder).where(JobLock.name == self.name))
        if holder != self.holder:
            self._lost.set()
        return self._lost.is_set()

    def check(self) -> None:
        """Raise :class:`LockLost` unless the row still names this holder."""
        if self.lost:
            raise LockLost(f"the {self.name!r} lock was taken over by another process "
                           "(this one missed its heartbeats); this run stops without changing anything")

    def release(self) -> None:
        """Stop the heartbeat and delete the row if it is still ours (idempotent, never raises).

        When the database stays locked past its busy timeout the row is left: with
        its heartbeat stopped it goes stale for other processes, and this one no
        longer counts it as held (:func:`_row_live`), so its next ``acquire`` takes it.
        """
        if self._stop.is_set():
            return
        self._stop.set()
        with _held_lock:
            _held.discard(self.holder)
        self._thread.join(timeout=10)
        try:
            with self.db.begin() as session:
                session.execute(delete(JobLock).where(JobLock.name == self.name, JobLock.holder == self.holder))
        except Exception as exc:  # a release must not turn the caller's outcome into an error
            log.warning("could not delete the %r lock row (%s); it goes stale once its heartbeat stops",
                        self.name, exc)


def acquire(db: Database, name: str, *, holder: str | None = None,
            stale_after: float = DEFAULT_STALE_SECONDS,
            heartbeat_every: float | None = None) -> PgAdvisoryLock | RowLock | None:
    """Try to take the lock ``name`` without waiting; ``None`` when someone else holds it.

    ``stale_after`` and ``heartbeat_every`` (default a fifth of it) only matter
    on SQLite.
    """
    if db.dialect == "postgresql":
        lock = PgAdvisoryLock(db.engine.url.render_as_string(hide_password=False), name)
        return lock if lock._try() else None
    holder = holder or holder_id()
    now = utcnow()
    with _held_lock:  # before the row exists, so other threads here never take it for a leftover
        _held.add(holder)
    got = False
    try:
        with db.begin() as session:  # BEGIN IMMEDIATE: competing acquirers queue here
            row = session.get(JobLock, name)
            if row is None:
                session.add(JobLock(name=name, holder=holder, acquired_at=now, heartbeat_at=now))
            elif not _row_live(row, now, stale_after):
                row.holder, row.acquired_at, row.heartbeat_at = holder, now, now
            else:
                return None
        got = True
    finally:
        if not got:
            with _held_lock:
                _held.discard(holder)
    return RowLock(db, name, holder, heartbeat_every or max(0.05, stale_after / 5))


def _row_live(row: JobLock, now, stale_after: float) -> bool:
    """Whether a ``job_locks`` row still holds its lock: a recent heartbeat and a holder not known to be gone."""
    return (row.heartbeat_at >= now - timedelta(seconds=stale_after) and not _process_gone(row.holder)
            and not _released_here(row.holder))


def _released_here(holder: str) -> bool:
    """True when ``holder`` names this process but not a lock it holds now (a row its release left)."""
    if not holder.startswith(f"{socket.gethostname()}:{os.getpid()}:"):
        return False
    with _held_lock:
        return holder not in _held


def is_held(db: Database, name: str, *, stale_after: float = DEFAULT_STALE_SECONDS) -> bool:
    """Whether someone holds ``name`` now, as :func:`acquire` would judge it (read-only, takes nothing).

    PostgreSQL: a granted advisory lock on the key (freed when its holder's
    connection drops). SQLite: a ``job_locks`` row that ``acquire`` would not take over.
    """
    with db.read() as session:
        if db.dialect == "postgresql":
            key = advisory_key(name) & 0xFFFF_FFFF_FFFF_FFFF  # pg_locks shows it as two oids
            return bool(session.scalar(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND classid::bigint = :high AND objid::bigint = :low"),
                {"high": key >> 32, "low": key & 0xFFFF_FFFF}))
        row = session.get(JobLock, name)
        return row is not None and _row_live(row, utcnow(), stale_after)


def current_holder(db: Database, name: str) -> str | None:
    """Who holds ``name`` according to ``job_locks`` (SQLite; ``None`` on PostgreSQL)."""
    if db.dialect == "postgresql":
        return None
    with db.read() as session:
        return session.scalar(select(JobLock.holder).where(JobLock.name == name))
