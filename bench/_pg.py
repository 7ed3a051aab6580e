"""What the benchmarks that seed a database share (imported by the scripts beside it)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, select, text  # noqa: E402

from annotate.db import Database  # noqa: E402
from annotate.models import Base  # noqa: E402


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
