"""A click on an Export download in a session idle past PREFLOOP_SESSION_IDLE_MINUTES.

The buttons' files are deferred (``on_click="ignore"``): the click runs the data callable in a worker
thread of Streamlit's and no script, so the router's idle check (``context.refresh_actor``) never ran and
an idle admin session still downloaded exports, audit entry and all; only its next ordinary click logged
it out. The callable now checks itself (``context.deferred_download``): it refuses, builds nothing and
writes nothing, and the session's next run logs it out as any idle session's does.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from annotate.errors import PermissionDenied
from annotate.models import AuditEvent
from annotate.ui import context
from tests.ui.test_app import _app, _download, _login, _page, deferred_downloads  # noqa: F401

LOGGED_OUT = "You were logged out after 1 minute without activity."


@pytest.fixture
def idle_minute(monkeypatch):
    monkeypatch.setenv("PREFLOOP_SESSION_IDLE_MINUTES", "1")


def _exports(app_db) -> int:
    with app_db.read() as session:
        return session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "export"))


def _export_page(app_db):
    at = _login(_app(), "boss")
    at.switch_page(_page("admin_export.py"))
    at.run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Export"]
    return at


def _file_id(at, label: str) -> str:
    return next(b for b in at.get("download_button") if b.proto.label == label).proto.deferred_file_id


def test_a_download_within_the_idle_limit_builds_the_file_and_counts_as_activity(
        app_db, people, idle_minute, deferred_downloads):
    at = _export_page(app_db)
    at.session_state["last_seen"] = time.time() - 50
    before = _exports(app_db)
    data = _download(at, deferred_downloads, "Judgments CSV")
    assert isinstance(data, bytes) and "," in data.decode().splitlines()[0]  # the CSV, its header at least
    assert _exports(app_db) == before + 1
    # Like every action that reruns the script (refresh_actor), the press is activity: 75 s after the
    # last run, but not after the press, the session is still logged in, and another press still works.
    at.session_state["last_seen"] = time.time() - 75
    assert _download(at, deferred_downloads, "Judgments JSONL") is not None
    assert _exports(app_db) == before + 2
    at.run()
    assert not at.exception, at.exception
    assert at.session_state["actor"].username == "boss" and [t.value for t in at.title] == ["Export"]


def test_a_download_past_the_idle_limit_is_refused_logs_out_and_writes_nothing(
        app_db, people, idle_minute, deferred_downloads):
    at = _export_page(app_db)
    at.session_state["last_seen"] = time.time() - 75
    before = _exports(app_db)
    with pytest.raises(PermissionDenied, match="idle for more than 1 minute"):
        _download(at, deferred_downloads, "Judgments CSV")
    assert _exports(app_db) == before
    # So is every other press until the next run, which logs the session out as any idle one.
    with pytest.raises(PermissionDenied, match="idle for more than 1 minute"):
        _download(at, deferred_downloads, "TRL JSONL")
    assert _exports(app_db) == before
    at.run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["prefloop"] and "actor" not in at.session_state
    assert [i.value for i in at.info] == [LOGGED_OUT]


def test_the_idle_limit_off_never_refuses(app_db, people, monkeypatch, deferred_downloads):
    monkeypatch.setenv("PREFLOOP_SESSION_IDLE_MINUTES", "0")
    at = _export_page(app_db)
    at.session_state["last_seen"] = time.time() - 30 * 24 * 3600
    before = _exports(app_db)
    assert _download(at, deferred_downloads, "Judgments JSONL") is not None
    assert _exports(app_db) == before + 1


@pytest.fixture
def media_manager(monkeypatch, deferred_downloads) -> list:
    """The MediaFileManager the page's deferred downloads are registered with (one, once the page ran)."""
    from streamlit.runtime.media_file_manager import MediaFileManager

    managers: list = []
    original = MediaFileManager.add_deferred  # deferred_downloads' wrapper, still recording

    def add_deferred(self, *args, **kwargs):
        if self not in managers:
            managers.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add_deferred", add_deferred)
    return managers


def _click(manager, file_id: str):
    """What the browser's click does: Streamlit's own handler runs the callable in a worker thread
    (``asyncio.to_thread``), with no ScriptRunContext there, and answers with a URL or an error."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.runtime.backend_operation_handler import DeferredFileHandler

    request = BackMsg().backend_operation_request
    request.request_id, request.deferred_file.file_id = "r1", file_id
    return asyncio.run(DeferredFileHandler(lambda: manager).handle(request, "session"))


def test_the_click_through_streamlit_s_handler_gets_the_file_then_an_error(app_db, people, idle_minute,
                                                                         media_manager, monkeypatch):
    """The reviewer's repro: a click works, then, 75 s on (the app's clock moved), the same click fails."""
    at = _export_page(app_db)
    (manager,) = media_manager
    before = _exports(app_db)
    fresh = _click(manager, _file_id(at, "Judgments CSV"))
    assert fresh.deferred_file.url and not fresh.error_msg
    assert _exports(app_db) == before + 1
    monkeypatch.setattr(context, "time", SimpleNamespace(time=lambda: time.time() + 75))
    idle = _click(manager, _file_id(at, "Judgments CSV"))
    assert idle.error_msg and not idle.deferred_file.url  # the browser gets an error, not the export
    assert _exports(app_db) == before + 1
    at.run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["prefloop"] and "actor" not in at.session_state
    assert [i.value for i in at.info] == [LOGGED_OUT]
