"""The ``prefloop`` command line, run as a user would (subprocesses on a temp SQLite file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from annotate.db import Database, create_db_engine
from annotate.models import Comparison, Judgment, Prompt, Response, User
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
    assert "added 2312 comparisons" in first.stdout
    # The file's winners complete every pair at overlap 1: the import says annotators will not see them.
    assert "2312 new comparisons already have the 1 judgment(s) they need" in first.stdout
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
    assert run(env, "users", "deactivate", "alice").returncode == 0
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


def test_judging_the_whole_demo_once_triggers_the_first_retrain(env):
    """``make run``'s demo shows the loop: one annotator judging every demo pair reaches the default
    'retrain every N new labels' (with 36 pairs for 50 labels the watcher only retrained on its timer)."""
    from datetime import timedelta

    from annotate import retrain
    from annotate.models import utcnow
    from annotate.settings import load_settings

    assert run(env, "demo").returncode == 0
    settings = load_settings(env)
    db = Database(create_db_engine(env["PREFLOOP_DATABASE_URL"]))
    try:
        with db.begin() as s:
            annotator = s.scalar(select(User.id).where(User.username == "annotator"))
            for cid in s.scalars(select(Comparison.id)):
                s.add(Judgment(comparison_id=cid, annotator_id=annotator, choice="a", a_on_left=True,
                               time_spent_ms=4000))
        with db.read() as s:
            check = retrain.check_due(s, settings, since=utcnow() - timedelta(minutes=1))
    finally:
        db.dispose()
    assert check.new_judgments >= settings.retrain_every_labels
    assert check.due, check.reason


def test_export_cli_writes_trl_jsonl(env, tmp_path, hh_path):
    assert run(env, "users", "add", "root", "--role", "admin", "--password-stdin", stdin="root-password\n").returncode == 0
    assert run(env, "import", str(hh_path)).returncode == 0
    out = tmp_path / "prefs.jsonl"
    result = run(env, "export", "--format", "trl-jsonl", "--out", str(out))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 2312
    assert {"prompt", "chosen", "rejected"} <= set(lines[0])
    raw = tmp_path / "judgments.parquet"
    result = run(env, "export", "--format", "judgments-parquet", "--out", str(raw))
    assert result.returncode == 0, result.stderr
    import pyarrow.parquet as pq

    assert pq.read_metadata(raw).num_rows == 2312  # the imported judgments


def test_retrain_once_writes_no_progress_bars_to_a_log(env, tmp_path):
    """The watcher's and Retrain now's logs are files: tqdm's "Loading weights" bars do not belong there."""
    rows = [{"prompt": f"Question {i}: how do I keep basil alive?", "chosen": f"Water it every {i % 5 + 1} days.",
             "rejected": "Basil cannot be grown indoors." if i % 2 else "No idea."} for i in range(40)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    assert run(env, "import", str(path)).returncode == 0
    result = run(env, "retrain", "--once")
    assert result.returncode == 0, result.stderr
    assert "Loading weights" not in result.stderr
