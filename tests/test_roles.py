"""Every service function that takes an ``actor`` refuses anyone but an active admin, unless it is
on the allow-list of what annotators may call.

Functions are found by introspection, so a new admin function without a role check (or a new
annotator function nobody added to the allow-list) fails here.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from datetime import datetime, timezone

import pytest
from sqlalchemy import select

import annotate
from annotate import accounts
from annotate.accounts import Actor
from annotate.errors import PermissionDenied
from annotate.models import AuditEvent, Role, User
from tests.factories import make_comparisons, make_user

# Not service modules: the web layer, the CLI (runs as the operator) and demo data.
SKIP_MODULES = {"ui", "demo", "cli"}

# Callable by an annotator (each checks what it must for itself, e.g. ``require_active``).
ANNOTATOR_CALLABLE = {
    "accounts.audit",            # a helper that records an event for its caller; not an action itself
    "accounts.require_active",   # the check annotators' actions use
    "judgments.submit", "judgments.undo_last", "judgments.undo_last_action", "judgments.progress",
    "judgments.latest_judgment",  # their own latest judgment, read back on the annotation page, like progress
    "queue.next_comparison", "queue.remaining_for", "queue.skip",
    "queue.give_back",  # the pairs they hold, on Log out
}


def _actor_functions() -> dict[str, object]:
    found = {}
    for info in pkgutil.iter_modules(annotate.__path__):
        if info.name in SKIP_MODULES:
            continue
        module = importlib.import_module(f"annotate.{info.name}")
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ == module.__name__ and not name.startswith("_") \
                    and "actor" in inspect.signature(fn).parameters:
                found[f"{info.name}.{name}"] = fn
    return found


FUNCTIONS = _actor_functions()
ADMIN_ONLY = sorted(set(FUNCTIONS) - ANNOTATOR_CALLABLE)


def test_the_allow_list_names_real_functions():
    assert ANNOTATOR_CALLABLE <= set(FUNCTIONS), ANNOTATOR_CALLABLE - set(FUNCTIONS)
    # The sweep must see the admin functions of every service module the pages use.
    modules = {name.split(".")[0] for name in ADMIN_ONLY}
    assert {"accounts", "campaign", "dashboard", "export", "ingest", "quality", "retrain", "scoring"} <= modules


def _arguments(fn, *, session, settings, tmp_path, comparison_id: int, db=None) -> dict:
    """Plausible arguments for every required parameter (the call must get as far as the role check)."""
    known = {
        "session": session, "db": db, "settings": settings, "username": "victim", "password": "new-password-123",
        "role": "admin", "active": False, "comparison_id": comparison_id, "choice": "a", "format": "jsonl",
        "path": tmp_path / "out.jsonl", "action": "x",
        "source": b'{"prompt": "p", "chosen": "c", "rejected": "r"}\n',
        "file_hash": "0" * 64, "since": datetime(2000, 1, 1, tzinfo=timezone.utc), "kind": "preferences",
        "old": "victim", "new": "renamed-victim",
    }
    kwargs = {}
    for name, param in inspect.signature(fn).parameters.items():
        if name == "actor" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        if name == "filename":
            kwargs[name] = "x.jsonl"
        elif param.default is param.empty:
            assert name in known, f"{fn.__module__}.{fn.__name__}: teach _arguments a value for {name!r}"
            kwargs[name] = known[name]
    if "guidelines" not in kwargs and fn.__name__ == "update_options":
        kwargs["guidelines"] = "changed"
    return kwargs


@pytest.fixture
def people(sqlite_db):
    """An annotator, an admin later deactivated and an admin later demoted, with the Actor each kept."""
    with sqlite_db.begin() as s:
        make_user(s, "boss", "admin")  # an admin stays, so the last two can lose the role
        make_user(s, "victim")
        annotator = make_user(s, "ann")
        gone = make_user(s, "gone", "admin")
        demoted = make_user(s, "demoted", "admin")
        (comparison_id,) = make_comparisons(s, 1)
    with sqlite_db.begin() as s:
        accounts.set_active(s, "gone", False, system=True)
        accounts.set_role(s, "demoted", Role.annotator, system=True)
    return {"annotator": annotator, "deactivated admin": gone, "demoted admin": demoted,
            "logged out": None}, comparison_id


@pytest.mark.parametrize("who", ["annotator", "deactivated admin", "demoted admin", "logged out"])
@pytest.mark.parametrize("name", ADMIN_ONLY)
def test_admin_functions_refuse_everyone_else(name, who, people, sqlite_db, sqlite_settings, tmp_path):
    actors, comparison_id = people
    fn = FUNCTIONS[name]
    with sqlite_db.begin() as s:
        before = s.scalar(select(User.password_hash).where(User.username == "victim"))
        kwargs = _arguments(fn, session=s, settings=sqlite_settings, tmp_path=tmp_path,
                            comparison_id=comparison_id, db=sqlite_db)
        with pytest.raises(PermissionDenied):
            fn(actor=actors[who], **kwargs)
        s.rollback()
    with sqlite_db.read() as s:
        assert s.scalar(select(User.password_hash).where(User.username == "victim")) == before
        assert s.scalar(select(User.active).where(User.username == "victim"))
        assert not s.scalars(select(AuditEvent.action).where(AuditEvent.action.notlike("user.%"))).all()
    assert not (tmp_path / "out.jsonl").exists()


def test_an_active_admin_passes_the_check(people, sqlite_db):
    """The sweep above is not vacuous: the same kind of actor, still an admin, gets through."""
    with sqlite_db.begin() as s:
        boss = accounts.actor_of(s.scalar(select(User).where(User.username == "boss")))
        assert [u.username for u in accounts.list_users(s, actor=boss)][:1] == ["ann"]
        with pytest.raises(PermissionDenied):
            accounts.list_users(s, actor=Actor(id=boss.id, username="boss", role=Role.admin,
                                               credential="stale"))
