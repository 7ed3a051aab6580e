"""Apply Alembic migrations programmatically (``prefloop db upgrade``).

Several servers may start at once against one PostgreSQL database and each
run ``prefloop db upgrade``. Alembic itself does not serialize them (two
``CREATE TABLE alembic_version`` collide), so on PostgreSQL every upgrade or
downgrade first waits for a session advisory lock on a dedicated connection;
the second one then finds the schema at head and does nothing. SQLite needs
no lock: its migration transactions start with ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config

from annotate.errors import ConfigError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url`` that does not depend on the working directory."""
    if not (MIGRATIONS_DIR / "env.py").exists():
        raise ConfigError(f"migrations not found at {MIGRATIONS_DIR}; install prefloop from a source checkout")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


MIGRATE_LOCK_NAME = "migrate"


@contextmanager
def _migration_lock(url: str):
    """Hold the PostgreSQL ``migrate`` advisory lock for the block (waits for it; nothing on SQLite)."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    from annotate.db import create_db_engine
    from annotate.locks import advisory_key

    if make_url(url).get_backend_name() != "postgresql":
        yield
        return
    key = advisory_key(MIGRATE_LOCK_NAME)
    engine = create_db_engine(url, poolclass=NullPool).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate ``url`` up to ``revision``; concurrent callers on PostgreSQL take turns."""
    with _migration_lock(url):
        command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Migrate ``url`` down to ``revision``; concurrent callers on PostgreSQL take turns."""
    with _migration_lock(url):
        command.downgrade(alembic_config(url), revision)


def script_directory(url: str):
    """This prefloop's migration scripts (their revisions and heads)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(url))


def current_heads(url: str) -> set[str]:
    from alembic.runtime.migration import MigrationContext
    from annotate.db import reading_engine

    # A read: on SQLite a deferred transaction, so a writer holding the lock (a long import) does not make
    # every command's schema check wait for it (and fail after the busy timeout).
    engine = reading_engine(url)
    try:
        with engine.connect() as conn:
            return set(MigrationContext.configure(conn).get_current_heads())
    finally:
        engine.dispose()
