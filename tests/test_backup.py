"""``prefloop db backup`` / ``db restore`` on SQLite (online backup API) and PostgreSQL (pg_dump/pg_restore),
run as a user would (subprocesses), with judgments made through the service layer."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid

import pytest
from sqlalchemy import create_engine, func, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from annotate import campaign, judgments, locks, migrate, queue
from annotate.db import Database, create_db_engine
from annotate.models import Comparison, Judgment, JudgmentState, ModelVersion
from annotate.retrain import LOCK_NAME
from annotate.settings import load_settings
from tests.conftest import PG_ADMIN_URL
from tests.factories import make_comparisons, make_user


def run(env, *args):
    return subprocess.run([sys.executable, "-m", "annotate.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def _env(tmp_path, url):
    e = dict(os.environ)
    e.update(PREFLOOP_DATA_DIR=str(tmp_path / "data"), PREFLOOP_DATABASE_URL=url)
    return e


def _judge(url, tmp_path, n, *, annotator="ann", pairs=0):
    """Make ``pairs`` new comparisons, then ``n`` judgments through the queue and the judgment service."""
    settings = load_settings(environ={}, data_dir=tmp_path / "data", database_url=url, env="test")
    db = Database(create_db_engine(url))
    try:
        with db.begin() as s:
            if pairs:
                make_comparisons(s, pairs, tag=annotator)
            user = make_user(s, annotator)
        for _ in range(n):
            with db.begin() as s:
                options = campaign.get_options(s, settings)
                a = queue.next_comparison(s, settings, options, actor=user)
                judgments.submit(s, settings, actor=user, comparison_id=a.comparison_id, shown="left")
    finally:
        db.dispose()


def _count(url):
    engine = create_db_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(Judgment))
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_env(tmp_path):
    url = f"sqlite:///{tmp_path / 'data' / 'prefloop.db'}"
    migrate.upgrade(url)
    _judge(url, tmp_path, 5, pairs=12)
    return _env(tmp_path, url), url


def test_a_sqlite_backup_holds_what_was_committed_and_a_restore_brings_it_back(sqlite_env, tmp_path):
    env, url = sqlite_env
    out = tmp_path / "backup.db"
    r = run(env, "db", "backup", str(out))
    assert r.returncode == 0, r.stderr
    assert "5 judgments, 12 comparisons, 1 account" in r.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # every account's password hash is in it
    # one self-contained file: no -wal beside it, and SQLite finds it whole
    assert not out.with_name("backup.db-wal").exists()
    with sqlite3.connect(out) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("SELECT count(*) FROM judgments").fetchone()[0] == 5

    _judge(url, tmp_path, 3, annotator="later")
    assert _count(url) == 8
    r = run(env, "db", "restore", str(out))
    assert r.returncode == 2 and "--replace" in r.stderr
    assert _count(url) == 8

    r = run(env, "db", "restore", str(out), "--replace")
    assert r.returncode == 0, r.stderr
    assert _count(url) == 5
    # the judgments made after the backup are not lost: the database as it was is saved first
    saved = list((tmp_path / "data" / "backups").glob("before-restore-*.db"))
    assert len(saved) == 1 and f"saved at {saved[0]}" in r.stdout
    assert _count(f"sqlite:///{saved[0]}") == 8
    # and the app carries on on the restored database
    _judge(url, tmp_path, 1, annotator="after")
    assert _count(url) == 6


def test_a_backup_includes_judgments_still_in_the_wal_that_a_file_copy_misses(sqlite_env, tmp_path):
    env, url = sqlite_env
    db_file = tmp_path / "data" / "prefloop.db"
    # an open read transaction keeps the app's next commits in the -wal file (no checkpoint can pass it)
    reader = sqlite3.connect(db_file)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM judgments").fetchone()[0] == 5
        _judge(url, tmp_path, 4, annotator="walled")
        assert db_file.with_name("prefloop.db-wal").stat().st_size > 0
        copied = tmp_path / "copied.db"
        shutil.copyfile(db_file, copied)
        r = run(env, "db", "backup", str(tmp_path / "backup.db"))
    finally:
        reader.close()
    assert r.returncode == 0, r.stderr
    assert "9 judgments" in r.stdout
    with sqlite3.connect(copied) as conn:
        assert conn.execute("SELECT count(*) FROM judgments").fetchone()[0] < 9
    assert _count(f"sqlite:///{tmp_path / 'backup.db'}") == 9


def _mismatched_counts(url):
    """Comparisons whose ``judgment_count`` is not their number of active judgments (a torn copy's sign)."""
    engine = create_db_engine(url, poolclass=NullPool)
    active = (select(Judgment.comparison_id, func.count().label("n"))
              .where(Judgment.state == JudgmentState.active).group_by(Judgment.comparison_id).subquery())
    try:
        with engine.connect() as conn:
            return conn.execute(select(Comparison.id, Comparison.judgment_count, active.c.n)
                                .outerjoin(active, active.c.comparison_id == Comparison.id)
                                .where(Comparison.judgment_count != func.coalesce(active.c.n, 0))).all()
    finally:
        engine.dispose()


def test_a_backup_taken_while_annotators_write_is_whole_and_loses_none_of_their_judgments(sqlite_env, tmp_path):
    """Three backups while an annotator judges without pause: each is a consistent snapshot (every pair's
    count matches its judgments), they grow, and the writes go on across them (so they are taken mid-write)."""
    env, url = sqlite_env
    errors, made = [], []
    started, stop = threading.Event(), threading.Event()
    settings = load_settings(environ={}, data_dir=tmp_path / "data", database_url=url, env="test")

    def write():
        db = Database(create_db_engine(url))
        try:
            with db.begin() as s:
                make_comparisons(s, 400, tag="busy")
                user = make_user(s, "busy")
            while not stop.is_set() and len(made) < 400:
                with db.begin() as s:
                    a = queue.next_comparison(s, settings, campaign.get_options(s, settings), actor=user)
                    judgments.submit(s, settings, actor=user, comparison_id=a.comparison_id, shown="left")
                made.append(a.comparison_id)
                if len(made) == 3:
                    started.set()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            started.set()
            db.dispose()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert started.wait(120)
        results = [run(env, "db", "backup", str(tmp_path / f"b{i}.db")) for i in range(3)]
        after = len(made)  # the last backup's process has ended: judgments from here on are in no backup
        deadline = time.monotonic() + 60
        while len(made) <= after and not errors and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        writer.join()
    assert not errors, errors
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert len(made) < 400, "the writer ran out of pairs before the backups ended"
    backups = [f"sqlite:///{tmp_path / f'b{i}.db'}" for i in range(3)]
    counts = [_count(b) for b in backups]
    final = _count(url)
    assert final == 5 + len(made)
    assert counts == sorted(counts) and 5 + 3 <= counts[0] and counts[-1] < final, (counts, final)
    assert [_mismatched_counts(b) for b in backups] == [[], [], []]
    assert _mismatched_counts(url) == []


def test_backup_refusals_are_one_line_and_leave_no_file(sqlite_env, tmp_path):
    env, url = sqlite_env
    (tmp_path / "exists.db").write_text("keep me")
    r = run(env, "db", "backup", str(tmp_path / "exists.db"))
    assert r.returncode == 2 and "exists" in r.stderr and "never overwrites" in r.stderr
    assert (tmp_path / "exists.db").read_text() == "keep me"
    r = run(env, "db", "backup", str(tmp_path / "no" / "such" / "folder.db"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = run(env, "db", "backup")
    assert r.returncode == 2 and "say which file to write" in r.stderr
    r = run(env, "db", "backup", str(tmp_path / "x.db"), "--replace")
    assert r.returncode == 2 and "--replace goes with 'db restore'" in r.stderr
    r = run(env, "db", "upgrade", "--replace")
    assert r.returncode == 2 and "--replace goes with 'db restore'" in r.stderr
    no_db = _env(tmp_path, f"sqlite:///{tmp_path / 'none.db'}")
    r = run(no_db, "db", "backup", str(tmp_path / "x.db"))
    assert r.returncode == 2 and "no database at" in r.stderr
    assert not (tmp_path / "none.db").exists()
    mem = _env(tmp_path, "sqlite://")
    r = run(mem, "db", "backup", str(tmp_path / "x.db"))
    assert r.returncode == 2
    assert not (tmp_path / "x.db").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_restore_refuses_what_is_not_a_backup_of_this_kind_or_version(sqlite_env, tmp_path):
    env, url = sqlite_env
    before = _count(url)
    junk = tmp_path / "junk.db"
    junk.write_text("not a database")
    r = run(env, "db", "restore", str(junk), "--replace")
    assert r.returncode == 2 and "neither a SQLite backup nor a pg_dump file" in r.stderr
    r = run(env, "db", "restore", str(tmp_path / "missing.db"), "--replace")
    assert r.returncode == 2 and "no backup at" in r.stderr

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (x TEXT)")
    r = run(env, "db", "restore", str(other), "--replace")
    assert r.returncode == 2 and "not a prefloop one" in r.stderr

    newer = tmp_path / "newer.db"
    assert run(env, "db", "backup", str(newer)).returncode == 0
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    r = run(env, "db", "restore", str(newer), "--replace")
    assert r.returncode == 2 and "9999_from_the_future" in r.stderr and "newer prefloop" in r.stderr

    dump = tmp_path / "pg.dump"
    dump.write_bytes(b"PGDMP\x01\x0e\x00" + b"\x00" * 64)
    r = run(env, "db", "restore", str(dump), "--replace")
    assert r.returncode == 2 and "is a PostgreSQL backup and the database is SQLite" in r.stderr
    assert _count(url) == before
    assert not (tmp_path / "data" / "backups").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "inside"])
def test_restore_moves_a_damaged_database_aside_and_restores_in_its_place(sqlite_env, tmp_path, damage):
    """An operator's disaster drill: a truncated or overwritten prefloop.db could not be restored over ("database
    disk image is malformed; check PREFLOOP_DATA_DIR"), the one case a restore is for."""
    env, url = sqlite_env
    assert run(env, "db", "backup", str(tmp_path / "good.db")).returncode == 0
    live = tmp_path / "data" / "prefloop.db"
    _judge(url, tmp_path, 20, annotator="more", pairs=40)  # a file of several pages to damage
    size = live.stat().st_size
    if damage == "garbage":
        live.write_bytes(os.urandom(size))
    elif damage == "truncated":
        with open(live, "r+b") as fh:
            fh.truncate(size // 2)
    else:  # pages in the middle overwritten: only reading the whole file finds it
        with open(live, "r+b") as fh:
            fh.seek(size // 2)
            fh.write(os.urandom(8192))
    if damage != "inside":  # (SQLite opens this one, and would replay or drop a log beside it)
        live.with_name("prefloop.db-wal").write_bytes(b"stale log")
    r = run(env, "db", "restore", str(tmp_path / "good.db"))
    assert r.returncode == 2 and "--replace" in r.stderr
    assert ("is damaged" in r.stderr) == (damage != "inside")  # found by the copy --replace makes first
    r = run(env, "db", "restore", str(tmp_path / "good.db"), "--replace")
    assert r.returncode == 0, r.stderr
    [aside] = (tmp_path / "data" / "backups").glob("damaged-before-restore-*.db")
    assert f"moved to {aside}" in r.stdout
    if damage != "inside":
        assert aside.with_name(aside.name + "-wal").read_bytes() == b"stale log"
    assert _count(url) == 5
    with sqlite3.connect(live) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_backup_does_not_wait_for_a_writer_holding_the_lock(sqlite_env, tmp_path):
    """Every command's schema check began BEGIN IMMEDIATE: a backup during a long import waited for its write
    lock and failed after 30 s with "database is locked"; the copy itself needs only a read."""
    env, url = sqlite_env
    writer = sqlite3.connect(tmp_path / "data" / "prefloop.db", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE app_settings SET key = key")
        r = run(env, "db", "backup", str(tmp_path / "b.db"))
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert r.returncode == 0, r.stderr
    assert "5 judgments" in r.stdout


def test_restore_waits_for_no_retraining_run(sqlite_env, tmp_path):
    env, url = sqlite_env
    assert run(env, "db", "backup", str(tmp_path / "b.db")).returncode == 0
    db = Database(create_db_engine(url))
    lock = locks.acquire(db, LOCK_NAME)
    try:
        r = run(env, "db", "restore", str(tmp_path / "b.db"), "--replace")
    finally:
        lock.release()
        db.dispose()
    assert r.returncode == 2 and "retraining run is in progress" in r.stderr


def test_restore_into_a_new_data_dir_and_of_an_older_revision_says_to_upgrade(tmp_path):
    old_url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate.upgrade(old_url, "0005")
    env = _env(tmp_path, old_url)
    assert run(env, "db", "backup", str(tmp_path / "old-backup.db")).returncode == 0

    fresh = _env(tmp_path, f"sqlite:///{tmp_path / 'new' / 'prefloop.db'}")
    r = run(fresh, "db", "restore", str(tmp_path / "old-backup.db"))
    assert r.returncode == 0, r.stderr
    assert "revision 0005" in r.stdout and "run 'prefloop db upgrade'" in r.stdout
    # the live database, like the backup, holds every password hash: owner only (it was 0644 under umask 022)
    for db_file in (tmp_path / "old.db", tmp_path / "new" / "prefloop.db"):
        assert stat.S_IMODE(db_file.stat().st_mode) == 0o600, db_file
    assert run(fresh, "db", "upgrade").returncode == 0
    assert migrate.current_heads(fresh["PREFLOOP_DATABASE_URL"]) == set(migrate.script_directory(old_url).get_heads())


def test_the_backup_names_the_active_models_files_it_does_not_hold(sqlite_env, tmp_path):
    env, url = sqlite_env
    db = Database(create_db_engine(url))
    with db.begin() as s:
        s.add(ModelVersion(artifact_path="models/v1", encoder_id="enc", is_active=True, metrics={}))
    db.dispose()
    r = run(env, "db", "backup", str(tmp_path / "b.db"))
    assert r.returncode == 0, r.stderr
    assert f"copy {tmp_path / 'data' / 'models' / 'v1'} with it" in r.stdout
    # its remedy works on another machine too (README-follower run: without --replace-missing it failed there)
    assert "retrain --once --force', with --replace-missing on another machine" in r.stdout
    fresh = _env(tmp_path / "elsewhere", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    r = run(fresh, "db", "restore", str(tmp_path / "b.db"))
    assert r.returncode == 0, r.stderr
    assert "files are not at" in r.stdout and "retrain --once --force --replace-missing" in r.stdout


# --- PostgreSQL ---------------------------------------------------------------------------------

@pytest.fixture
def pg_databases():
    """Two new, empty PostgreSQL databases (the source migrated), dropped afterwards."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    names = [f"prefloop_backup_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    with admin.connect() as conn:
        for name in names:
            conn.execute(text(f'CREATE DATABASE "{name}"'))  # a generated identifier, not user input
    urls = [make_url(PG_ADMIN_URL).set(database=n).render_as_string(hide_password=False) for n in names]
    migrate.upgrade(urls[0])
    yield urls
    with admin.connect() as conn:
        for name in names:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                         {"n": name})
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.mark.postgres
def test_a_postgres_backup_restores_into_an_empty_database_and_over_one(pg_databases, tmp_path):
    source, target = pg_databases
    _judge(source, tmp_path, 6, pairs=10)
    env = _env(tmp_path, source)
    out = tmp_path / "prefloop.dump"
    r = run(env, "db", "backup", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes().startswith(b"PGDMP")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600

    target_env = _env(tmp_path, target)
    r = run(target_env, "db", "restore", str(out))
    assert r.returncode == 0, r.stderr
    assert "6 judgments, 10 comparisons, 1 account" in r.stdout
    assert _count(target) == 6
    # sequences come back too: the next judgment gets a new id
    _judge(target, tmp_path, 2, annotator="next")
    assert _count(target) == 8

    r = run(target_env, "db", "restore", str(out))
    assert r.returncode == 2 and "--replace" in r.stderr
    r = run(target_env, "db", "restore", str(out), "--replace")
    assert r.returncode == 0, r.stderr
    assert _count(target) == 6
    saved = list((tmp_path / "data" / "backups").glob("before-restore-*.dump"))
    assert len(saved) == 1


@pytest.mark.postgres
def test_a_postgres_restore_over_another_revision_says_to_downgrade_first(pg_databases, tmp_path):
    source, target = pg_databases
    env = _env(tmp_path, source)
    assert run(env, "db", "backup", str(tmp_path / "b.dump")).returncode == 0
    migrate.upgrade(target, "0005")
    r = run(_env(tmp_path, target), "db", "restore", str(tmp_path / "b.dump"), "--replace")
    assert r.returncode == 2 and "prefloop db downgrade" in r.stderr
    assert migrate.current_heads(target) == {"0005"}
    # the downgrade it asks for drops what later revisions added: the database is saved first, and said so
    [saved] = (tmp_path / "data" / "backups").glob("before-restore-*.dump")
    assert f"saved at {saved}" in r.stderr


@pytest.mark.postgres
def test_postgres_backup_without_pg_dump_or_server_is_one_line_and_leaves_no_file(pg_databases, tmp_path):
    source, _ = pg_databases
    env = _env(tmp_path, source)
    env["PATH"] = str(tmp_path / "empty-bin")
    (tmp_path / "empty-bin").mkdir()
    r = subprocess.run([sys.executable, "-m", "annotate.cli", "db", "backup", str(tmp_path / "b.dump")], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "pg_dump is not installed" in r.stderr
    gone = make_url(source).set(database="prefloop_no_such_database").render_as_string(hide_password=False)
    r = run(_env(tmp_path, gone), "db", "backup", str(tmp_path / "b.dump"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert not list(tmp_path.glob("*dump*"))


@pytest.mark.postgres
def test_restore_of_a_judgment_table_changed_since_keeps_every_later_judgment_in_the_saved_copy(pg_databases,
                                                                                               tmp_path):
    source, _ = pg_databases
    _judge(source, tmp_path, 3, pairs=6)
    env = _env(tmp_path, source)
    assert run(env, "db", "backup", str(tmp_path / "b.dump")).returncode == 0
    engine = create_db_engine(source, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(update(Judgment).values(rationale="edited after the backup"))
    engine.dispose()
    r = run(env, "db", "restore", str(tmp_path / "b.dump"), "--replace")
    assert r.returncode == 0, r.stderr
    saved = next((tmp_path / "data" / "backups").glob("before-restore-*.dump"))
    listing = subprocess.run(["pg_restore", "--data-only", "--table=judgments", "--file=-", str(saved)],
                             capture_output=True, text=True, check=True).stdout
    assert listing.count("edited after the backup") == 3


@pytest.mark.parametrize("url", ["postgresql+psycopg://bob:s3cret@db.example:5432/pf?sslmode=require",
                                 "postgresql+psycopg://bob@db.example/pf?sslmode=require&password=s3cret"])
def test_a_postgres_password_goes_to_pgpassword_never_the_command_line_or_a_message(url):
    """pg_dump's arguments are readable by every local user (ps): URL.set(password=None) left a password in the
    user part there, and a password= parameter was passed on too and printed in messages (security review)."""
    from annotate.backup import _libpq
    from annotate.cli import _shown_url

    argv, env = _libpq(url)
    assert env["PGPASSWORD"] == "s3cret"
    assert not any("s3cret" in a for a in argv) and argv[0].startswith("--dbname=postgresql://bob@db.example")
    assert "sslmode=require" in argv[0]
    assert "s3cret" not in _shown_url(url) and "***" in _shown_url(url)


@pytest.mark.postgres
def test_a_postgres_backup_with_a_password_in_the_url_works(pg_databases, tmp_path):
    source, _ = pg_databases
    with_password = make_url(source).set(password="unused-under-trust").render_as_string(hide_password=False)
    r = run(_env(tmp_path, with_password), "db", "backup", str(tmp_path / "b.dump"))
    assert r.returncode == 0, r.stderr
    assert "unused-under-trust" not in r.stdout + r.stderr and "***" in r.stdout
