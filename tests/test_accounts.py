"""Accounts: hashing, throttling, roles enforced server-side; settings parsing."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import select

from annotate import accounts, campaign
from annotate.accounts import Actor
from annotate.errors import AuthError, ConfigError, PermissionDenied, PrefloopError
from annotate.models import AuditEvent, Role, User, utcnow
from annotate.settings import load_settings
from tests.factories import PASSWORD, make_user


def test_login_ok_and_wrong_password(db, settings):
    with db.begin() as s:
        make_user(s, "ann")
    actor = accounts.login(db, "ann", PASSWORD)
    assert actor.username == "ann" and actor.role is Role.annotator
    with pytest.raises(AuthError, match="wrong username or password"):
        accounts.login(db, "ann", "nope-nope-nope")
    with pytest.raises(AuthError, match="wrong username or password"):
        accounts.login(db, "nobody", PASSWORD)


def test_wrong_passwords_are_throttled_across_sessions(db, settings):
    with db.begin() as s:
        make_user(s, "ann")
    for _ in range(3):
        with pytest.raises(AuthError, match="wrong"):
            accounts.login(db, "ann", "bad-password", max_failures=3, lockout_seconds=60)
    # even the right password is refused while throttled: the count lives in the database
    with pytest.raises(AuthError, match="too many failed attempts"):
        accounts.login(db, "ann", PASSWORD, max_failures=3)
    with db.begin() as s:
        later = utcnow() + timedelta(seconds=61)
        assert accounts.authenticate(s, "ann", PASSWORD, max_failures=3, now=later).username == "ann"


def test_deactivated_user_cannot_log_in(db, settings):
    with db.begin() as s:
        make_user(s, "ann")
        accounts.set_active(s, "ann", False, system=True)
    with pytest.raises(AuthError, match="deactivated"):
        accounts.login(db, "ann", PASSWORD)


def test_passwords_are_hashed_with_argon2(db, settings):
    with db.begin() as s:
        make_user(s, "ann")
        stored = s.scalar(select(User.password_hash).where(User.username == "ann"))
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


def test_annotator_cannot_call_admin_functions(db, settings):
    with db.begin() as s:
        admin = make_user(s, "boss", "admin")
        ann = make_user(s, "ann")
    calls = [
        lambda s: accounts.create_user(s, "eve", "password-123", "admin", actor=ann),
        lambda s: accounts.set_role(s, "ann", "admin", actor=ann),
        lambda s: accounts.set_active(s, "boss", False, actor=ann),
        lambda s: accounts.reset_password(s, "boss", "password-123", actor=ann),
        lambda s: accounts.list_users(s, actor=ann),
        lambda s: campaign.update_options(s, settings, actor=ann, overlap=2),
        # a forged Actor claiming the admin role is checked against the database
        lambda s: accounts.list_users(s, actor=Actor(id=ann.id, username="ann", role=Role.admin)),
        lambda s: accounts.list_users(s, actor=None),
    ]
    for call in calls:
        with pytest.raises(PermissionDenied), db.begin() as s:
            call(s)
    with db.begin() as s:
        assert [u.username for u in accounts.list_users(s, actor=admin)] == ["ann", "boss"]


def test_admin_user_management_is_audited(db, settings):
    with db.begin() as s:
        admin = make_user(s, "boss", "admin")
        accounts.create_user(s, "carol", "password-123", "annotator", actor=admin)
        accounts.set_role(s, "carol", "admin", actor=admin)
        accounts.reset_password(s, "carol", "password-456", actor=admin)
        with pytest.raises(PrefloopError, match="own admin role"):
            accounts.set_role(s, "boss", "annotator", actor=admin)
    with db.read() as s:
        actions = [e.action for e in s.scalars(select(AuditEvent).where(AuditEvent.actor_id == admin.id)
                                               .order_by(AuditEvent.id))]
    assert actions == ["user.create", "user.role", "user.reset_password"]
    assert accounts.login(db, "carol", "password-456").role is Role.admin


def test_campaign_options_saved_validated_and_audited(db, settings):
    with db.begin() as s:
        admin = make_user(s, "boss", "admin")
        campaign.update_options(s, settings, actor=admin, overlap=2, gold_rate=0.1, guidelines="# Be kind")
        with pytest.raises(PrefloopError, match="overlap"):
            campaign.update_options(s, settings, actor=admin, overlap=0)
        with pytest.raises(PrefloopError, match="unknown options"):
            campaign.update_options(s, settings, actor=admin, colour="red")
    with db.read() as s:
        opts = campaign.get_options(s, settings)
        assert (opts.overlap, opts.gold_rate, opts.guidelines) == (2, 0.1, "# Be kind")
        assert s.scalar(select(AuditEvent.action).where(AuditEvent.action == "settings.update")) is not None


def test_settings_from_environment():
    s = load_settings({"PREFLOOP_OVERLAP": "2", "PREFLOOP_DATA_DIR": "/tmp/x", "PREFLOOP_GOLD_RATE": "0.1"})
    assert s.overlap == 2 and s.gold_rate == 0.1 and s.sqlalchemy_url == "sqlite:////tmp/x/prefloop.db"
    with pytest.raises(ConfigError, match="PREFLOOP_OVERLAP"):
        load_settings({"PREFLOOP_OVERLAP": "two"})
    with pytest.raises(ConfigError):
        load_settings({"PREFLOOP_OVERLAP": "5", "PREFLOOP_MAX_OVERLAP": "3"})
    with pytest.raises(Exception):
        s.overlap = 3  # frozen


def test_unknown_strategy_in_the_environment_is_refused_with_the_valid_names(monkeypatch):
    assert load_settings({"PREFLOOP_STRATEGY": "margin"}).strategy == "margin"
    for name in ("bal", "random+cover", "random+power"):
        with pytest.raises(ConfigError, match=r"PREFLOOP_STRATEGY.*choose one of .*bald\+diverse"):
            load_settings({"PREFLOOP_STRATEGY": name})
    monkeypatch.setitem(sys.modules, "rm.acquisition", None)  # rm not importable: nothing to check against
    assert load_settings({"PREFLOOP_STRATEGY": "bal"}).strategy == "bal"


def test_importing_settings_does_not_import_rm():
    code = "import sys, annotate.settings; print(sorted(m for m in ('rm', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_strategy_is_not_saved_as_a_campaign_option(db, settings):
    with db.begin() as s:
        admin = make_user(s, "boss", "admin")
        for name in ("bald+shiny", "random+power"):
            with pytest.raises(PrefloopError, match=r"unknown acquisition strategy.*choose one of .*margin"):
                campaign.update_options(s, settings, actor=admin, strategy=name)
        with pytest.raises(PrefloopError, match="unknown acquisition strategy"):
            dataclasses.replace(campaign.defaults(settings), strategy="bal").validate()
        campaign.update_options(s, settings, actor=admin, strategy="bald+power")
    with db.read() as s:
        assert campaign.get_options(s, settings).strategy == "bald+power"
