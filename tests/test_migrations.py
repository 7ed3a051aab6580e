"""The migration chain goes up and down on both backends, and the models match it."""

from __future__ import annotations

import json
import uuid
import warnings

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from annotate import migrate
from annotate.db import create_db_engine
from annotate.models import Base
from tests.conftest import PG_ADMIN_URL, _pg_admin_engine


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    name = f"prefloop_mig_{uuid.uuid4().hex[:8]}"
    admin = _pg_admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _diff(url):
    engine = create_db_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn, warnings.catch_warnings():
            # SQLite cannot reflect the expression index uq_users_username_lower, so it is compared on
            # PostgreSQL only; test_usernames_differing_only_in_case_are_refused_by_the_database checks it on both.
            warnings.filterwarnings("ignore", ".*expression-based index '?uq_users_username_lower")
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()


def _schema(url) -> dict:
    """Tables with their columns, indexes, unique constraints and foreign keys, as reflected."""
    engine = create_db_engine(url, poolclass=NullPool)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*expression-based index")
            insp = inspect(engine)
            if engine.dialect.name == "sqlite":  # its reflection skips expression indexes: list them all
                with engine.connect() as conn:
                    rows = conn.execute(text("SELECT tbl_name, name FROM sqlite_master WHERE type = 'index'")).all()
                indexes = {t: sorted(name for table, name in rows if table == t) for t in insp.get_table_names()}
            else:
                indexes = {t: sorted(str(i["name"]) for i in insp.get_indexes(t)) for t in insp.get_table_names()}
            return {t: {"columns": sorted((c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(t)),
                        "indexes": indexes[t],
                        "unique": sorted(str(sorted(u["column_names"])) for u in insp.get_unique_constraints(t)),
                        "foreign_keys": sorted(str((fk["constrained_columns"], fk["referred_table"]))
                                               for fk in insp.get_foreign_keys(t))}
                    for t in insp.get_table_names() if t != "alembic_version"}
    finally:
        engine.dispose()


def test_up_down_up_and_models_match(empty_url):
    """Each downgrade undoes its own upgrade: stepping down one revision at a time gives back the schema
    the chain had at that revision on the way up (going straight to base would hide a downgrade that
    leaves its column behind, since an earlier one drops the whole table)."""
    script = ScriptDirectory.from_config(migrate.alembic_config(empty_url))
    revisions = list(reversed(list(script.walk_revisions())))
    # step up one revision at a time, then down one at a time, then up again
    schemas = [_schema(empty_url)]
    for rev in revisions:
        migrate.upgrade(empty_url, rev.revision)
        schemas.append(_schema(empty_url))
    assert migrate.current_heads(empty_url) == {script.get_current_head()}
    assert _diff(empty_url) == []
    assert len({str(s) for s in schemas}) == len(revisions) + 1  # every revision changes the schema
    for rev, before in zip(reversed(revisions), reversed(schemas[:-1])):
        migrate.downgrade(empty_url, rev.down_revision or "base")
        assert _schema(empty_url) == before, f"downgrade of {rev.revision} does not undo its upgrade"
    engine = create_db_engine(empty_url, poolclass=NullPool)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    migrate.upgrade(empty_url)
    assert _diff(empty_url) == []


def test_sqlite_connection_pragmas(tmp_path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'p.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    engine.dispose()


_UPGRADE_AT = """
import sys, time
from annotate import migrate
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))  # every process begins at the same instant
migrate.upgrade(sys.argv[1])
"""


def test_concurrent_upgrades_on_an_empty_database_all_succeed(empty_url):
    """Several servers starting together each run ``prefloop db upgrade``: none fails, the schema ends at head."""
    import subprocess
    import sys
    import time

    start = time.time() + 6.0  # after every process has imported alembic and the models
    procs = [subprocess.Popen([sys.executable, "-c", _UPGRADE_AT, empty_url, str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    try:
        outputs = [p.communicate(timeout=90)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(outputs)
    script = ScriptDirectory.from_config(migrate.alembic_config(empty_url))
    assert migrate.current_heads(empty_url) == {script.get_current_head()}
    assert _diff(empty_url) == []


def _add_user_row(url, name: str) -> int:
    """A users row written as an older prefloop (or a hand-made SQL insert) could have left it."""
    engine = create_db_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            return conn.execute(text(
                "INSERT INTO users (username, password_hash, role, active, failed_logins, created_at) "
                "VALUES (:n, 'x', 'annotator', true, 0, CURRENT_TIMESTAMP) RETURNING id"), {"n": name}).scalar_one()
    finally:
        engine.dispose()


def test_usernames_differing_only_in_case_are_refused_by_the_database(empty_url):
    """uq_users_username_lower exists after the upgrade: checked here because SQLite cannot reflect
    an expression index, so the models-match check above compares it on PostgreSQL only."""
    from sqlalchemy.exc import IntegrityError

    migrate.upgrade(empty_url)
    _add_user_row(empty_url, "Carol")
    with pytest.raises(IntegrityError):
        _add_user_row(empty_url, "carol")
    migrate.downgrade(empty_url, "0004")
    _add_user_row(empty_url, "carol")  # the index is gone again


def test_upgrade_over_usernames_differing_only_in_case_says_which_and_what_to_do(empty_url, tmp_path, monkeypatch,
                                                                                 capsys):
    """Not a raw IntegrityError from CREATE UNIQUE INDEX (which the CLI reported as an unreachable database)."""
    from annotate import cli

    migrate.upgrade(empty_url, "0004")
    carol, bob, big_carol = (_add_user_row(empty_url, name) for name in ("carol", "bob", "Carol"))
    monkeypatch.setenv("PREFLOOP_DATABASE_URL", empty_url)
    monkeypatch.setenv("PREFLOOP_DATA_DIR", str(tmp_path / "data"))
    assert cli.main(["db", "upgrade"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: usernames that differ only in case: "
                                                   f"'carol' (id {carol}), 'Carol' (id {big_carol}); rename all but one")
    assert "'bob'" not in err and "'prefloop users rename OLD NEW'" in err and "prefloop db upgrade" in err
    assert migrate.current_heads(empty_url) == {"0004"}  # nothing half-done

    # What the message says to do, on the database still at 0004 (the other users commands need the head).
    assert cli.main(["users", "list"]) == 2
    assert "is at revision 0004" in capsys.readouterr().err
    assert cli.main(["users", "rename", "Carol", "CAROL"]) == 2  # still only a case apart from 'carol'
    assert capsys.readouterr().err == "error: user 'carol' already exists; names must differ by more than case\n"
    assert cli.main(["users", "rename", "Carol", "carol-2"]) == 0
    assert capsys.readouterr().out == "renamed 'Carol' to 'carol-2'\n"
    assert cli.main(["db", "upgrade"]) == 0
    assert migrate.current_heads(empty_url) == {ScriptDirectory.from_config(migrate.alembic_config(empty_url))
                                                .get_current_head()}
    engine = create_db_engine(empty_url, poolclass=NullPool)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT username FROM users WHERE id = :i"), {"i": big_carol}).scalar() == "carol-2"
        detail = conn.execute(text("SELECT detail FROM audit_log WHERE action = 'user.rename'")).scalar_one()
    assert (json.loads(detail) if isinstance(detail, str) else detail) == {  # JSON text on SQLite
        "username": "carol-2", "old_username": "Carol"}
    engine.dispose()


def test_a_migration_the_database_refuses_is_reported_as_such_not_as_an_unreachable_database(
        empty_url, tmp_path, monkeypatch, capsys):
    """Before, every database error of 'db upgrade' said "cannot open the database ...; check
    PREFLOOP_DATABASE_URL" (on SQLite "cannot open the SQLite database", status 1), also one that
    a reachable database raised for a migration's own statement: here an index someone made by hand
    under the name migration 0005 creates."""
    from annotate import cli

    migrate.upgrade(empty_url, "0004")
    engine = create_db_engine(empty_url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("CREATE INDEX uq_users_username_lower ON users (username)"))
    engine.dispose()
    monkeypatch.setenv("PREFLOOP_DATABASE_URL", empty_url)
    monkeypatch.setenv("PREFLOOP_DATA_DIR", str(tmp_path / "data"))
    assert cli.main(["db", "upgrade"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: migration 0005 failed (upgrade): the database refused it: ")
    assert "uq_users_username_lower" in err and "already exists" in err
    assert err.endswith("; the database is at revision 0004\n")
    assert "cannot open" not in err and "check PREFLOOP_DATABASE_URL" not in err
    assert migrate.current_heads(empty_url) == {"0004"}


def test_0006_adds_the_rater_of_imported_judgments_and_takes_it_away_again(empty_url):
    """judgments.external_annotator (the ``annotator`` an imported row names) comes with 0006 and goes with
    its downgrade, on both backends; the models-match check above holds it to the model's String(256)."""
    def columns() -> dict:
        engine = create_db_engine(empty_url, poolclass=NullPool)
        try:
            return {c["name"]: c for c in inspect(engine).get_columns("judgments")}
        finally:
            engine.dispose()

    migrate.upgrade(empty_url, "0005")
    assert "external_annotator" not in columns()
    migrate.upgrade(empty_url, "0006")
    column = columns()["external_annotator"]
    assert column["nullable"] and getattr(column["type"], "length", None) == 256
    migrate.downgrade(empty_url, "0005")
    assert "external_annotator" not in columns()
