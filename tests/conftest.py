"""Shared fixtures: a migrated temporary SQLite file and a migrated PostgreSQL
database (on the server at ``PREFLOOP_TEST_PG_URL``, default
127.0.0.1:5432). PostgreSQL tests FAIL when the server is unreachable: they
are never skipped.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from annotate import migrate
from annotate.db import Database, create_db_engine
from annotate.models import Base
from annotate.settings import load_settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# rm.encoder remembers weight-file hashes under $XDG_CACHE_HOME: the tests (and the CLI processes
# they start) use a folder of their own, not the user's ~/.cache.
os.environ["XDG_CACHE_HOME"] = _XDG = tempfile.mkdtemp(prefix="prefloop-tests-xdg-")
atexit.register(shutil.rmtree, _XDG, ignore_errors=True)

PG_ADMIN_URL = os.environ.get("PREFLOOP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _pg_admin_engine():
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)


@pytest.fixture(scope="session")
def pg_url():
    """A freshly created, migrated PostgreSQL database for this test session."""
    name = f"prefloop_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = _pg_admin_engine()
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # never skip: PostgreSQL is part of the product
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}. "
                    "Start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start")
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"),
            {"n": name})
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """A migrated SQLite file, copied for each test (migrating once is faster)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


def _truncate_all(engine) -> None:
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture
def sqlite_url(tmp_path, sqlite_template) -> str:
    path = tmp_path / "prefloop.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def pg_clean_url(pg_url) -> str:
    engine = create_db_engine(pg_url, poolclass=NullPool)
    _truncate_all(engine)
    engine.dispose()
    return pg_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request) -> str:
    """The URL of an empty migrated database, once per backend."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_clean_url")


@pytest.fixture
def settings(tmp_path, db_url):
    return load_settings(environ={}, data_dir=tmp_path / "data", database_url=db_url, env="test")


@pytest.fixture
def db(settings):
    database = Database(create_db_engine(settings.sqlalchemy_url))
    yield database
    database.dispose()


@pytest.fixture
def sqlite_settings(tmp_path, sqlite_url):
    return load_settings(environ={}, data_dir=tmp_path / "data", database_url=sqlite_url, env="test")


@pytest.fixture
def sqlite_db(sqlite_settings):
    database = Database(create_db_engine(sqlite_settings.sqlalchemy_url))
    yield database
    database.dispose()


@pytest.fixture
def pg_db(tmp_path, pg_clean_url):
    database = Database(create_db_engine(pg_clean_url))
    yield database
    database.dispose()


HH_DATA = Path(__file__).resolve().parent / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


@pytest.fixture(autouse=True)
def _forget_unknown_login_names(monkeypatch):
    """Each test starts with no failed logins under unknown names (the app keeps them per process)."""
    from annotate import accounts

    monkeypatch.setattr(accounts, "_unknown_names", accounts._UnknownNames())


@pytest.fixture(scope="session")
def hh_path() -> Path:
    path = Path(os.environ.get("PREFLOOP_HH_DATA", HH_DATA))
    if not path.exists():
        pytest.fail(f"real HH-RLHF data not found at {path} (set PREFLOOP_HH_DATA)")
    return path


def pytest_sessionfinish(session, exitstatus):
    """With PREFLOOP_NO_SKIPS=1 (``make test``), a skipped test fails the run."""
    if os.environ.get("PREFLOOP_NO_SKIPS") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped and session.exitstatus == 0:
        reporter.write_line(f"{len(skipped)} test(s) skipped: every test must run here (PREFLOOP_NO_SKIPS=1)",
                            red=True)
        session.exitstatus = 1
