"""Fixtures for the UI tests: a migrated SQLite file, with two accounts, that the app is pointed at."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from annotate.accounts import Actor
from annotate.db import Database, create_db_engine
from annotate.models import User
from tests.factories import make_user

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "streamlit_app.py")
PAGES = ROOT / "annotate" / "ui" / "pages"
ANNOTATOR, ADMIN = "ann", "boss"


def open_page(actor: Actor | None, page: str, timeout: float = 60):
    """An ``AppTest`` of the app, logged in as ``actor`` (or not), switched to ``page`` and run."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=timeout)
    if actor is not None:
        at.session_state["actor"] = actor
    at.run()
    at.switch_page(str(PAGES / page))
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.fixture(scope="session")
def ui_template(sqlite_template, tmp_path_factory) -> Path:
    """The migrated template plus an annotator and an admin (password hashing is slow: do it once)."""
    path = tmp_path_factory.mktemp("ui-template") / "ui.db"
    shutil.copy(sqlite_template, path)
    database = Database(create_db_engine(f"sqlite:///{path}"))
    with database.begin() as session:
        make_user(session, ANNOTATOR)
        make_user(session, ADMIN, "admin")
    database.dispose()
    return path


@pytest.fixture
def app_db(ui_template, tmp_path, monkeypatch) -> Database:
    """The database the app under test uses (its URL is put in the PREFLOOP_* environment).

    The app caches resources keyed by that URL, so tests never share one.
    """
    path = tmp_path / "prefloop.db"
    shutil.copy(ui_template, path)
    url = f"sqlite:///{path}"
    monkeypatch.setenv("PREFLOOP_DATABASE_URL", url)
    monkeypatch.setenv("PREFLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PREFLOOP_ENV", "test")
    monkeypatch.setenv("PREFLOOP_GOLD_RATE", "0")
    monkeypatch.setenv("PREFLOOP_PROBE_RATE", "0")
    database = Database(create_db_engine(url))
    yield database
    database.dispose()


@pytest.fixture
def people(app_db) -> tuple[Actor, Actor]:
    """(annotator, admin) as they exist in ``app_db``."""
    with app_db.read() as session:
        users = {u.username: u for u in session.scalars(select(User))}
        return tuple(Actor(id=users[n].id, username=n, role=users[n].role) for n in (ANNOTATOR, ADMIN))
