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
from annotate.errors import AuthError, ConfigError, NotFound, PermissionDenied, PrefloopError
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


def test_a_right_password_clears_the_count_of_wrong_ones(db, settings):
    """Throttling counts wrong passwords in a row: two typos before each good login never lock at three."""
    with db.begin() as s:
        make_user(s, "ann")
    for _ in range(3):
        for _ in range(2):
            with pytest.raises(AuthError, match="wrong username or password"):
                accounts.login(db, "ann", "bad-password", max_failures=3, lockout_seconds=60)
        assert accounts.login(db, "ann", PASSWORD, max_failures=3).username == "ann"
    with db.read() as s:
        assert s.scalar(select(User.failed_logins).where(User.username == "ann")) == 0


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


def test_a_repeated_role_or_activation_change_is_one_audited_change(db, settings):
    """The second press of a double click (or a CLI command run twice) asks for what is already so: it
    changes nothing and writes no second audit entry, on each backend."""
    with db.begin() as s:
        admin = make_user(s, "boss", "admin")
        accounts.create_user(s, "carol", "password-123", "annotator", actor=admin)
    for _ in range(2):
        with db.begin() as s:
            accounts.set_role(s, "carol", "admin", actor=admin)
        with db.begin() as s:
            accounts.set_active(s, "carol", False, actor=admin)
    with db.begin() as s:
        accounts.set_active(s, "carol", True, actor=admin)
        accounts.set_role(s, "carol", Role.admin, actor=admin)
    with db.read() as s:
        actions = [e.action for e in s.scalars(select(AuditEvent).where(AuditEvent.actor_id == admin.id)
                                               .order_by(AuditEvent.id))]
        carol = s.scalar(select(User).where(User.username == "carol"))
        assert carol.active and carol.role is Role.admin
    assert actions == ["user.create", "user.role", "user.deactivate", "user.activate"]


def test_a_username_that_differs_only_in_case_is_refused(db, settings):
    with db.begin() as s:
        admin = make_user(s, "boss", "admin")
        accounts.create_user(s, "Carol", "password-123", "annotator", actor=admin)
        for name in ("carol", " CAROL ", "Carol"):
            with pytest.raises(PrefloopError, match="user 'Carol' already exists"):
                accounts.create_user(s, name, "password-123", "annotator", actor=admin)
        accounts.create_user(s, "carol2", "password-123", "annotator", actor=admin)
    with db.read() as s:
        assert sorted(s.scalars(select(User.username))) == ["Carol", "boss", "carol2"]


def test_usernames_are_ascii(db, settings):
    """SQLite's lower() folds ASCII only: 'Émile' beside 'émile' got past the case check there, and a
    Cyrillic 'с' makes a 'саrol' that reads as 'carol'."""
    with db.begin() as s:
        for name in ("Émile", "саrol"):
            with pytest.raises(PrefloopError, match="ASCII letters"):
                accounts.create_user(s, name, "password-123", "annotator", system=True)


def test_rename_is_admin_only_validated_and_audited(db, settings):
    with db.begin() as s:
        admin = make_user(s, "boss", "admin")
        ann = make_user(s, "ann")
        make_user(s, "Carol")
    with pytest.raises(PermissionDenied), db.begin() as s:
        accounts.rename_user(s, "ann", "anna", actor=ann)
    with db.begin() as s:
        for new, message in (("carol", "user 'Carol' already exists; names must differ by more than case"),
                             ("BOSS", "user 'boss' already exists; names must differ by more than case"),
                             ("Émile", "ASCII letters"), ("x" * 65, "1-64"), ("", "1-64"), ("ann", "already called")):
            with pytest.raises(PrefloopError, match=message):
                accounts.rename_user(s, "ann", new, actor=admin)
        with pytest.raises(NotFound, match="no user named 'nobody'"):
            accounts.rename_user(s, "nobody", "anna", actor=admin)
        assert accounts.rename_user(s, "ann", " anna ", actor=admin).username == "anna"
        accounts.rename_user(s, "boss", "Boss", actor=admin)  # one's own name, only its case changed
    with db.read() as s:
        assert sorted(s.scalars(select(User.username))) == ["Boss", "Carol", "anna"]
        renames = s.scalars(select(AuditEvent).where(AuditEvent.action == "user.rename").order_by(AuditEvent.id))
        events = [(e.actor_id, e.detail) for e in renames]
    assert events == [(admin.id, {"username": "anna", "old_username": "ann"}),
                      (admin.id, {"username": "Boss", "old_username": "boss"})]
    with pytest.raises(AuthError, match="wrong username or password"):
        accounts.login(db, "ann", PASSWORD)
    assert accounts.login(db, "anna", PASSWORD).id == ann.id


def test_a_renamed_user_stays_logged_in_under_the_new_name(db, settings):
    """A login session keeps the account's id and password fingerprint, not its name: the next
    require_active still passes, and actor_of (what context.refresh_actor stores) carries the new name."""
    with db.begin() as s:
        make_user(s, "boss", "admin")
        make_user(s, "ann")
    boss = accounts.login(db, "boss", PASSWORD)
    ann = accounts.login(db, "ann", PASSWORD)
    with db.begin() as s:
        accounts.rename_user(s, "ann", "anna", actor=boss)
        accounts.rename_user(s, "boss", "chief", actor=boss)
    with db.read() as s:
        assert accounts.actor_of(accounts.require_active(s, ann)) == dataclasses.replace(ann, username="anna")
        assert accounts.require_admin(s, boss).username == "chief"  # the admin who renamed themselves keeps going


def _create_case_twins_at_once(dbs) -> tuple[list[str], list[str]]:
    """Each of ``dbs`` (one engine each, like two app processes) creates "carol"/"Carol" at the same instant."""
    import threading

    start = threading.Barrier(len(dbs))
    created, refused = [], []

    def create(db, name):
        start.wait()
        try:
            with db.begin() as s:
                accounts.create_user(s, name, "password-123", "annotator", system=True)
            created.append(name)
        except PrefloopError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=create, args=(db, name)) for db, name in zip(dbs, ("carol", "Carol"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return created, refused


def test_case_twins_created_at_once_make_one_account(db, settings):
    """The check before the insert read nothing the other creation had not committed yet. (On SQLite
    BEGIN IMMEDIATE already serializes the two; on PostgreSQL only the unique index does.)"""
    from annotate.db import Database, create_db_engine

    other = Database(create_db_engine(db.engine.url.render_as_string(hide_password=False)))
    try:
        created, refused = _create_case_twins_at_once([db, other])
    finally:
        other.dispose()
    assert len(created) == 1 and len(refused) == 1, (created, refused)
    assert refused[0].startswith(f"user {created[0]!r} already exists")
    with db.read() as s:
        assert list(s.scalars(select(User.username))) == created


def _create_twin(s, name):
    accounts.create_user(s, name, "password-123", "annotator", system=True)


def _rename_to_twin(s, name):
    accounts.rename_user(s, "bob", name, system=True)


@pytest.mark.postgres
@pytest.mark.parametrize("make_twin", [_create_twin, _rename_to_twin])
def test_a_case_twin_committed_during_the_check_is_refused_with_the_same_message(pg_db, make_twin):
    """The race made deterministic: "carol" is inserted but not committed when "Carol" is checked and
    inserted (or "bob" renamed to it). Before uq_users_username_lower both committed; with it, "Carol"'s
    write waits for "carol"'s transaction and then fails, which create_user and rename_user report like
    their own check, leaving the caller's unit of work usable."""
    import threading

    from annotate.db import Database, create_db_engine
    from tests.test_concurrency import _lock_waiters, _wait_until

    with pg_db.begin() as s:
        accounts.create_user(s, "bob", "password-123", "annotator", system=True)
    other = Database(create_db_engine(pg_db.engine.url.render_as_string(hide_password=False)))
    outcome = {}

    def create_carol_twin():
        try:
            with other.begin() as s:
                try:
                    make_twin(s, "Carol")
                except PrefloopError as exc:
                    outcome["error"] = str(exc)
                    make_twin(s, "carol-2")
        except Exception as exc:  # what the test reports, not hides
            outcome["raised"] = repr(exc)

    try:
        with pg_db.begin() as s:
            accounts.create_user(s, "carol", "password-123", "annotator", system=True)  # flushed, not committed
            twin = threading.Thread(target=create_carol_twin)
            twin.start()
            # wait (not a timing assertion) until the twin's insert waits on this transaction, or it is done
            _wait_until(lambda: _lock_waiters(pg_db.engine) > 0 or not twin.is_alive(), timeout=60)
        twin.join()
    finally:
        other.dispose()
    assert outcome == {"error": "user 'carol' already exists; names must differ by more than case"}
    with pg_db.read() as s:
        assert sorted(s.scalars(select(User.username))) == (["bob"] if make_twin is _create_twin else []) + [
            "carol", "carol-2"]


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
    with pytest.raises(ConfigError, match="PREFLOOP_MAX_OVERLAP must be at most 20"):
        load_settings({"PREFLOOP_MAX_OVERLAP": "21"})  # the campaign settings would then refuse every save
    assert load_settings({"PREFLOOP_SESSION_IDLE_MINUTES": "0"}).session_idle_minutes == 0
    with pytest.raises(ConfigError, match="PREFLOOP_SESSION_IDLE_MINUTES"):
        load_settings({"PREFLOOP_SESSION_IDLE_MINUTES": "-5"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.overlap = 3


REFUSED_SETTINGS = [
    # Each was accepted: nan/inf killed the watcher (timedelta of NaN) and the Overview page, a torch thread
    # count of 0 or a negative queue seed failed every retrain, the rest left imports or the queue unusable.
    ("RETRAIN_EVERY_MINUTES", "nan", "from 0.1 to 525,600"), ("RETRAIN_EVERY_MINUTES", "inf", "from 0.1"),
    ("RETRAIN_EVERY_MINUTES", "-5", "from 0.1"), ("RETRAIN_EVERY_MINUTES", "0", "from 0.1"),
    ("RETRAIN_EVERY_MINUTES", "1e9", "to 525,600"),
    ("TORCH_THREADS", "0", "from 1 to 1,024"), ("TORCH_THREADS", "-1", "from 1"),
    ("BATCH_SIZE", "0", "at least 1"), ("COLD_START", "-5", "at least 0"),
    ("RETRAIN_EVERY_LABELS", "-1", "at least 1"), ("RETRAIN_EVERY_LABELS", "0", "at least 1"),
    ("MAX_UPLOAD_MB", "0", "at least 1"), ("MAX_UPLOAD_MB", "-3", "at least 1"),
    ("MAX_TEXT_CHARS", "-1", "at least 1"), ("QUEUE_SEED", "-1", "at least 0"),
    ("LOGIN_MAX_FAILURES", "0", "at least 1"), ("LOGIN_LOCKOUT_SECONDS", "-60", "from 1 to 31,536,000"),
    ("LEASE_SECONDS", "99999999999", "from 10 to 31,536,000"), ("SESSION_IDLE_MINUTES", "-5", "from 0"),
    ("GOLD_RATE", "nan", "between 0 and 0.5"), ("PROBE_RATE", "inf", "between 0 and 0.5"),
    ("PROMOTE_TOLERANCE", "nan", "at least 0 and below 1"), ("PROMOTE_CONFIDENCE", "-inf", "at least 0.5"),
]


@pytest.mark.parametrize("name, value, allowed", REFUSED_SETTINGS)
def test_every_numeric_setting_out_of_range_is_refused_naming_the_variable_and_the_range(name, value, allowed):
    with pytest.raises(ConfigError) as refused:
        load_settings({f"PREFLOOP_{name}": value})
    message = str(refused.value)
    assert message.startswith(f"PREFLOOP_{name} must be") and allowed in message and "\n" not in message


def test_the_edges_of_each_numeric_settings_range_are_accepted():
    edges = {"RETRAIN_EVERY_MINUTES": "0.1", "TORCH_THREADS": "1", "BATCH_SIZE": "1", "COLD_START": "0",
             "RETRAIN_EVERY_LABELS": "1", "MAX_UPLOAD_MB": "1", "MAX_TEXT_CHARS": "1", "QUEUE_SEED": "0",
             "LOGIN_MAX_FAILURES": "1", "LOGIN_LOCKOUT_SECONDS": "31536000", "LEASE_SECONDS": "10"}
    s = load_settings({f"PREFLOOP_{k}": v for k, v in edges.items()})
    assert (s.retrain_every_minutes, s.torch_threads, s.cold_start, s.login_lockout_seconds) == (0.1, 1, 0, 31536000)
    assert load_settings({"PREFLOOP_RETRAIN_EVERY_MINUTES": "525600"}).retrain_every_minutes == 525600


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite+pysqlite://", "sqlite:///",
                                 "sqlite:///:memory:?cache=shared", "sqlite:///file::memory:?uri=true",
                                 "sqlite:///file:db?mode=memory&cache=shared&uri=true", "sqlite:///x.db?mode=memory"])
def test_production_refuses_every_in_memory_sqlite_database(url):
    """Only sqlite:///:memory: was refused (the check looked for the text "memory"); sqlite:// was accepted."""
    assert load_settings({"PREFLOOP_DATABASE_URL": url}).database_url == url  # development: allowed
    with pytest.raises(ConfigError, match="PREFLOOP_DATABASE_URL: an in-memory SQLite database cannot be used"):
        load_settings({"PREFLOOP_ENV": "production", "PREFLOOP_DATABASE_URL": url})


def test_production_accepts_a_database_that_is_not_in_memory(tmp_path):
    for url in (f"sqlite:///{tmp_path / 'memory.db'}", "postgresql+psycopg://u:p@h:5432/memory"):
        assert load_settings({"PREFLOOP_ENV": "production", "PREFLOOP_DATABASE_URL": url}).database_url == url
    assert load_settings({"PREFLOOP_ENV": "production", "PREFLOOP_DATA_DIR": str(tmp_path)}).env == "production"


def test_a_database_url_that_is_not_a_url_is_one_line_without_the_url():
    with pytest.raises(ConfigError, match=r"^PREFLOOP_DATABASE_URL is not a database URL") as refused:
        load_settings({"PREFLOOP_DATABASE_URL": "s3cret-not-a-url"})
    assert "s3cret" not in str(refused.value)


def test_an_operator_command_names_the_database_settings_that_are_not_the_defaults(tmp_path, monkeypatch):
    """What the no-admin hints print (make serve, the login page, the CLI); never the URL's password."""
    from annotate.settings import operator_command

    command = "prefloop users add NAME --role admin"
    monkeypatch.chdir(tmp_path)
    for environ in ({}, {"PREFLOOP_DATA_DIR": ".prefloop"}, {"PREFLOOP_DATA_DIR": str(tmp_path / ".prefloop")}):
        assert operator_command(load_settings(environ), command) == (command, "")
    moved = operator_command(load_settings({"PREFLOOP_DATA_DIR": "my data"}), command)
    assert moved == (f"PREFLOOP_DATA_DIR='{tmp_path / 'my data'}' {command}", "")  # absolute, quoted
    pg = load_settings({"PREFLOOP_DATABASE_URL": "postgresql+psycopg://team:s3cret@db:5432/prefloop"})
    line, note = operator_command(pg, command)
    assert line == f"PREFLOOP_DATABASE_URL='postgresql+psycopg://team:***@db:5432/prefloop' {command}"
    assert "s3cret" not in line + note and "***" in note
    in_query = load_settings({"PREFLOOP_DATABASE_URL": "postgresql+psycopg://team@db/p?password=s3cret&sslmode=on"})
    line, note = operator_command(in_query, command)
    assert "s3cret" not in line and "password" in note and "sslmode=on" in line


@pytest.mark.parametrize("changes, message", [
    ({"retrain_every_minutes": float("nan")}, "retrain every N minutes must be from 0.1 to 525,600"),
    ({"retrain_every_minutes": float("inf")}, "retrain every N minutes"),
    ({"retrain_every_minutes": 0.0}, "retrain every N minutes"),
    ({"retrain_every_labels": 0}, "retrain every N new labels must be at least 1"),
    ({"gold_rate": float("nan")}, "gold rate must be between 0 and 0.5"),
    ({"probe_rate": float("inf")}, "probe rate must be between 0 and 0.5"),
    ({"batch_size": 0}, "batch size"), ({"cold_start": -5}, "cold start"),
    ({"target_judgments": -1}, "target judgments must be 0"),
])
def test_campaign_options_refuse_what_the_settings_refuse(db, settings, changes, message):
    """A NaN retrain interval was saved (NaN <= 0 is false), and the watcher then died at its next poll."""
    with db.begin() as s:
        admin = make_user(s, "boss", "admin")
        with pytest.raises(PrefloopError, match=message):
            campaign.update_options(s, settings, actor=admin, **changes)
    with db.read() as s:
        assert campaign.get_options(s, settings) == campaign.defaults(settings)


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


def test_simultaneous_wrong_passwords_are_all_counted(db, settings):
    """The failure count is incremented by the database: parallel guesses cannot overwrite each other's counts."""
    import threading

    with db.begin() as s:
        make_user(s, "ann")
    n = 12
    start = threading.Barrier(n)
    errors = []

    def guess():
        start.wait()
        try:
            accounts.login(db, "ann", "bad-password", max_failures=n + 1)
        except AuthError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=guess) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == ["wrong username or password"] * n
    with db.read() as s:
        user = s.scalar(select(User).where(User.username == "ann"))
        assert (user.failed_logins, user.locked_until) == (n, None)
    # one more wrong guess reaches the limit and locks the account
    with pytest.raises(AuthError, match="wrong"):
        accounts.login(db, "ann", "bad-password", max_failures=n + 1)
    with pytest.raises(AuthError, match="too many failed attempts"):
        accounts.login(db, "ann", PASSWORD, max_failures=n + 1)


def test_right_password_checked_while_a_lock_was_set_is_refused(db, settings, monkeypatch):
    """Guesses racing the lock get no extra tries: the lock is re-checked when the login is recorded."""
    with db.begin() as s:
        make_user(s, "ann")
    real_check = accounts._check_password

    def check_then_others_lock(user, password, now):
        ok = real_check(user, password, now)  # the account was not locked when checked
        for _ in range(3):  # ...but parallel wrong guesses lock it before this login is recorded
            with db.begin() as s:
                accounts._record_failure(s, user.id, max_failures=3, lockout_seconds=60, now=now)
        return ok

    monkeypatch.setattr(accounts, "_check_password", check_then_others_lock)
    with pytest.raises(AuthError, match="too many failed attempts"):
        accounts.login(db, "ann", PASSWORD, max_failures=3)


def test_old_password_checked_while_it_was_reset_is_refused(db, settings, monkeypatch):
    """A reset committing between the (slow) hash check and the login's write refuses the old password."""
    with db.begin() as s:
        boss = make_user(s, "boss", "admin")
        make_user(s, "ann")
    real_check = accounts._check_password

    def check_then_admin_resets(user, password, now):
        ok = real_check(user, password, now)  # the old password was still ann's when checked
        with db.begin() as s:
            accounts.reset_password(s, "ann", "new-password-1", actor=boss)
        return ok

    monkeypatch.setattr(accounts, "_check_password", check_then_admin_resets)
    with pytest.raises(AuthError, match="wrong username or password"):
        accounts.login(db, "ann", PASSWORD)
    monkeypatch.setattr(accounts, "_check_password", real_check)
    with db.read() as s:
        assert s.scalar(select(User.failed_logins).where(User.username == "ann")) == 0  # not a wrong guess
    assert accounts.login(db, "ann", "new-password-1").username == "ann"
    with pytest.raises(AuthError, match="wrong username or password"):
        accounts.login(db, "ann", PASSWORD)


def test_login_holds_no_write_transaction_while_hashing(db, settings, monkeypatch):
    """On SQLite a write transaction locks the whole database: the slow password check must run outside one."""
    import threading

    from annotate.models import AuditEvent as Event

    with db.begin() as s:
        make_user(s, "ann")
    real_hasher = accounts._hasher
    write_seconds = []

    class HasherWhileSomeoneWrites:
        def __getattr__(self, name):
            return getattr(real_hasher, name)

        def verify(self, hash_, password):
            return verify_while_someone_writes(hash_, password)

    def verify_while_someone_writes(hash_, password):
        def write():
            import time as _time

            t0 = _time.perf_counter()
            with db.begin() as s:
                s.add(Event(actor_id=None, action="probe", detail={}))
            write_seconds.append(_time.perf_counter() - t0)

        other = threading.Thread(target=write)
        other.start()
        other.join(timeout=10)
        return real_hasher.verify(hash_, password)

    monkeypatch.setattr(accounts, "_hasher", HasherWhileSomeoneWrites())
    assert accounts.login(db, "ann", PASSWORD).username == "ann"
    with pytest.raises(AuthError, match="wrong username or password"):
        accounts.login(db, "ann", "bad-password")
    with pytest.raises(AuthError):
        accounts.login(db, "nobody", PASSWORD)
    # the concurrent writes finished while the hash was checked (not after a busy timeout)
    assert len(write_seconds) == 3 and max(write_seconds) < 5


def test_password_reset_ends_open_login_sessions(db, settings):
    with db.begin() as s:
        admin = make_user(s, "boss", "admin")
        make_user(s, "ann")
    ann = accounts.login(db, "ann", PASSWORD)
    boss = accounts.login(db, "boss", PASSWORD)
    with db.read() as s:
        assert accounts.require_active(s, ann).username == "ann"
    with db.begin() as s:
        accounts.reset_password(s, "ann", "new-password-1", actor=boss)
        accounts.reset_password(s, "boss", "new-password-2", actor=admin)
    with pytest.raises(PermissionDenied, match="password was changed"), db.read() as s:
        accounts.require_active(s, ann)
    with pytest.raises(PermissionDenied, match="password was changed"), db.read() as s:
        accounts.require_admin(s, boss)
    with db.read() as s:
        assert accounts.require_active(s, accounts.login(db, "ann", "new-password-1")).username == "ann"


def _leases(db, user_id):
    from annotate.models import Lease

    with db.read() as s:
        return sorted((lease.comparison_id, bool(lease.skipped))
                      for lease in s.scalars(select(Lease).where(Lease.annotator_id == user_id)))


def test_deactivating_an_annotator_releases_the_pairs_they_hold(db, settings):
    """Before: the lease stayed until it expired (up to 15 minutes), so nobody else was served the pair."""
    from annotate import queue
    from annotate.campaign import get_options
    from tests.factories import make_comparisons

    with db.begin() as s:
        admin = make_user(s, "boss", "admin")
        ann, other = make_user(s, "ann"), make_user(s, "bob")
        first, second = make_comparisons(s, 2)  # overlap 1: a pair someone holds is no one else's
        options = dataclasses.replace(get_options(s, settings), gold_rate=0.0, probe_rate=0.0)
    with db.begin() as s:
        skipped = queue.next_comparison(s, settings, options, actor=ann).comparison_id
        queue.skip(s, actor=ann, comparison_id=skipped)
    with db.begin() as s:
        held = queue.next_comparison(s, settings, options, actor=ann).comparison_id
    assert {skipped, held} == {first, second}
    with db.begin() as s:
        assert queue.next_comparison(s, settings, options, actor=other).comparison_id == skipped
        queue.skip(s, actor=other, comparison_id=skipped)
    with db.begin() as s:
        assert queue.next_comparison(s, settings, options, actor=other) is None  # ann holds the other pair

    with db.begin() as s:
        accounts.set_active(s, "ann", False, actor=admin)
    # the skip stays (it holds nothing from anyone, and keeps the pair from ann if she comes back)
    assert _leases(db, ann.id) == [(skipped, True)]
    with db.begin() as s:
        assert queue.next_comparison(s, settings, options, actor=other).comparison_id == held


def test_the_cli_path_releases_leases_too_and_a_role_change_or_reset_keeps_them(db, settings):
    """``system=True`` (the CLI) releases like the Users page. A role change or a password reset does not: admins
    annotate on the same page, and a reset user logs in again and is shown the same pair."""
    from annotate import queue
    from annotate.campaign import get_options
    from tests.factories import make_comparisons

    with db.begin() as s:
        make_user(s, "boss", "admin")
        ann = make_user(s, "ann")
        (cid,) = make_comparisons(s, 1)
        options = get_options(s, settings)
    with db.begin() as s:
        queue.next_comparison(s, settings, options, actor=ann)
    with db.begin() as s:
        accounts.set_role(s, "ann", "admin", system=True)
        accounts.reset_password(s, "ann", "password-456", system=True)
        accounts.set_role(s, "ann", "annotator", system=True)
    assert _leases(db, ann.id) == [(cid, False)]
    with db.begin() as s:
        accounts.set_active(s, "ann", False, system=True)
    assert _leases(db, ann.id) == []
    with db.read() as s:
        assert [e.action for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))][-1] == "user.deactivate"


@pytest.mark.parametrize("change", ["deactivate", "demote"])
def test_the_only_active_admin_cannot_be_deactivated_or_demoted(db, settings, change):
    """Before: 'prefloop users set-role boss --role annotator' (or 'deactivate boss') left no admin, and nobody
    could open the admin pages. An inactive admin does not count as another one."""
    def do(s, name):
        if change == "deactivate":
            accounts.set_active(s, name, False, system=True)
        else:
            accounts.set_role(s, name, "annotator", system=True)

    with db.begin() as s:
        make_user(s, "boss", "admin")
        make_user(s, "ann")
        make_user(s, "old", "admin")
        accounts.set_active(s, "old", False, system=True)  # another admin is active: allowed
    with db.begin() as s:
        with pytest.raises(PrefloopError) as refused:
            do(s, "boss")
        do(s, "ann")  # not an admin: nothing to keep (a no-op for set_role)
        do(s, "old")  # not active: nothing to keep
    assert str(refused.value).startswith("'boss' is the only active admin: ")
    assert "'prefloop users set-role NAME --role admin'" in str(refused.value)
    with db.read() as s:
        boss = s.scalar(select(User).where(User.username == "boss"))
        assert boss.active and boss.role is Role.admin
        assert not s.scalar(select(AuditEvent.id).where(AuditEvent.detail["username"].as_string() == "boss",
                                                        AuditEvent.action != "user.create"))
    with db.begin() as s:
        accounts.set_active(s, "ann", True, system=True)
        accounts.set_role(s, "ann", "admin", system=True)
        do(s, "boss")  # now someone else is an admin
    with db.begin() as s:
        with pytest.raises(PrefloopError, match="'ann' is the only active admin"):
            accounts.set_active(s, "ann", False, system=True)
        with pytest.raises(PrefloopError, match="'ann' is the only active admin"):
            accounts.set_role(s, "ann", "annotator", system=True)


def test_an_admin_may_still_demote_or_deactivate_another_but_never_themselves(db, settings):
    with db.begin() as s:
        boss = make_user(s, "boss", "admin")
        make_user(s, "chief", "admin")
    with db.begin() as s:
        with pytest.raises(PrefloopError, match="your own account"):
            accounts.set_active(s, "boss", False, actor=boss)
        with pytest.raises(PrefloopError, match="your own admin role"):
            accounts.set_role(s, "boss", "annotator", actor=boss)
        accounts.set_role(s, "chief", "annotator", actor=boss)
        accounts.set_role(s, "chief", "admin", actor=boss)
        accounts.set_active(s, "chief", False, actor=boss)


@pytest.mark.postgres
def test_two_admins_demoting_each_other_at_once_leave_one(pg_db):
    """The race made deterministic: boss's demotion of chief is written but not committed when chief (still an
    admin as far as committed data goes) demotes boss. Counting the admins waits for boss's transaction, then
    sees chief is none, and refuses: without the lock both demotions committed and no admin was left."""
    import threading

    from annotate.db import Database, create_db_engine
    from tests.test_concurrency import _lock_waiters, _wait_until

    with pg_db.begin() as s:
        boss, chief = make_user(s, "boss", "admin"), make_user(s, "chief", "admin")
    other = Database(create_db_engine(pg_db.engine.url.render_as_string(hide_password=False)))
    outcome = {}

    def demote_boss():
        try:
            with other.begin() as s:
                accounts.set_role(s, "boss", "annotator", actor=chief)
            outcome["demoted"] = True
        except PrefloopError as exc:
            outcome["error"] = str(exc)
        except Exception as exc:  # what the test reports, not hides
            outcome["raised"] = repr(exc)

    try:
        with pg_db.begin() as s:
            accounts.set_role(s, "chief", "annotator", actor=boss)
            s.flush()
            rival = threading.Thread(target=demote_boss)
            rival.start()
            # wait (not a timing assertion) until it waits on this transaction, or it is done
            _wait_until(lambda: _lock_waiters(pg_db.engine) > 0 or not rival.is_alive(), timeout=60)
        rival.join()
    finally:
        other.dispose()
    assert outcome.get("error", "").startswith("'boss' is the only active admin: "), outcome
    with pg_db.read() as s:
        assert dict(s.execute(select(User.username, User.role)).all()) == {"boss": Role.admin,
                                                                            "chief": Role.annotator}


def test_password_hashes_computed_at_once_are_bounded(monkeypatch):
    """Each argon2 hash takes 64 MiB; login forms submitted at once each took their own, without bound
    (security review). At most four run at once in a process; the rest wait their turn."""
    import threading
    import time

    from annotate import accounts

    running, most = 0, 0
    lock = threading.Lock()
    real = accounts._hasher.verify

    def slow_verify(h, p):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return real(h, p)

    class Slow:
        verify = staticmethod(slow_verify)

    monkeypatch.setattr(accounts, "_hasher", Slow())
    threads = [threading.Thread(target=accounts._check_password, args=(None, "guess", None)) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most == 4


def test_an_unknown_name_is_locked_like_an_account(db, settings):
    """Before, "too many failed attempts" was said only for real accounts, so it told which names exist."""
    with db.begin() as s:
        make_user(s, "ann")
    answers = {}
    for name in ("ann", "ghost"):
        for _ in range(3):
            with pytest.raises(AuthError, match="wrong username or password"):
                accounts.login(db, name, "bad-password", max_failures=3, lockout_seconds=60)
        with pytest.raises(AuthError) as locked:
            accounts.login(db, name, "bad-password", max_failures=3, lockout_seconds=60)
        answers[name] = str(locked.value)
    assert answers["ann"].startswith("too many failed attempts: try again in ")
    assert answers["ghost"].startswith("too many failed attempts: try again in ")
    # surrounding spaces are stripped, as for accounts; case is not folded, as the account lookup does not:
    # "ANN"'s failures locked "ann" too, which then answered "locked" only where no account exists
    with pytest.raises(AuthError, match="too many failed attempts"):
        accounts.login(db, " ghost ", "bad-password", max_failures=3, lockout_seconds=60)
    for _ in range(3):
        with pytest.raises(AuthError, match="wrong username or password"):
            accounts.login(db, "BOB", "bad-password", max_failures=3, lockout_seconds=60)
    with pytest.raises(AuthError, match="wrong username or password"):
        accounts.login(db, "bob", "bad-password", max_failures=3, lockout_seconds=60)
    # another unknown name is not locked by ghost's failures
    with pytest.raises(AuthError, match="wrong username or password"):
        accounts.login(db, "phantom", "bad-password", max_failures=3, lockout_seconds=60)


def test_unknown_name_locks_run_out_and_are_bounded():
    names = accounts._UnknownNames(capacity=3)
    now = utcnow()
    for _ in range(2):
        names.fail("ghost", max_failures=2, lockout_seconds=60, now=now)
    assert names.locked_until("ghost", now) == now + timedelta(seconds=60)
    later = now + timedelta(seconds=61)
    assert names.locked_until("ghost", later) is None
    names.fail("ghost", max_failures=2, lockout_seconds=60, now=later)  # counting starts again
    assert names.locked_until("ghost", later) is None
    for other in ("a", "b", "c"):  # past the capacity the oldest name is forgotten
        names.fail(other, max_failures=1, lockout_seconds=60, now=later)
    assert [names.locked_until(n, later) is not None for n in ("a", "b", "c")] == [True, True, True]
    assert len(names._entries) == 3 and names._key("ghost") not in names._entries
    # a guess checked before the lock was set, failing after it, leaves the lock as it is (it was lifted)
    names.fail("a", max_failures=1, lockout_seconds=60, now=later + timedelta(seconds=1))
    assert names.locked_until("a", later + timedelta(seconds=1)) == later + timedelta(seconds=60)
    # names not locked are forgotten before locked ones, so failures under other names unlock nothing
    names = accounts._UnknownNames(capacity=3)
    names.fail("locked", max_failures=1, lockout_seconds=60, now=now)
    for i in range(10):
        names.fail(f"other {i}", max_failures=5, lockout_seconds=60, now=now)
    assert names.locked_until("locked", now) is not None and len(names._entries) == 3


def test_a_locked_account_checks_a_hash_as_a_wrong_password_does(db, settings, monkeypatch):
    """Before, a locked account answered at once, with no hash checked: the time told that the name exists."""
    with db.begin() as s:
        make_user(s, "ann")
    for _ in range(3):
        with pytest.raises(AuthError):
            accounts.login(db, "ann", "bad-password", max_failures=3, lockout_seconds=60)
    verified = []
    real_verify = accounts._verify
    monkeypatch.setattr(accounts, "_verify", lambda h, p: verified.append(h) or real_verify(h, p))
    with pytest.raises(AuthError, match="too many failed attempts"):
        accounts.login(db, "ann", "bad-password", max_failures=3, lockout_seconds=60)
    assert verified == [accounts._DUMMY_HASH]
