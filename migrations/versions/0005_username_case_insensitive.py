"""users: a unique index on lower(username), so 'carol' and 'Carol' cannot both exist

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Create uq_users_username_lower; refuse, naming them, usernames that already differ only in case."""
    from annotate.errors import PrefloopError

    # Said before the index is tried: its IntegrityError names neither the accounts nor what to do.
    rows = op.get_bind().execute(sa.text(
        "SELECT id, username FROM users WHERE lower(username) IN "
        "(SELECT lower(username) FROM users GROUP BY lower(username) HAVING count(*) > 1) "
        "ORDER BY lower(username), id")).all()
    if rows:
        clashes = ", ".join(f"{name!r} (id {id_})" for id_, name in rows)
        raise PrefloopError(
            f"usernames that differ only in case: {clashes}; rename all but one of each "
            "with 'prefloop users rename OLD NEW' (deactivating is not enough; without the CLI: "
            "UPDATE users SET username = 'new-name' WHERE id = ...), then run 'prefloop db upgrade' again")
    # A plain CREATE INDEX on both backends: no table copy on SQLite.
    op.create_index('uq_users_username_lower', 'users', [sa.text('lower(username)')], unique=True)


def downgrade() -> None:
    """Drop uq_users_username_lower (create_user's own check still refuses case-only differences)."""
    op.drop_index('uq_users_username_lower', table_name='users')
