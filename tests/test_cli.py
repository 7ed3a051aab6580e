"""The ``prefloop`` command line, run as a user would (subprocesses on a temp SQLite file)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from annotate.db import Database, create_db_engine
from annotate.models import Comparison, ImportBatch, Judgment, Prompt, Response, User
from sqlalchemy import func, select


def run(env, *args, stdin: str | None = None):
    return subprocess.run([sys.executable, "-m", "annotate.cli", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ)
    e.update(PREFLOOP_DATA_DIR=str(tmp_path / "data"), PREFLOOP_DATABASE_URL=f"sqlite:///{tmp_path / 'cli.db'}")
    assert run(e, "db", "upgrade").returncode == 0
    return e


def counts(env):
    db = Database(create_db_engine(env["PREFLOOP_DATABASE_URL"]))
    with db.read() as s:
        out = {m.__tablename__: s.scalar(select(func.count()).select_from(m))
               for m in (Prompt, Response, Comparison, Judgment, User)}
    db.dispose()
    return out


def test_hh_import_then_reimport_adds_nothing(env, hh_path):
    first = run(env, "import", str(hh_path))
    assert first.returncode == 0, first.stderr
    assert "added 2,312 comparisons" in first.stdout
    # The file's winners complete every pair at overlap 1: the import says annotators will not see them.
    assert "2,312 new comparisons already have the 1 judgment they need" in first.stdout
    assert counts(env)["comparisons"] == 2312
    second = run(env, "import", str(hh_path))
    assert second.returncode == 0
    assert "added 0 comparisons" in second.stdout and "annotators will not see" not in second.stdout
    third = run(env, "import", str(hh_path), "--known-winner", "ignore", "--tag", "again")
    assert third.returncode == 0 and "annotators will not see" not in third.stdout
    assert counts(env)["comparisons"] == 2312


def test_one_malformed_row_imports_nothing_and_names_it(env, tmp_path):
    rows = [json.dumps({"prompt": f"p{i}", "response_a": "x", "response_b": f"y{i}"}) for i in range(5)]
    rows.insert(3, '{"prompt": "broken", "response_a": "x"')
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(rows) + "\n")
    result = run(env, "import", str(path))
    assert result.returncode == 2
    assert "line 4" in result.stderr and "nothing was imported" in result.stderr
    assert "Traceback" not in result.stderr
    assert counts(env)["comparisons"] == 0 and counts(env)["prompts"] == 0


def test_a_file_with_no_readable_row_lists_its_row_problems(env, tmp_path):
    """When no row can be read, the format cannot be detected either: the rows' own problems are printed too."""
    path = tmp_path / "bad.jsonl"
    path.write_text("[" * 100_000 + "\n" + '{"x": NaN}\n')
    result = run(env, "import", str(path))
    assert result.returncode == 2
    assert "could not detect the file's format" in result.stderr
    assert "line 1: invalid JSON (nested too deeply)" in result.stderr
    assert "line 2: invalid JSON (NaN is not a JSON number" in result.stderr
    assert "Traceback" not in result.stderr and "nothing was imported" in result.stderr


def test_users_add_with_stdin_password_and_deactivate(env):
    assert run(env, "users", "add", "alice", "--role", "admin", "--password-stdin", stdin="s3cret-password\n").returncode == 0
    dup = run(env, "users", "add", "alice", "--password-stdin", stdin="another-password\n")
    assert dup.returncode == 2 and "already exists" in dup.stderr
    short = run(env, "users", "add", "bob", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least" in short.stderr
    assert run(env, "users", "add", "carol", "--role", "admin", "--password-stdin",
               stdin="another-password\n").returncode == 0  # alice is not the only admin
    assert run(env, "users", "deactivate", "alice").stdout == "deactivated 'alice'\n"
    listing = run(env, "users", "list").stdout
    assert "alice\tadmin\tinactive" in listing
    db = Database(create_db_engine(env["PREFLOOP_DATABASE_URL"]))
    with db.read() as s:
        stored = s.scalar(select(User.password_hash).where(User.username == "alice"))
    db.dispose()
    assert stored.startswith("$argon2") and "s3cret" not in stored


def test_demo_prints_credentials_once(env):
    first = run(env, "demo")
    assert first.returncode == 0 and first.stdout.count("password:") == 2
    second = run(env, "demo")
    assert "password:" not in second.stdout and "already exist" in second.stdout
    assert counts(env)["comparisons"] == 54
    # and no second import batch: each make run added an empty one to the Audit log (README-follower run)
    assert "demo data: already imported (batch 1); nothing added" in second.stdout
    db = Database(create_db_engine(env["PREFLOOP_DATABASE_URL"]))
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(ImportBatch)) == 1
    db.dispose()


def test_the_demo_campaign_turns_the_loop_while_one_annotator_works(env):
    """``make run``'s demo shows the loop: a new demo campaign retrains after 16 labels and orders the queue
    by the strategy from then on (the defaults, 50 and 64, gave one model at best on 54 pairs and never an
    ordered queue). Run again, the demo leaves an admin's own choice alone."""
    from datetime import timedelta

    from annotate import campaign, retrain
    from annotate.accounts import Actor
    from annotate.models import AuditEvent, Role, utcnow
    from annotate.settings import load_settings

    assert run(env, "demo").returncode == 0
    settings = load_settings(env)
    db = Database(create_db_engine(env["PREFLOOP_DATABASE_URL"]))
    try:
        with db.read() as s:
            options = campaign.get_options(s, settings)
            assert (options.retrain_every_labels, options.cold_start, options.batch_size) == (16, 16, 8)
            [event] = s.scalars(select(AuditEvent).where(AuditEvent.action == "settings.update")).all()
            assert event.actor_id is None and set(event.detail["changes"]) == {
                "retrain_every_labels", "cold_start", "batch_size"}
        with db.begin() as s:
            annotator = s.scalar(select(User.id).where(User.username == "annotator"))
            for cid in s.scalars(select(Comparison.id).limit(15)):
                s.add(Judgment(comparison_id=cid, annotator_id=annotator, choice="a", a_on_left=True,
                               time_spent_ms=4000))
        since = utcnow() - timedelta(minutes=1)
        with db.read() as s:
            assert not retrain.check_due(s, settings, since=since).due
        with db.begin() as s:
            cid = s.scalar(select(Comparison.id).order_by(Comparison.id.desc()).limit(1))
            s.add(Judgment(comparison_id=cid, annotator_id=annotator, choice="b", a_on_left=True, time_spent_ms=4000))
        with db.read() as s:
            check = retrain.check_due(s, settings, since=since)
        assert check.due and check.new_judgments == 16, check.reason

        with db.begin() as s:
            admin = s.scalar(select(User).where(User.username == "admin"))
            campaign.update_options(s, settings, actor=Actor(admin.id, admin.username, Role.admin),
                                    retrain_every_labels=40)
        assert run(env, "demo").returncode == 0
        with db.read() as s:
            assert campaign.get_options(s, settings).retrain_every_labels == 40
    finally:
        db.dispose()


def test_export_cli_writes_trl_jsonl(env, tmp_path, hh_path):
    assert run(env, "users", "add", "root", "--role", "admin", "--password-stdin", stdin="root-password\n").returncode == 0
    assert run(env, "import", str(hh_path)).returncode == 0
    out = tmp_path / "prefs.jsonl"
    result = run(env, "export", "--format", "trl-jsonl", "--out", str(out))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 2312
    assert {"prompt", "chosen", "rejected"} <= set(lines[0])
    # Each row's chosen is its source row's chosen (the file's winner), not its rejected: comparisons are
    # numbered in the file's order, and HH transcripts end with the response the row compares.
    import gzip

    with gzip.open(hh_path, "rt", encoding="utf-8") as f:
        source = [json.loads(line) for line in f]
    assert len(source) == len(lines)
    for src, row in zip(source, sorted(lines, key=lambda r: r["comparison_id"])):
        (chosen,), (rejected,) = row["chosen"], row["rejected"]
        assert chosen["content"] != rejected["content"], row["comparison_id"]
        assert src["chosen"].rstrip().endswith(chosen["content"]), (row["comparison_id"], chosen, src["chosen"][-300:])
        assert src["rejected"].rstrip().endswith(rejected["content"]), (row["comparison_id"], rejected,
                                                                         src["rejected"][-300:])
        assert row["prompt"][0]["content"] in src["chosen"], row["comparison_id"]
    raw = tmp_path / "judgments.parquet"
    result = run(env, "export", "--format", "judgments-parquet", "--out", str(raw))
    assert result.returncode == 0, result.stderr
    import pyarrow.parquet as pq

    assert pq.read_metadata(raw).num_rows == 2312  # the imported judgments
    # As on the Export page, imported judgments can be left out: here every vote is imported.
    result = run(env, "export", "--format", "trl-jsonl", "--out", str(out), "--no-imported")
    assert result.returncode == 0, result.stderr
    assert out.read_text() == ""


def test_retrain_once_writes_no_progress_bars_to_a_log(env, tmp_path):
    """The watcher's and Retrain now's logs are files: tqdm's "Loading weights" bars do not belong there."""
    rows = [{"prompt": f"Question {i}: how do I keep basil alive?", "chosen": f"Water it every {i % 5 + 1} days.",
             "rejected": "Basil cannot be grown indoors." if i % 2 else "No idea."} for i in range(40)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    assert run(env, "import", str(path)).returncode == 0
    result = run(env, "retrain", "--once")
    # Status 0 is also a skipped run, which loads no encoder: the check below would then prove nothing.
    assert result.returncode == 0 and result.stdout.startswith("retrain succeeded"), (result.stdout, result.stderr)
    assert "Loading weights" not in result.stderr
    # prefloop score loads the encoder too: a script capturing stderr gets no bars either.
    (tmp_path / "in.jsonl").write_text(json.dumps({"prompt": "Question 1", "response": "Water it."}) + "\n")
    scores = tmp_path / "scores.jsonl"
    scored = run(env, "score", "--file", str(tmp_path / "in.jsonl"), "--out", str(scores))
    assert (scored.returncode, scored.stdout, scored.stderr) == (0, "", ""), scored
    (row,) = [json.loads(line) for line in scores.read_text().splitlines()]
    assert {"reward", "uncertainty"} <= set(row), row
    # An --out the system refuses is one line (it was a FileNotFoundError traceback). As root, /proc passes
    # the check made before scoring, so the encoder loads first; as another user it is refused before that.
    scored = run(env, "score", "--file", str(tmp_path / "in.jsonl"), "--out", "/proc/scores.jsonl")
    assert scored.returncode == 2 and "cannot write '/proc/scores.jsonl'" in scored.stderr, scored.stderr
    assert "Loading weights" not in scored.stderr and "Traceback" not in scored.stderr


# --- errors an operator can cause: one line on stderr, a non-zero status, no traceback -------------------

def _stderr_lines(result) -> list[str]:
    """``result``'s stderr lines, less prefloop's warnings about unknown ``PREFLOOP_*`` variables (the
    environment running the tests may hold one)."""
    return [line for line in result.stderr.splitlines() if not line.startswith("prefloop: warning: ")]


def one_line_error(result, *needles, status=2):
    """``result`` failed with ``status`` and one line, ``error: ...``, containing every needle (no traceback):
    an error prefloop raises itself."""
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = _stderr_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], result.stderr
    return result.stderr


def usage_error(result, *needles):
    """``result`` is argparse's refusal: status 2, the usage (its first line ``usage: prefloop``, any more
    lines indented), then one ``prefloop ...: error: ...`` line containing every needle."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    *usage, error = _stderr_lines(result)
    assert usage and usage[0].startswith("usage: prefloop"), result.stderr
    assert all(line.startswith(" ") for line in usage[1:]), result.stderr
    assert re.match(r"prefloop( [a-z-]+)*: error: ", error), result.stderr
    for needle in needles:
        assert needle in error, result.stderr
    return result.stderr


@pytest.fixture
def bare_env(tmp_path):
    """An environment whose SQLite database was never migrated."""
    e = dict(os.environ)
    e["PREFLOOP_DATA_DIR"] = str(tmp_path / "data")
    e["PREFLOOP_DATABASE_URL"] = f"sqlite:///{tmp_path / 'bare.db'}"
    return e


@pytest.fixture
def bare_pg_env(tmp_path):
    """An environment whose PostgreSQL database exists but was never migrated."""
    import uuid

    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from tests.conftest import PG_ADMIN_URL, _pg_admin_engine

    name = f"prefloop_cli_bare_{uuid.uuid4().hex[:8]}"
    admin = _pg_admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    e = dict(os.environ)
    e["PREFLOOP_DATA_DIR"] = str(tmp_path / "data")
    e["PREFLOOP_DATABASE_URL"] = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield e
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


UNMIGRATED_COMMANDS = [("users", "list"), ("users", "add", "root", "--password-stdin"), ("users", "rename", "a", "b"),
                       ("demo",),
                       ("export", "--format", "trl-jsonl", "--out", "OUT"), ("retrain", "--once"),
                       ("score", "--prompt", "p", "--response", "r")]


def _commands_on_an_unmigrated_database_say_to_upgrade(e, tmp_path, hh_path, why):
    for args in [*UNMIGRATED_COMMANDS, ("import", str(hh_path))]:
        args = [str(tmp_path / "out.jsonl") if a == "OUT" else a for a in args]
        one_line_error(run(e, *args, stdin="long-enough-password\n"), why, "run 'prefloop db upgrade'")
    assert run(e, "db", "upgrade").returncode == 0
    assert run(e, "users", "list").returncode == 0


def test_commands_on_an_unmigrated_sqlite_database_say_to_upgrade(bare_env, tmp_path, hh_path):
    """Before, every command on a fresh data directory died with an SQL traceback (no such table: users)."""
    _commands_on_an_unmigrated_database_say_to_upgrade(bare_env, tmp_path, hh_path,
                                                       f"no database at {tmp_path / 'bare.db'}")
    bare_env["PREFLOOP_DATABASE_URL"] = f"sqlite:///{tmp_path / 'empty.db'}"
    (tmp_path / "empty.db").touch()
    _commands_on_an_unmigrated_database_say_to_upgrade(bare_env, tmp_path, hh_path, "no prefloop tables yet")


@pytest.mark.postgres
def test_commands_on_an_unmigrated_postgres_database_say_to_upgrade(bare_pg_env, tmp_path, hh_path):
    _commands_on_an_unmigrated_database_say_to_upgrade(bare_pg_env, tmp_path, hh_path, "no prefloop tables yet")


def test_a_command_run_outside_the_project_folder_makes_no_database_there(tmp_path):
    """PREFLOOP_DATA_DIR defaults to .prefloop, relative to the folder prefloop runs in. Before, a command run
    from another folder created an empty .prefloop/prefloop.db there and said to run 'prefloop db upgrade',
    which made a second, empty database instead of finding the first."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    e = {k: v for k, v in os.environ.items() if k not in ("PREFLOOP_DATA_DIR", "PREFLOOP_DATABASE_URL")}
    result = subprocess.run([sys.executable, "-m", "annotate.cli", "users", "list"], env=e, cwd=elsewhere,
                            capture_output=True, text=True, timeout=300)
    one_line_error(result, f"no database at {elsewhere / '.prefloop' / 'prefloop.db'}",
                   "PREFLOOP_DATA_DIR is relative to the folder prefloop runs in", "run 'prefloop db upgrade'")
    assert list(elsewhere.iterdir()) == []


def test_a_database_behind_this_version_says_to_upgrade(env):
    assert run(env, "db", "downgrade", "0003").returncode == 0
    one_line_error(run(env, "users", "list"), "is at revision 0003", "run 'prefloop db upgrade'")


def test_users_rename_works_on_a_database_behind_this_version(env):
    """The remedy for migration 0005's refusal runs where the other users commands say to upgrade first."""
    assert run(env, "users", "add", "carol", "--password-stdin", stdin="carol-password\n").returncode == 0
    assert run(env, "db", "downgrade", "0004").returncode == 0
    one_line_error(run(env, "users", "list"), "is at revision 0004", "run 'prefloop db upgrade'")
    renamed = run(env, "users", "rename", "carol", "Carol")
    assert (renamed.returncode, renamed.stdout, renamed.stderr) == (0, "renamed 'carol' to 'Carol'\n", "")
    one_line_error(run(env, "users", "rename", "nobody", "x"), "no user named 'nobody'")
    assert run(env, "db", "upgrade").returncode == 0
    assert run(env, "users", "list").stdout == "Carol\tannotator\tactive\n"


def test_an_unreachable_database_is_one_line_without_its_password(env):
    e = {**env, "PREFLOOP_DATABASE_URL": "postgresql+psycopg://postgres:hunter2-secret@127.0.0.1:1/nothing"}
    for args in (("users", "list"), ("db", "upgrade")):
        err = one_line_error(run(e, *args), "cannot open the database", "127.0.0.1:1/nothing",
                             "check PREFLOOP_DATABASE_URL")
        assert "hunter2" not in err


def test_a_sqlite_file_that_cannot_be_created_is_one_line(env):
    e = {**env, "PREFLOOP_DATABASE_URL": "sqlite:////proc/prefloop-cli-test/x.db"}
    one_line_error(run(e, "users", "list"), "no database at /proc/prefloop-cli-test/x.db", "db upgrade")
    one_line_error(run(e, "db", "upgrade"), "cannot create the folder /proc/prefloop-cli-test",
                   "check PREFLOOP_DATABASE_URL", status=1)
    # Chosen by the data directory, the message names that setting (it named PREFLOOP_DATABASE_URL, unset).
    e = {k: v for k, v in env.items() if k != "PREFLOOP_DATABASE_URL"}
    e["PREFLOOP_DATA_DIR"] = "/proc/prefloop-cli-test"
    one_line_error(run(e, "db", "upgrade"), "cannot create the folder /proc/prefloop-cli-test",
                   "check PREFLOOP_DATA_DIR", status=1)


def test_a_sqlite_database_the_system_will_not_open_is_status_1_naming_the_data_dir(env, tmp_path):
    """The README: a file or folder the system refuses (the database's, say) exits with status 1. A SQLite
    file that could not be opened (here a folder where the file should be; a read-only folder is the same
    error) exited with 2 and said to check PREFLOOP_DATABASE_URL, which was not set."""
    e = {k: v for k, v in env.items() if k != "PREFLOOP_DATABASE_URL"}
    e["PREFLOOP_DATA_DIR"] = str(tmp_path / "data")
    (tmp_path / "data" / "prefloop.db").mkdir(parents=True)
    for args in (("users", "list"), ("db", "upgrade")):
        one_line_error(run(e, *args), f"cannot open the SQLite database {tmp_path / 'data' / 'prefloop.db'}",
                       "unable to open database file", "check PREFLOOP_DATA_DIR", status=1)


def test_db_upgrade_to_an_unknown_revision_is_one_line(env):
    one_line_error(run(env, "db", "upgrade", "nosuchrev"), "nosuchrev")


def test_users_actions_need_a_name_and_set_role_needs_a_role(env):
    """Before: 'users add' without a name was an AttributeError traceback, and 'users set-role NAME'
    without --role silently made NAME an annotator (the default of add's --role)."""
    assert run(env, "users", "add", "root", "--role", "admin", "--password-stdin",
               stdin="root-password\n").returncode == 0
    for action in ("add", "deactivate", "activate", "reset-password", "set-role", "rename"):
        usage_error(run(env, "users", action, stdin="another-password\n"), "required")
    usage_error(run(env, "users", "set-role", "root"), "--role")
    usage_error(run(env, "users", "deactivate", "root", "--role", "admin"), "unrecognized arguments")
    usage_error(run(env, "users", "list", "root"), "unrecognized arguments")
    assert run(env, "users", "list").stdout == "root\tadmin\tactive\n"
    assert run(env, "users", "add", "chief", "--role", "admin", "--password-stdin",
               stdin="another-password\n").returncode == 0  # root is not the only admin
    assert run(env, "users", "set-role", "root", "--role", "annotator").returncode == 0
    assert run(env, "users", "list").stdout == "chief\tadmin\tactive\nroot\tannotator\tactive\n"


def test_users_refuses_to_leave_no_active_admin_and_says_how_to_get_past(env):
    """Before: 'users set-role boss --role annotator' or 'users deactivate boss', boss the only active admin,
    exited 0 and left nobody who could open the admin pages."""
    assert run(env, "users", "add", "boss", "--role", "admin", "--password-stdin",
               stdin="boss-password\n").returncode == 0
    for args in (("set-role", "boss", "--role", "annotator"), ("deactivate", "boss")):
        refused = run(env, "users", *args)
        assert refused.returncode == 2 and refused.stdout == "", refused
        assert refused.stderr.startswith("error: 'boss' is the only active admin: ") and refused.stderr.count("\n") == 1
        assert "'prefloop users add NAME --role admin'" in refused.stderr and "Traceback" not in refused.stderr
    assert run(env, "users", "list").stdout == "boss\tadmin\tactive\n"
    # what the message offers works without an admin to act as; then boss may go
    assert run(env, "users", "add", "Carol", "--role", "annotator", "--password-stdin",
               stdin="carol-password\n").returncode == 0
    twin = run(env, "users", "add", "CAROL", "--password-stdin", stdin="carol-password\n")
    assert twin.returncode == 2 and twin.stderr == (
        "error: user 'Carol' already exists; names must differ by more than case\n")
    assert run(env, "users", "set-role", "Carol", "--role", "admin").returncode == 0
    assert run(env, "users", "deactivate", "boss").returncode == 0
    assert run(env, "users", "list").stdout == "Carol\tadmin\tactive\nboss\tadmin\tinactive\n"


def test_a_change_to_what_an_account_already_is_says_so_and_records_nothing(env):
    """'users deactivate alice' on an inactive account printed "deactivated 'alice'" again."""
    from annotate.models import AuditEvent

    for name, role in (("alice", "admin"), ("carol", "admin")):
        assert run(env, "users", "add", name, "--role", role, "--password-stdin",
                   stdin="s3cret-password\n").returncode == 0
    assert run(env, "users", "deactivate", "alice").stdout == "deactivated 'alice'\n"
    again = run(env, "users", "deactivate", "alice")
    assert again.returncode == 0 and again.stdout == "'alice' was already inactive\n", again
    assert run(env, "users", "activate", "carol").stdout == "'carol' was already active\n"
    assert run(env, "users", "set-role", "carol", "--role", "admin").stdout == "'carol' was already admin\n"
    assert run(env, "users", "activate", "alice").stdout == "activated 'alice'\n"
    one_line_error(run(env, "users", "deactivate", "nobody"), "no user named 'nobody'")
    db = Database(create_db_engine(env["PREFLOOP_DATABASE_URL"]))
    with db.read() as s:
        actions = s.scalars(select(AuditEvent.action).where(AuditEvent.action.like("user.%"))
                            .order_by(AuditEvent.id)).all()
    db.dispose()
    assert actions == ["user.create", "user.create", "user.deactivate", "user.activate"]


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_db_upgrade_of_an_in_memory_database_says_it_kept_nothing(tmp_path, url):
    """It printed "database at revision base" (it read the revision back from a new, empty database),
    which reads as if the upgrade had failed; a file database prints the revision it reached."""
    e = {**os.environ, "PREFLOOP_DATA_DIR": str(tmp_path / "data"), "PREFLOOP_DATABASE_URL": url}
    result = run(e, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("upgraded an in-memory SQLite database, which is gone now that the command has "
                             "ended: nothing was kept; point PREFLOOP_DATABASE_URL at a file or a server to keep one\n")
    e["PREFLOOP_DATABASE_URL"] = f"sqlite:///{tmp_path / 'file.db'}"
    assert re.fullmatch(r"database at revision \d{4}\n", run(e, "db", "upgrade").stdout)


def test_production_refuses_sqlite_in_memory_before_migrating(tmp_path):
    """'PREFLOOP_ENV=production PREFLOOP_DATABASE_URL=sqlite:// prefloop db upgrade' was accepted."""
    e = {**os.environ, "PREFLOOP_ENV": "production", "PREFLOOP_DATABASE_URL": "sqlite://"}
    one_line_error(run(e, "db", "upgrade"), "PREFLOOP_DATABASE_URL: an in-memory SQLite database cannot be used")


@pytest.mark.parametrize("name, value", [("RETRAIN_EVERY_MINUTES", "nan"), ("TORCH_THREADS", "0")])
def test_the_watcher_refuses_a_setting_out_of_range_in_one_line(env, name, value):
    """With nan the watcher died of "ValueError: cannot convert float NaN to integer" at its first poll; with
    0 threads every run failed ("set_num_threads expects a positive integer")."""
    result = subprocess.run([sys.executable, "-m", "annotate.cli", "retrain", "--watch"],
                            env={**env, f"PREFLOOP_{name}": value}, capture_output=True, text=True, timeout=60)
    one_line_error(result, f"PREFLOOP_{name} must be from ")


def test_the_no_admin_hint_names_the_database_the_command_used(env, tmp_path):
    """Copied without PREFLOOP_DATA_DIR / PREFLOOP_DATABASE_URL, the hint's command made the admin in the
    default .prefloop/ database."""
    out = tmp_path / "x.jsonl"
    one_line_error(run(env, "export", "--format", "trl-jsonl", "--out", str(out)),
                   f"no active admin exists: create one with 'PREFLOOP_DATA_DIR={tmp_path / 'data'} "
                   f"PREFLOOP_DATABASE_URL=sqlite:///{tmp_path / 'cli.db'} prefloop users add NAME --role admin'")


def test_what_commands_write_into_the_project_folder_by_default_is_ignored_by_git():
    """'prefloop simulate' writes ./simulation by default, which 'git status' then listed."""
    from pathlib import Path

    from annotate.cli import build_parser
    from annotate.settings import Settings

    ignored = (Path(__file__).resolve().parent.parent / ".gitignore").read_text().splitlines()
    simulate = build_parser().parse_args(["simulate", "--data", "x.jsonl"])
    for folder in (simulate.out, str(Settings.data_dir)):
        assert f"{folder}/" in ignored or f"/{folder}/" in ignored, folder


@pytest.fixture
def admin_env(env, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"p{i}", "response_a": "x", "response_b": f"y{i}",
                                         "winner": "a"}) + "\n" for i in range(3)))
    assert run(env, "users", "add", "root", "--role", "admin", "--password-stdin",
               stdin="root-password\n").returncode == 0
    assert run(env, "import", str(pairs)).returncode == 0
    return env


def test_export_with_a_date_that_is_not_iso_is_a_usage_error(admin_env, tmp_path):
    """Before: a ValueError traceback from datetime.fromisoformat."""
    for flag in ("--since", "--until"):
        usage_error(run(admin_env, "export", "--format", "trl-jsonl", "--out", str(tmp_path / "a.jsonl"),
                        flag, "yesterday"), "not an ISO date")
    ok = run(admin_env, "export", "--format", "trl-jsonl", "--out", str(tmp_path / "a.jsonl"),
             "--since", "2020-01-01", "--until", "2999-01-01T00:00:00+00:00")
    assert ok.returncode == 0 and ok.stdout == f"wrote 3 rows to {tmp_path / 'a.jsonl'}\n"


def test_export_min_votes_and_an_empty_export_warns(admin_env, tmp_path):
    """Each imported pair rests on one vote: --min-votes 2 leaves them all out, and says the file is empty."""
    out = tmp_path / "a.jsonl"
    one = run(admin_env, "export", "--format", "trl-jsonl", "--out", str(out), "--min-votes", "1")
    assert one.returncode == 0 and len(out.read_text().splitlines()) == 3 and one.stderr == ""
    two = run(admin_env, "export", "--format", "trl-jsonl", "--out", str(out), "--min-votes", "2")
    assert two.returncode == 0 and out.read_text() == ""
    assert two.stdout == f"wrote 0 rows to {out}\n" and "no rows matched" in two.stderr
    for bad in ("0", "two"):
        usage_error(run(admin_env, "export", "--format", "trl-jsonl", "--out", str(out), "--min-votes", bad),
                    "at least 1")


@pytest.mark.parametrize("fmt, name", [("trl-jsonl", "x.jsonl"), ("datasets", "x"), ("judgments-csv", "x.csv")])
def test_export_to_a_path_the_system_refuses_is_one_line(admin_env, fmt, name):
    """Before: a FileNotFoundError/PermissionError traceback naming the hidden temporary file."""
    target = f"/proc/{name}"  # not writable, even for root
    err = one_line_error(run(admin_env, "export", "--format", fmt, "--out", target), f"cannot write '{target}'")
    assert ".tmp-" not in err and ".rows-" not in err


def test_export_for_an_imported_rater_says_raters_are_not_accounts(admin_env, tmp_path):
    """--annotator r1, r1 an imported file's rater, said only "no user named 'r1'; check the annotator filter"."""
    votes = tmp_path / "votes.jsonl"
    votes.write_text("".join(json.dumps({"prompt": "q", "response_a": "x", "response_b": "y", "winner": w,
                                         "annotator": r}) + "\n" for r, w in (("r1", "a"), ("r2", "b"))))
    assert run(admin_env, "import", str(votes), "--overlap", "2").returncode == 0
    out = str(tmp_path / "a.jsonl")
    one_line_error(run(admin_env, "export", "--format", "trl-jsonl", "--out", out, "--annotator", "r1"),
                   "no user named 'r1'; check the annotator filter ('r1' names a rater of imported judgments: "
                   "imported raters are not accounts: filter them as raters, with --rater or the Export page's "
                   "Imported raters)")
    # as a rater: r1's vote alone, so the pair r1 and r2 split has a winner
    assert run(admin_env, "export", "--format", "trl-jsonl", "--out", out, "--rater", "r1").returncode == 0
    [row] = [json.loads(line) for line in open(out)]
    assert (row["chosen"], row["n_judgments"]) == ("x", 1)
    one_line_error(run(admin_env, "export", "--format", "trl-jsonl", "--out", out, "--rater", "root"),
                   "no imported judgment names the rater 'root'; check the rater filter ('root' is an account: "
                   "filter accounts as annotators, with --annotator or the Export page's Annotators)")
    nobody = one_line_error(run(admin_env, "export", "--format", "trl-jsonl", "--out", out, "--annotator", "nobody",
                                "--annotator", "root"), "no user named 'nobody'; check the annotator filter")
    assert "rater" not in nobody


def test_export_over_an_existing_file_replaces_it(admin_env, tmp_path):
    out = tmp_path / "prefs.jsonl"
    out.write_text("old\n")
    assert run(admin_env, "export", "--format", "trl-jsonl", "--out", str(out)).returncode == 0
    assert len(out.read_text().splitlines()) == 3 and "old" not in out.read_text()


def test_datasets_export_writes_no_progress_bars_to_a_log(admin_env, tmp_path):
    result = run(admin_env, "export", "--format", "datasets", "--out", str(tmp_path / "ds"))
    assert result.returncode == 0, result.stderr
    assert "Saving the dataset" not in result.stderr


def test_import_default_overlap_is_the_campaigns(env, tmp_path):
    """An admin's saved campaign overlap is what the Import page uses; the CLI used PREFLOOP_OVERLAP instead."""
    from annotate import accounts, campaign
    from annotate.settings import load_settings

    assert run(env, "users", "add", "root", "--role", "admin", "--password-stdin",
               stdin="root-password\n").returncode == 0
    db = Database(create_db_engine(env["PREFLOOP_DATABASE_URL"]))
    try:
        with db.begin() as s:
            actor = accounts.actor_of(s.scalar(select(User).where(User.username == "root")))
            campaign.update_options(s, load_settings(env), actor=actor, overlap=2)
        path = tmp_path / "pairs.jsonl"
        path.write_text(json.dumps({"prompt": "p", "response_a": "x", "response_b": "y"}) + "\n")
        assert run(env, "import", str(path)).returncode == 0
        path.write_text(json.dumps({"prompt": "q", "response_a": "x", "response_b": "y"}) + "\n")
        assert run(env, "import", str(path), "--overlap", "3").returncode == 0
        with db.read() as s:
            targets = dict(s.execute(select(Prompt.text, Comparison.overlap_target).join(
                Comparison, Comparison.prompt_id == Prompt.id)).all())
    finally:
        db.dispose()
    assert targets == {"p": 2, "q": 3}


def test_import_overlap_beyond_the_apps_maximum_is_refused(env, tmp_path):
    """The Import page allows 1-20; the CLI took 999, leaving pairs that would be served 999 times."""
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "p", "response_a": "x", "response_b": "y"}) + "\n")
    for bad in ("0", "21", "many"):
        usage_error(run(env, "import", str(path), "--overlap", bad), "--overlap")
    assert counts(env)["comparisons"] == 0


def test_import_row_problems_say_nothing_was_imported_once(env, tmp_path):
    path = tmp_path / "huge.jsonl"
    path.write_text(json.dumps({"prompt": "p", "response_a": "x" * 60_000, "response_b": "y"}) + "\n")
    result = run(env, "import", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    # Not one line: a line saying nothing was imported, then one indented line per row problem.
    header, problem = _stderr_lines(result)
    assert header.startswith("error: 1 problem in huge.jsonl; nothing was imported"), result.stderr
    assert problem.startswith("  line 1: response_a is longer than"), result.stderr
    assert result.stderr.count("nothing was imported") == 1
    assert counts(env)["comparisons"] == 0


def test_score_refuses_options_it_would_ignore(env, tmp_path):
    """Before, --prompt/--response next to --file, and --out without --file, were silently ignored."""
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    one_line_error(run(env, "score", "--file", str(path), "--prompt", "other"), "not both")
    one_line_error(run(env, "score", "--prompt", "p", "--response", "r", "--out", str(tmp_path / "o")),
                   "--out goes with --file")
    assert not (tmp_path / "o").exists()


def test_score_checks_its_out_path_before_scoring(env, tmp_path):
    """Before, every row was scored (minutes for a large file) before a mistyped --out folder was found; with
    no model yet the error was about the model, not the path."""
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    one_line_error(run(env, "score", "--file", str(path), "--out", str(tmp_path / "nowhere" / "o.jsonl")),
                   f"folder '{tmp_path / 'nowhere'}' does not exist")
    one_line_error(run(env, "score", "--file", str(path), "--out", str(tmp_path)), "is a folder")


def test_retrain_watch_refuses_force(env):
    """Before, --force was accepted and ignored: the watcher started (and ran until killed)."""
    result = subprocess.run([sys.executable, "-m", "annotate.cli", "retrain", "--watch", "--force"], env=env,
                            capture_output=True, text=True, timeout=60)
    one_line_error(result, "--force goes with --once")


def test_retrain_poll_seconds_goes_with_watch_and_is_checked(env):
    one_line_error(run(env, "retrain", "--once", "--poll-seconds", "1"), "--poll-seconds goes with --watch")
    for bad in ("0", "-1", "nan", "soon"):
        result = run(env, "retrain", "--watch", "--poll-seconds", bad)
        assert result.returncode == 2 and "give a number of seconds from 0.1 to 3600" in result.stderr, result.stderr


def test_help_of_every_command_exits_zero_and_shows_no_markup():
    for args in ((), ("db",), ("users",), ("users", "add"), ("users", "set-role"), ("import",), ("export",),
                 ("demo",), ("retrain",), ("score",), ("simulate",)):
        result = run(dict(os.environ), *args, "--help")
        assert result.returncode == 0 and result.stdout.startswith("usage: prefloop"), (args, result.stderr)
        assert "``" not in result.stdout


def _options(parser, path=("prefloop",)):
    """(command path, option) for every argument of ``parser`` and its subcommands, help excepted."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*path, name))
        elif not isinstance(action, argparse._HelpAction):
            yield " ".join(path), action


def test_every_option_of_every_command_has_help():
    """The README says 'prefloop COMMAND --help' describes every option; export's --include-ties,
    --include-both-bad and --exclude-gold, score's --prompt/--response, db's action and the users
    commands' names had no text."""
    from annotate.cli import build_parser

    bare = [f"{command} {action.option_strings or action.dest}" for command, action in _options(build_parser())
            if not action.help]
    assert bare == []


def test_unknown_prefloop_variables_are_named_with_the_closest_setting():
    from annotate.settings import unknown_variables

    assert unknown_variables({"PREFLOOP_DATABASE_URI": "postgresql://x", "PREFLOOP_OVERLAP": "2",
                              "PREFLOOP_NO_SKIPS": "1", "PREFLOOP_COMPLETELY_ELSE": "1", "OTHER": "1"}) == [
        "PREFLOOP_COMPLETELY_ELSE is not a prefloop setting and is ignored",
        "PREFLOOP_DATABASE_URI is not a prefloop setting and is ignored (did you mean PREFLOOP_DATABASE_URL?)"]


def test_a_misspelt_setting_is_warned_about_not_silently_ignored(env):
    """Before, PREFLOOP_DATABASE_URI (for _URL) went unnoticed: the command used the default SQLite file."""
    result = run({**env, "PREFLOOP_DATABSE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/x"}, "users", "list")
    assert ("prefloop: warning: PREFLOOP_DATABSE_URL is not a prefloop setting and is ignored "
            "(did you mean PREFLOOP_DATABASE_URL?)") in result.stderr.splitlines(), result.stderr


def test_commands_that_need_no_model_do_not_import_torch(env, tmp_path):
    """Every command checks strategy names through ``rm.acquisition``; that must not load torch
    (about a second per command), only commands that train or score do. import and export run for real
    (with --help argparse exits before the command runs)."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"p{i}", "response_a": f"good {i}", "response_b": f"bad {i}",
                                         "winner": "a"}) + "\n" for i in range(3)))
    out = tmp_path / "prefs.jsonl"
    code = ("import runpy, sys\n"
            "sys.argv = ['prefloop', *sys.argv[1:]]\n"
            "try:\n"
            "    runpy.run_module('annotate.cli', run_name='__main__')\n"
            "except SystemExit as exc:\n"
            "    assert not exc.code, exc.code\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)\n")
    for args in (["db", "upgrade"], ["users", "add", "root", "--role", "admin", "--password-stdin"],
                 ["users", "list"], ["import", str(pairs)], ["export", "--format", "trl-jsonl", "--out", str(out)],
                 ["import", "--help"], ["export", "--help"], ["score", "--help"]):
        result = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                                input="root-password\n", timeout=300)
        assert result.returncode == 0, (args, result.stderr)
        assert result.stdout.strip().splitlines()[-1] == "False False", (args, result.stdout)
        if args[0] == "import" and args[1] != "--help":
            assert "added 3 comparisons" in result.stdout, result.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["prompt"], r["chosen"], r["rejected"]) for r in rows) == [
        (f"p{i}", f"good {i}", f"bad {i}") for i in range(3)]
    e = dict(env, PREFLOOP_STRATEGY="bal")  # a strategy name is still checked, without torch
    result = run(e, "users", "list")
    assert result.returncode != 0 and "choose one of" in result.stderr


@pytest.mark.parametrize("fmt", ["judgments-jsonl", "trl-jsonl"])
def test_export_does_not_hold_the_write_lock_while_it_writes(admin_env, tmp_path, monkeypatch, fmt):
    """An annotator's judgment must not wait for a long ``prefloop export`` (SQLite: the export
    once ran in BEGIN IMMEDIATE, so every writer waited for it and failed after 30 s)."""
    import sqlite3

    from annotate import cli, export

    for key, value in admin_env.items():
        if key.startswith("PREFLOOP_"):
            monkeypatch.setenv(key, value)
    db_path = admin_env["PREFLOOP_DATABASE_URL"].removeprefix("sqlite:///")
    wrote = []

    def annotator_writes():
        other = sqlite3.connect(db_path, timeout=0.2, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("COMMIT")
            wrote.append(True)
        except sqlite3.OperationalError as exc:
            wrote.append(str(exc))
        finally:
            other.close()

    for name in ("_write_judgments", "_write_preferences"):
        original = getattr(export, name)

        def wrapped(*args, _original=original, **kwargs):
            annotator_writes()
            return _original(*args, **kwargs)

        monkeypatch.setattr(export, name, wrapped)
    out = tmp_path / "out.jsonl"
    assert cli.main(["export", "--format", fmt, "--out", str(out)]) == 0
    assert wrote == [True]
    assert out.read_text().count("\n") == 3


def test_the_watcher_waits_for_a_database_that_is_not_there_yet_without_making_one(tmp_path):
    """README-follower run: 'prefloop retrain --watch' on a data dir with no database made an empty SQLite file
    (after which every command said "has no prefloop tables" instead of "no database") and logged a
    traceback every 5 s, forever. It now says why once, makes nothing, and starts once the database is made."""
    import signal
    import time

    path = tmp_path / "later.db"
    e = {**os.environ, "PREFLOOP_DATA_DIR": str(tmp_path / "data"), "PREFLOOP_DATABASE_URL": f"sqlite:///{path}"}
    watcher = subprocess.Popen([sys.executable, "-m", "annotate.cli", "retrain", "--watch", "--poll-seconds", "0.2"],
                               env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(4)  # many polls
        assert not path.exists()
        assert run(e, "db", "upgrade").returncode == 0
        time.sleep(2)
    finally:
        watcher.send_signal(signal.SIGTERM)
        out, _ = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, out
    assert "Traceback" not in out, out
    waiting = [line for line in out.splitlines() if "waiting for the database" in line]
    # said once, not at every poll (the upgrade, seen half-way, may add a line per revision it passes)
    assert f"no database at {path}: run 'prefloop db upgrade'" in waiting[0], out
    reasons = [line.split(" waiting for the database: ")[1] for line in waiting]
    assert len(reasons) == len(set(reasons)) and not any("no database" in r for r in reasons[1:]), out
    assert out.index("waiting for the database") < out.index("the database is ready"), out


def test_a_setting_that_is_not_a_number_is_named_with_its_range(env):
    """README-follower run: PREFLOOP_LEASE_SECONDS=abc said "is not a valid int", without the range the README
    promises for a bad value."""
    one_line_error(run({**env, "PREFLOOP_LEASE_SECONDS": "abc"}, "users", "list"),
                   "PREFLOOP_LEASE_SECONDS='abc' is not a whole number (from 10 to 31,536,000)")
    one_line_error(run({**env, "PREFLOOP_GOLD_RATE": "lots"}, "users", "list"),
                   "PREFLOOP_GOLD_RATE='lots' is not a number (from 0 to 0.5)")
    one_line_error(run({**env, "PREFLOOP_RETRAIN_EVERY_MINUTES": "x"}, "users", "list"),
                   "PREFLOOP_RETRAIN_EVERY_MINUTES='x' is not a number (from ")
    one_line_error(run({**env, "PREFLOOP_OVERLAP": "30", "PREFLOOP_MAX_OVERLAP": "25"}, "users", "list"),
                   "PREFLOOP_MAX_OVERLAP must be at most 20, not 25")
    one_line_error(run({**env, "PREFLOOP_OVERLAP": "4"}, "users", "list"),
                   "PREFLOOP_OVERLAP must be from 1 to PREFLOOP_MAX_OVERLAP (3), not 4")
