"""What the benchmarks that seed a database share (imported by the scripts beside it)."""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, func, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from annotate.db import Database  # noqa: E402
from annotate.models import Base  # noqa: E402

ADMIN_URL = os.environ.get("PREFLOOP_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
"""A PostgreSQL server's maintenance database, where the scratch databases are created and dropped."""


@contextlib.contextmanager
def scratch_database(prefix: str, *, admin_url: str = ADMIN_URL, keep: bool = False) -> Iterator[str]:
    """A new, empty PostgreSQL database on ``admin_url``'s server, named ``prefix`` and a random suffix: yields
    its URL, then drops it (ending the connections still open to it), unless ``keep``."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    server = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    # CREATE/DROP DATABASE take no bound parameters: the name goes in as an identifier, quoted by the dialect.
    quoted = server.dialect.identifier_preparer.quote_identifier(name)
    try:
        with server.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {quoted}"))
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            if not keep:
                with server.connect() as conn:
                    conn.execute(text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
    finally:
        server.dispose()


def reset_sequences(conn) -> None:
    """Move each table's id sequence to its largest id (PostgreSQL). Rows seeded with explicit ids leave the
    sequence behind, and the first row the app itself adds would take an id already used. A table without
    rows keeps its sequence (setval of NULL does nothing)."""
    for table in Base.metadata.sorted_tables:
        column = table.autoincrement_column
        if column is not None:
            conn.execute(select(func.setval(func.pg_get_serial_sequence(table.name, column.name),
                                            select(func.max(column)).scalar_subquery())))


def settle(db: Database) -> None:
    """After seeding: the sequences past the seeded ids (PostgreSQL), then ANALYZE so that the planner knows
    the seeded sizes, as it would for a database in service."""
    with db.begin() as session:
        if db.dialect == "postgresql":
            reset_sequences(session)
        session.execute(text("ANALYZE"))
