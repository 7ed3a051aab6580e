"""Engine and session factories.

SQLite runs in WAL mode with a busy timeout and foreign keys on, and write
transactions start with ``BEGIN IMMEDIATE`` so two writers queue on the lock
instead of failing half-way with "database is locked". Read-only units of work
use :meth:`Database.read`, which begins a deferred transaction.

SQLite's own lock is not fair: a writer that finds it taken sleeps and polls,
while a thread that has just committed takes it again at once, so under steady
contention one thread of a process (one Streamlit session) can wait for ever.
Write units of work from one process therefore queue on a first-come,
first-served gate before ``BEGIN IMMEDIATE``; other processes still queue on
SQLite's busy timeout.

On PostgreSQL a transaction can be aborted as a deadlock victim or a
serialization failure; it wrote nothing, and PostgreSQL's advice is to run it
again. :meth:`Database.transact` does that for one unit of work.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from annotate.settings import Settings

SQLITE_BUSY_TIMEOUT_S = 30
TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})
"""PostgreSQL's deadlock_detected and serialization_failure: the transaction was rolled back whole."""
TRANSACT_ATTEMPTS = 4


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` aborted a transaction that can simply be run again (see ``TRANSIENT_SQLSTATES``)."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) in TRANSIENT_SQLSTATES


def is_sqlite(engine_or_url) -> bool:
    url = engine_or_url.url if hasattr(engine_or_url, "url") else make_url(str(engine_or_url))
    return url.get_backend_name() == "sqlite"


def create_private_file(path: Path, *, exist_ok: bool = True) -> None:
    """Create ``path`` (and its folder), empty and readable by its owner only; an existing file is left as it
    is (``exist_ok``) or raises FileExistsError.

    For a SQLite database, which holds every account's password hash: SQLite creates a new file with the
    process's umask (world-readable under the usual 022) and gives its -wal and -shm files the database
    file's permissions, so the file is made before SQLite opens it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        if not exist_ok:
            raise


def create_db_engine(url: str, *, poolclass=None, echo: bool = False) -> Engine:
    """Create an engine with the project's connection settings for ``url``."""
    sa_url = make_url(url)
    if sa_url.get_backend_name() == "sqlite":
        if sa_url.database and sa_url.database != ":memory:" and not sa_url.database.startswith("file:"):
            create_private_file(Path(sa_url.database))
        engine = create_engine(
            sa_url,
            echo=echo,
            poolclass=poolclass,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        )
        _configure_sqlite(engine)
        return engine
    kwargs = {"echo": echo, "pool_pre_ping": True}
    if poolclass is not None:
        kwargs["poolclass"] = poolclass
    else:
        kwargs.update(pool_size=10, max_overflow=20)
    return create_engine(sa_url, **kwargs)


def reading_engine(url: str) -> Engine:
    """A one-off engine (no pool) for reads: on SQLite its transactions begin DEFERRED, so a writer holding
    the lock (a long import) does not make it wait, as ``BEGIN IMMEDIATE`` does."""
    return create_db_engine(url, poolclass=NullPool).execution_options(sqlite_begin="DEFERRED")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {'DEFERRED' if mode == 'DEFERRED' else 'IMMEDIATE'}")


class FairGate:
    """A first-come, first-served mutex for one process's SQLite writers.

    Releasing hands the gate straight to the longest waiter, so no thread can
    overtake one that arrived earlier. Re-entrant per thread. ``acquire``
    returns False after ``timeout`` seconds; the caller then goes on without
    the gate and SQLite's busy timeout decides, exactly as without a gate.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: deque[threading.Event] = deque()
        # None (free), a thread id (held) or a waiter's Event (handed to it).
        self._owner: int | threading.Event | None = None
        self._depth = 0

    def acquire(self, timeout: float) -> bool:
        me = threading.get_ident()
        with self._mutex:
            if self._owner == me:
                self._depth += 1
                return True
            if self._owner is None:
                self._owner, self._depth = me, 1
                return True
            turn = threading.Event()
            self._waiters.append(turn)
        turn.wait(timeout)
        with self._mutex:
            if self._owner is turn:  # handed over (possibly just as the wait timed out)
                self._owner, self._depth = me, 1
                return True
            self._waiters.remove(turn)
            return False

    def release(self) -> None:
        with self._mutex:
            if self._owner != threading.get_ident():
                raise RuntimeError("FairGate released by a thread that does not hold it")
            self._depth -= 1
            if self._depth:
                return
            if self._waiters:
                self._owner = self._waiters.popleft()
                self._owner.set()
            else:
                self._owner = None


@dataclass
class Database:
    """An engine plus the two session factories every caller uses.

    ``with db.begin() as session:`` frames one write unit of work (commits on
    success, rolls back on error); ``with db.read() as session:`` one read.
    """

    engine: Engine

    def __post_init__(self) -> None:
        self._write = sessionmaker(self.engine, expire_on_commit=False)
        self._gate = FairGate() if is_sqlite(self.engine) else None
        read_engine = self.engine.execution_options(sqlite_begin="DEFERRED")
        self._read = sessionmaker(read_engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def begin(self) -> Iterator[Session]:
        gated = self._gate is not None and self._gate.acquire(SQLITE_BUSY_TIMEOUT_S)
        try:
            with self._write.begin() as session:
                yield session
        finally:
            if gated:
                self._gate.release()

    def transact(self, work, attempts: int = TRANSACT_ATTEMPTS):
        """``work(session)`` in one write unit of work; its result.

        Run again, after a short random pause, when PostgreSQL aborted it as a
        deadlock victim or a serialization failure (the attempt wrote nothing);
        after ``attempts`` tries, or on any other error, the error is raised.
        ``work`` must not have effects outside the session.
        """
        for attempt in range(1, attempts + 1):
            try:
                with self.begin() as session:
                    return work(session)
            except DBAPIError as exc:
                if attempt == attempts or not is_transient(exc):
                    raise
                time.sleep(random.uniform(0.005, 0.05) * attempt)

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read.begin() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


def open_database(settings: Settings, *, null_pool: bool = False) -> Database:
    """Open the database named by ``settings`` (does not migrate)."""
    return Database(create_db_engine(settings.sqlalchemy_url, poolclass=NullPool if null_pool else None))
