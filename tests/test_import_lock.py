"""An import reads its file before its write transaction takes SQLite's write lock.

On SQLite a write unit of work begins with BEGIN IMMEDIATE at its first statement, and every annotator's
judgment waits on that lock (then fails "not saved" after the busy timeout). Reading the file is most of an
import's time, so it must happen with no lock held. These tests run a second writer in the middle of the
parse stage (from the hook each parsed comparison goes through), with no busy timeout: it commits only if
nothing holds the lock; no timing is involved.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
from sqlalchemy import event, func, select

from annotate import cli, ingest
from annotate.accounts import Actor, create_user
from annotate.errors import PermissionDenied, PrefloopError
from annotate.models import AuditEvent, Choice, Comparison, Judgment, Prompt, Response

ROWS = [{"prompt": f"prompt {i}", "response_a": f"a {i}", "response_b": f"b {i}", "winner": "a"} for i in range(5)]
DATA = "".join(json.dumps(row) + "\n" for row in ROWS).encode()


def commit_from_another_connection(url: str) -> str:
    """Write one audit row from a connection of its own with no busy timeout: 'committed', or SQLite's error."""
    conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO audit_log (action, detail, created_at) "
                     "VALUES ('concurrent', '{}', '2020-01-01 00:00:00.000000')")
        conn.execute("COMMIT")
        return "committed"
    except sqlite3.OperationalError as exc:
        return str(exc)
    finally:
        conn.close()


@pytest.fixture
def while_parsing(monkeypatch):
    """``while_parsing(action)``: run ``action`` when the parse stage hands on its first comparison; the
    returned list gets its result, once per parse."""

    def install(action) -> list:
        results: list = []
        real = ingest._parse_data

        def parse(src, name, fmt, max_text_chars, keep=None, **options):
            gathered: list = []  # parse_file's own list, when it passes no callback
            onward = gathered.append if keep is None else keep
            started = []

            def kept(c):
                if not started:
                    started.append(True)
                    results.append(action())
                onward(c)

            parsed = real(src, name, fmt, max_text_chars, kept, **options)
            parsed.comparisons = gathered
            return parsed

        monkeypatch.setattr(ingest, "_parse_data", parse)
        return results

    return install


def test_cli_import_reads_the_file_without_the_write_lock(tmp_path, sqlite_url, monkeypatch, while_parsing, capsys):
    """Before: cmd_import opened the write transaction, read the campaign's overlap (BEGIN IMMEDIATE) and only
    then read the file, so a judgment pressed during the read waited for the whole import."""
    monkeypatch.setenv("PREFLOOP_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("PREFLOOP_DATA_DIR", str(tmp_path / "data"))
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(DATA)
    results = while_parsing(lambda: commit_from_another_connection(sqlite_url))
    assert cli.main(["import", str(path)]) == 0, capsys.readouterr().err
    assert results == ["committed"]
    assert "added 5 comparisons" in capsys.readouterr().out
    conn = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    try:
        actions = sorted(a for (a,) in conn.execute("SELECT action FROM audit_log"))
        assert actions == ["concurrent", "import"]
        assert conn.execute("SELECT count(*) FROM comparisons").fetchone() == (5,)
    finally:
        conn.close()


def test_import_file_given_a_file_reads_it_before_using_the_session(sqlite_db, sqlite_settings, while_parsing):
    """A caller that passes the file itself (the demo, scripts) gets the same order: read, then the session."""
    results = while_parsing(lambda: commit_from_another_connection(sqlite_settings.sqlalchemy_url))
    with sqlite_db.begin() as session:
        report = ingest.import_file(session, sqlite_settings, DATA, filename="p.jsonl", system=True)
    assert results == ["committed"] and report.comparisons_added == 5


def test_a_prepared_file_is_checked_for_the_role_and_written_once(sqlite_db, sqlite_settings):
    with sqlite_db.begin() as session:
        boss = create_user(session, "boss", "password123", "admin", system=True)
        worker = create_user(session, "worker", "password123", "annotator", system=True)
        boss, worker = (Actor(id=u.id, username=u.username, role=u.role) for u in (boss, worker))
    prepared = ingest.prepare_import(sqlite_settings, DATA, filename="p.jsonl", known_winner="gold")
    with pytest.raises(PermissionDenied), sqlite_db.begin() as session:
        ingest.import_file(session, sqlite_settings, prepared, actor=worker)
    with pytest.raises(TypeError, match="known_winner"), sqlite_db.begin() as session:
        ingest.import_file(session, sqlite_settings, prepared, actor=boss, known_winner="ignore")
    with sqlite_db.begin() as session:
        report = ingest.import_file(session, sqlite_settings, prepared, actor=boss)
    assert (report.comparisons_added, report.gold_added, report.judgments_added) == (5, 5, 0)
    with pytest.raises(PrefloopError, match="prepare it again"), sqlite_db.begin() as session:
        ingest.import_file(session, sqlite_settings, prepared, actor=boss)
    with sqlite_db.read() as session:
        assert session.scalar(select(func.count()).select_from(Comparison)) == 5
        assert session.scalars(select(AuditEvent.action).where(AuditEvent.action == "import")).all() == ["import"]


def test_sqlite_rows_go_in_as_prepared_tuples_by_executemany_with_their_ids_given(sqlite_db, sqlite_settings):
    """While the write holds the lock, rows go to the driver as built by prepare_import: one executemany of plain
    INSERTs per batch, ids given (counted on from the table's highest), no RETURNING to read back. Before,
    SQLAlchemy built every row's parameters under the lock (about half the time it was held) and read the ids
    back with multi-row INSERT ... RETURNING statements."""
    with sqlite_db.begin() as session:  # an earlier import: new ids count on from its highest
        ingest.import_file(session, sqlite_settings, DATA, filename="first.jsonl", system=True)
    inserts = []

    def listener(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT") and "audit_log" not in statement \
                and "import_batches" not in statement:
            inserts.append((statement, parameters, executemany))

    rows = [{"prompt": f"new {i}", "response_a": f"x {i}", "response_b": f"y {i}", "winner": "b"} for i in range(3)]
    prepared = ingest.prepare_import(sqlite_settings, "".join(json.dumps(r) + "\n" for r in rows).encode())
    expected_prompts = list(prepared.prompts.values())
    event.listen(sqlite_db.engine, "before_cursor_execute", listener)
    try:
        with sqlite_db.begin() as session:
            report = ingest.import_file(session, sqlite_settings, prepared, system=True)
    finally:
        event.remove(sqlite_db.engine, "before_cursor_execute", listener)
    assert (report.prompts_added, report.responses_added, report.comparisons_added, report.judgments_added) == (
        3, 6, 3, 3)
    assert [statement.split("(")[0].split()[-1].strip('"') for statement, _, _ in inserts] == [
        "prompts", "responses", "comparisons", "judgments"]
    assert all(many and "RETURNING" not in statement.upper() for statement, _, many in inserts)
    prompt_rows = inserts[0][1]
    assert [row[0] for row in prompt_rows] == [6, 7, 8]  # ids after the first import's 5
    assert [tuple(row[1:1 + len(expected_prompts[0])]) for row in prompt_rows] == [tuple(p) for p in expected_prompts]
    with sqlite_db.read() as session:
        stored = session.execute(select(Comparison.id, Prompt.text, Response.text).join(
            Prompt, Prompt.id == Comparison.prompt_id).join(Response, Response.id == Comparison.response_b_id)
            .where(Comparison.id > 5).order_by(Comparison.id)).all()
        winners = session.execute(select(Judgment.comparison_id, Judgment.choice).where(
            Judgment.comparison_id > 5).order_by(Judgment.comparison_id)).all()
    assert [tuple(row) for row in stored] == [(6 + i, f"new {i}", f"y {i}") for i in range(3)]
    assert [tuple(row) for row in winners] == [(6 + i, Choice.b) for i in range(3)]
