"""Consistent copies of the database while the app runs (``prefloop db backup``) and their return
(``prefloop db restore``).

Copying a SQLite file in WAL mode with ``cp`` while the app writes can give a file that
misses committed judgments (they sit in ``prefloop.db-wal``) or a torn page, and copying
one back over a database whose ``-wal`` file is still there lets SQLite replay the old
log onto the restored file. So SQLite goes through its online backup API both ways: a
backup is one snapshot taken under a read transaction (writers carry on, WAL readers do
not block them), written to a temporary file beside the target and renamed into place
only once SQLite's integrity check passes; a restore copies the backup's pages into the
live database under its write lock, which SQLite keeps consistent with the live file's
log. PostgreSQL goes through ``pg_dump --format=custom`` and ``pg_restore``, which must be
installed (Debian: ``postgresql-client``, of the server's major version or newer).

A restore over a database that has prefloop tables needs ``replace=True`` and first backs
that database up under ``DATA_DIR/backups/``, so a restore loses nothing either. Model
artifacts live in ``DATA_DIR/models/``, outside the database: a backup says which one
is active, so it can be copied with it (or retrained after a restore).
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from annotate.errors import PrefloopError

SQLITE_MAGIC = b"SQLite format 3\x00"
PG_DUMP_MAGIC = b"PGDMP"


@dataclass(frozen=True)
class Contents:
    """What a database holds, read back from a copy to show it is whole."""

    revision: str | None
    judgments: int
    comparisons: int
    accounts: int
    active_model: str | None = None
    """The active reward model's artifact path (relative to ``DATA_DIR``), which the database only names."""

    def describe(self) -> str:
        from annotate.ingest import counted

        at = f"revision {self.revision}" if self.revision else "no prefloop revision"
        return (f"{at}: {counted(self.judgments, 'judgment')}, {counted(self.comparisons, 'comparison')}, "
                f"{counted(self.accounts, 'account')}")


@dataclass(frozen=True)
class BackupReport:
    path: Path
    size: int
    backend: str
    contents: Contents | None = None
    """Read back from the copy (SQLite); None for a PostgreSQL dump, which is checked with ``pg_restore --list``."""


@dataclass(frozen=True)
class RestoreReport:
    backend: str
    contents: Contents
    saved: BackupReport | None = None
    """The database as it was before the restore, when it had prefloop tables."""
    notes: list[str] = field(default_factory=list)


def _backend(url: str) -> str:
    return make_url(url).get_backend_name()


def _sqlite_path(url: str) -> Path:
    from annotate.settings import in_memory_sqlite

    database = make_url(url).database or ""
    if in_memory_sqlite(url) or database.startswith("file:"):
        raise PrefloopError("this database is in memory (or a file: URI): there is nothing to back up or restore; "
                            "point PREFLOOP_DATA_DIR or PREFLOOP_DATABASE_URL at a database file")
    return Path(database)


def _check_target(out: Path) -> None:
    if out.exists():
        raise PrefloopError(f"{out} exists: choose a new file name (a backup never overwrites a file)")
    if not out.parent.is_dir():
        raise PrefloopError(f"the folder {out.parent} does not exist: create it or choose another path")


def _partial(out: Path) -> Path:
    """A new, empty file beside ``out`` that only this user can read: a backup holds every account's
    password hash (the copy is renamed to ``out`` once whole)."""
    from annotate.db import create_private_file

    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    create_private_file(tmp, exist_ok=False)
    return tmp


def _put_in_place(tmp: Path, out: Path) -> None:
    """Give the finished copy ``tmp`` the name ``out`` unless a file took that name meanwhile (a hard link
    fails on an existing name, where a rename would replace it); the temporary name is removed after."""
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise PrefloopError(f"{out} was created while the backup ran: choose a new file name (a backup never "
                            "overwrites a file)") from None
    except OSError:  # a file system without hard links
        if out.exists():
            raise PrefloopError(f"{out} was created while the backup ran: choose a new file name") from None
        os.replace(tmp, out)


def _contents(url: str | None = None, *, sqlite_file: Path | None = None) -> Contents:
    """Revision and counts of the prefloop database at ``url``, or of the SQLite file ``sqlite_file``
    opened read-only (the app's engine would turn a backup's journal back to WAL)."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from annotate.db import reading_engine
    from annotate.models import Comparison, Judgment, ModelVersion, User

    if sqlite_file is not None:
        engine = create_engine("sqlite://", poolclass=NullPool,
                               creator=lambda: sqlite3.connect(_read_only(sqlite_file), uri=True))
    else:
        engine = reading_engine(url)
    try:
        with engine.connect() as conn:
            heads = MigrationContext.configure(conn).get_current_heads()
            with Session(bind=conn) as session:
                active = session.scalar(select(ModelVersion.artifact_path).where(ModelVersion.is_active.is_(True)))
                return Contents(
                    revision=", ".join(sorted(heads)) or None,
                    judgments=session.scalar(select(func.count(Judgment.id))) or 0,
                    comparisons=session.scalar(select(func.count(Comparison.id))) or 0,
                    accounts=session.scalar(select(func.count(User.id))) or 0,
                    active_model=active)
    finally:
        engine.dispose()


def _has_prefloop_tables(url: str) -> bool:
    from sqlalchemy import inspect

    from annotate.db import reading_engine

    engine = reading_engine(url)
    try:
        with engine.connect() as conn:
            return inspect(conn).has_table("alembic_version")
    finally:
        engine.dispose()


# --- SQLite -----------------------------------------------------------------------------------

def _sqlite_error(what: str, path: Path, exc: sqlite3.Error) -> PrefloopError:
    return PrefloopError(f"{what} {path}: {exc}")


def _read_only(path: Path) -> str:
    return f"{path.resolve().as_uri()}?mode=ro"


def _sqlite_backup(url: str, out: Path) -> BackupReport:
    from annotate.db import SQLITE_BUSY_TIMEOUT_S

    source = _sqlite_path(url)
    if not source.exists():
        raise PrefloopError(f"no database at {source.resolve()}: nothing to back up")
    tmp = _partial(out)
    try:
        # Read-write like the app's connections: read-only ones cannot open a WAL database whose -shm is missing.
        src = sqlite3.connect(source, timeout=SQLITE_BUSY_TIMEOUT_S)
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
            # The copy is one self-contained file: no -wal beside it to forget.
            dst.execute("PRAGMA journal_mode=DELETE")
            verdict = dst.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            dst.close()
            src.close()
        if verdict != "ok":
            raise Damaged(f"the copy of {source} failed SQLite's integrity check ({verdict}); "
                          "the database itself may be damaged: nothing was written", verdict)
        contents = _contents(sqlite_file=tmp)
        _put_in_place(tmp, out)
    except sqlite3.DatabaseError as exc:
        if _is_damage(exc):
            raise Damaged(f"cannot back up the SQLite database {source}: {exc}", str(exc)) from None
        raise PrefloopError(f"cannot back up the SQLite database {source} to {out}: {exc}") from None
    except sqlite3.Error as exc:
        raise PrefloopError(f"cannot back up the SQLite database {source} to {out}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return BackupReport(out, out.stat().st_size, "sqlite", contents)


def _read_sqlite_backup(path: Path) -> Contents:
    try:
        conn = sqlite3.connect(_read_only(path), uri=True)
        try:
            verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
            has_version = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise _sqlite_error("cannot read the backup", path, exc) from None
    if verdict != "ok":
        raise PrefloopError(f"the backup {path} fails SQLite's integrity check ({verdict}): it was not restored")
    if not has_version:
        raise PrefloopError(f"{path} is a SQLite database but not a prefloop one (no alembic_version table)")
    return _contents(sqlite_file=path)


def _sqlite_restore(url: str, backup: Path) -> None:
    from annotate.db import SQLITE_BUSY_TIMEOUT_S

    from annotate.db import create_private_file

    target = _sqlite_path(url)
    create_private_file(target)
    try:
        src = sqlite3.connect(_read_only(backup), uri=True)
        dst = sqlite3.connect(target, timeout=SQLITE_BUSY_TIMEOUT_S)
        try:
            src.backup(dst)
            # The backup's header says DELETE; the app's connections switch it back to WAL as they open.
            dst.execute("PRAGMA journal_mode=WAL")
        finally:
            dst.close()
            src.close()
    except sqlite3.Error as exc:
        raise PrefloopError(f"cannot restore into the SQLite database {target}: {exc}; the database was left as "
                            "it was") from None


# --- PostgreSQL -------------------------------------------------------------------------------

def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PrefloopError(f"{name} is not installed: PostgreSQL backups use pg_dump and pg_restore "
                            "(Debian: apt-get install postgresql-client, of the server's major version or newer)")
    return path


def _libpq(url: str) -> tuple[list[str], dict[str, str]]:
    """``--dbname`` for pg_dump/pg_restore and the environment: the password goes in PGPASSWORD,
    not on a command line other users can read."""
    sa_url = make_url(url)
    env = dict(os.environ)
    password = sa_url.password if sa_url.password is not None else sa_url.query.get("password")
    if isinstance(password, (tuple, list)):
        password = password[-1]
    if password:
        env["PGPASSWORD"] = str(password)
    # A password= parameter too: the command line is readable by every local user (ps).
    # (URL.set ignores None: _replace clears the password.)
    conninfo = (sa_url._replace(drivername="postgresql", password=None).difference_update_query(["password"])
                .render_as_string(hide_password=False))
    return [f"--dbname={conninfo}"], env


def _run(argv: list[str], env: dict[str, str], what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise PrefloopError(f"{what}: {lines[0] if lines else f'{Path(argv[0]).name} exited with {proc.returncode}'}")
    return proc


def _pg_backup(url: str, out: Path) -> BackupReport:
    pg_dump, pg_restore = _tool("pg_dump"), _tool("pg_restore")
    dbname, env = _libpq(url)
    tmp = _partial(out)
    try:
        _run([pg_dump, "--format=custom", "--no-owner", f"--file={tmp}", *dbname], env,
             "pg_dump could not back up the database")
        _run([pg_restore, "--list", str(tmp)], env, "the dump pg_dump wrote cannot be read back")
        _put_in_place(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return BackupReport(out, out.stat().st_size, "postgresql")


_COPY_REVISION = re.compile(r"^COPY \S*alembic_version \(version_num\) FROM stdin;\n(.*?)\n\\\.$", re.M | re.S)


def _pg_backup_revision(backup: Path, env: dict[str, str]) -> str | None:
    """The alembic revision a pg_dump file holds, read without restoring it."""
    proc = _run([_tool("pg_restore"), "--data-only", "--table=alembic_version", "--file=-", str(backup)], env,
                f"{backup} is not a pg_dump file pg_restore can read")
    match = _COPY_REVISION.search(proc.stdout)
    return ", ".join(sorted(match.group(1).split("\n"))) if match and match.group(1) else None


def _pg_restore(url: str, backup: Path) -> None:
    dbname, env = _libpq(url)
    _run([_tool("pg_restore"), "--clean", "--if-exists", "--no-owner", "--single-transaction", "--exit-on-error",
          *dbname, str(backup)], env, "pg_restore could not restore the backup (the database was left as it was)")


# --- the two commands -------------------------------------------------------------------------

def backup(url: str, out: str | os.PathLike) -> BackupReport:
    """Write a consistent copy of the database at ``url`` to ``out``, a new file (never overwritten).

    SQLite: a single SQLite file, integrity-checked, whose counts are read back. PostgreSQL: a
    ``pg_dump --format=custom`` file that ``pg_restore --list`` reads back. Nothing is left at
    ``out`` when it fails.
    """
    out = Path(out)
    _check_target(out)
    if _backend(url) == "sqlite":
        return _sqlite_backup(url, out)
    if _backend(url) == "postgresql":
        return _pg_backup(url, out)
    raise PrefloopError(f"backups of {_backend(url)} databases are not supported (SQLite and PostgreSQL are)")


def _kind_of_file(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(SQLITE_MAGIC):
        return "sqlite"
    if head.startswith(PG_DUMP_MAGIC):
        return "postgresql"
    return "unknown"


class Damaged(PrefloopError):
    """The SQLite database file is damaged (``reason``: SQLite's words, or what its header says)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def _is_damage(exc: BaseException) -> bool:
    text = str(getattr(exc, "orig", None) or exc).lower()
    return "malformed" in text or "not a database" in text


def _header_damage(path: Path) -> str | None:
    """What a SQLite file's first 100 bytes say is wrong with it, read without opening it with SQLite (which
    may rewrite or remove a -wal beside it): not a SQLite file, or shorter than its header's page count."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, "rb") as fh:
        head = fh.read(100)
    if len(head) < 100 or not head.startswith(SQLITE_MAGIC):
        return "not a SQLite database file"
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    size = path.stat().st_size
    if pages and head[24:28] == head[92:96] and size < pages * page_size:  # the header's count is valid
        return f"truncated: {size:,} bytes where its header says {pages * page_size:,}"
    return None


def _stamp() -> str:
    """UTC time and this process's id: two restores in one second got one name, and the second failed."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{os.getpid()}"





def restore(url: str, backup_file: str | os.PathLike, *, data_dir: Path, replace: bool = False,
            run_in_progress=None) -> RestoreReport:
    """Make the database at ``url`` what ``backup_file`` (from :func:`backup`) holds.

    A database that already has prefloop tables is replaced only with ``replace``, and is first
    backed up to ``data_dir/backups/before-restore-TIME.{db,dump}``. ``run_in_progress`` (a
    callable) refuses the restore while a retraining run holds its lock. Backups are restored into
    the backend they came from; the revision restored is reported, with the migration to run
    when it is older than this prefloop's.
    """
    from annotate import migrate

    backup_file = Path(backup_file)
    if not backup_file.is_file():
        raise PrefloopError(f"no backup at {backup_file}")
    backend = _backend(url)
    kind = _kind_of_file(backup_file)
    if kind == "unknown":
        raise PrefloopError(f"{backup_file} is neither a SQLite backup nor a pg_dump file from 'prefloop db backup'")
    if kind != backend:
        raise PrefloopError(f"{backup_file} is a {'SQLite' if kind == 'sqlite' else 'PostgreSQL'} backup and the "
                            f"database is {'SQLite' if backend == 'sqlite' else 'PostgreSQL'}: a backup is restored "
                            "into the kind of database it came from")
    damaged = None
    if backend == "sqlite":
        backup_contents = _read_sqlite_backup(backup_file)
        backup_revision = backup_contents.revision
        live = _sqlite_path(url)
        damaged = _header_damage(live)
        if damaged is None and live.exists():
            try:
                exists = _has_prefloop_tables(url)
            except DBAPIError as exc:
                if not _is_damage(exc):
                    raise
                damaged = str(exc.orig or exc)
        exists = live.exists() and (damaged is not None or exists)
    else:
        _, env = _libpq(url)
        backup_revision = _pg_backup_revision(backup_file, env)
        exists = _has_prefloop_tables(url)
    known = {rev.revision for rev in migrate.script_directory(url).walk_revisions()}
    if backup_revision is None or not set(backup_revision.split(", ")) <= known:
        raise PrefloopError(f"the backup {backup_file} is at revision {backup_revision or 'none'}, which this prefloop "
                            "does not know (a newer prefloop wrote it): restore it with that prefloop")
    saved = None
    notes = []
    folder = data_dir / "backups"
    if exists and not replace:
        if damaged is not None:
            raise PrefloopError(f"the database file {live} is damaged ({damaged}): add --replace to move it aside "
                                "(to DATA_DIR/backups/) and restore the backup in its place")
        raise PrefloopError("the database already has prefloop tables: add --replace to replace it with the "
                            "backup (it is first backed up under DATA_DIR/backups/)")
    if exists and damaged is None:
        if run_in_progress is not None and run_in_progress():
            raise PrefloopError("a retraining run is in progress: stop the watcher (and the app) and restore again")
        current = ", ".join(sorted(migrate.current_heads(url))) or None
        folder.mkdir(parents=True, exist_ok=True)
        try:
            saved = backup(url, folder / f"before-restore-{_stamp()}.{'db' if backend == 'sqlite' else 'dump'}")
        except Damaged as exc:  # damage inside the file, which only reading all of it finds
            damaged = exc.reason
    if exists and damaged is not None:
        # A damaged file cannot be backed up or written into: it is moved aside, whole, with its -wal and -shm.
        folder.mkdir(parents=True, exist_ok=True)
        aside = folder / f"damaged-before-restore-{_stamp()}.db"
        for suffix in ("", "-wal", "-shm"):
            if (part := live.with_name(live.name + suffix)).exists():
                os.replace(part, aside.with_name(aside.name + suffix))
        notes.append(f"the damaged database file ({damaged}) was moved to {aside}")
    elif exists:
        if backend == "postgresql" and current != backup_revision:
            # Saved first: the downgrade this asks for drops what later revisions added (imported raters' names).
            raise PrefloopError(f"the database is at revision {current}, the backup at {backup_revision}: pg_restore "
                                f"replaces the backup's tables only. The database as it is now is saved at "
                                f"{saved.path} (a downgrade drops what later revisions added, so keep it); run "
                                f"'prefloop db downgrade {backup_revision}' and restore again, or restore into an "
                                "empty database")
    if backend == "sqlite":
        _sqlite_restore(url, backup_file)
    else:
        _pg_restore(url, backup_file)
    contents = _contents(url)
    heads = set(migrate.script_directory(url).get_heads())
    if contents.revision and set(contents.revision.split(", ")) != heads:
        notes.append(f"the restored database is at revision {contents.revision}: run 'prefloop db upgrade'")
    return RestoreReport(backend, contents, saved, notes)
