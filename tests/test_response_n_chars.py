"""Response.n_chars is filled by every insert path and used by the length figures."""

from __future__ import annotations

import json

from sqlalchemy import func, insert, inspect, select, text
from sqlalchemy.pool import NullPool

from annotate import migrate
from annotate.db import create_db_engine
from annotate.ingest import import_file
from annotate.models import Prompt, Response
from tests.test_migrations import empty_url  # noqa: F401 - the fixture (an empty SQLite or PostgreSQL database)


def test_ingest_bulk_insert_stores_lengths(db, settings):
    rows = [{"prompt": "p1", "response_a": "short", "response_b": "a much longer answer, é ü"},
            {"prompt": "p2", "response_a": "x" * 1234, "response_b": "z"}]
    data = "\n".join(json.dumps(r) for r in rows).encode() + b"\n"
    with db.begin() as s:
        import_file(s, settings, data, filename="n.jsonl", system=True)
    with db.read() as s:
        got = dict(s.execute(select(Response.text, Response.n_chars)).all())
        db_lengths = dict(s.execute(select(Response.text, func.length(Response.text))).all())
    assert got  # the import stored responses
    assert got == {t: len(t) for t in got}
    assert got == db_lengths  # Python's len and the database's length agree (non-ASCII included)
    assert got["x" * 1234] == 1234


def test_orm_and_core_executemany_store_lengths(db):
    with db.begin() as s:
        prompt = Prompt(content_hash="p", text="prompt")
        s.add(prompt)
        s.flush()
        s.add(Response(prompt_id=prompt.id, content_hash="orm", text="four"))
        s.execute(insert(Response), [{"prompt_id": prompt.id, "content_hash": f"core{i}", "text": "y" * i}
                                     for i in range(1, 4)])
    with db.read() as s:
        got = dict(s.execute(select(Response.content_hash, Response.n_chars)).all())
    assert got == {"orm": 4, "core1": 1, "core2": 2, "core3": 3}


def test_migration_backfills_existing_responses(empty_url):
    migrate.upgrade(empty_url, "0001")
    engine = create_db_engine(empty_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO prompts (id, content_hash, text, created_at) "
                              "VALUES (1, 'p', 'prompt', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO responses (prompt_id, content_hash, text, created_at) "
                              "VALUES (1, 'a', :a, CURRENT_TIMESTAMP), (1, 'b', :b, CURRENT_TIMESTAMP)"),
                         {"a": "seven c", "b": "ü" * 12})
        migrate.upgrade(empty_url)
        with engine.connect() as conn:
            got = dict(conn.execute(text("SELECT content_hash, n_chars FROM responses")).all())
        assert got == {"a": 7, "b": 12}
        migrate.downgrade(empty_url, "0001")
        assert "n_chars" not in {c["name"] for c in inspect(engine).get_columns("responses")}
    finally:
        engine.dispose()
