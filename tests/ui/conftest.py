"""Fixtures for the UI tests: a migrated SQLite file the app is pointed at."""

from __future__ import annotations

from pathlib import Path

import pytest

from annotate.db import Database, create_db_engine

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")
PAGES = Path(__file__).resolve().parents[2] / "annotate" / "ui" / "pages"


@pytest.fixture
def app_db(sqlite_url, tmp_path, monkeypatch) -> Database:
    """The database the app under test uses (its URL is put in the PREFLOOP_* environment).

    The app caches resources keyed by that URL, so tests never share one.
    """
    monkeypatch.setenv("PREFLOOP_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("PREFLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PREFLOOP_ENV", "test")
    monkeypatch.setenv("PREFLOOP_GOLD_RATE", "0")
    monkeypatch.setenv("PREFLOOP_PROBE_RATE", "0")
    database = Database(create_db_engine(sqlite_url))
    yield database
    database.dispose()
