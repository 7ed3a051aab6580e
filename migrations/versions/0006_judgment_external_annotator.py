"""judgments.external_annotator: the rater an imported row named

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28

"""
import warnings
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Add judgments.external_annotator (empty for judgments imported before, and for annotators' own)."""
    with op.batch_alter_table('judgments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('external_annotator', sa.String(length=256), nullable=True))


def downgrade() -> None:
    """Drop judgments.external_annotator."""
    with warnings.catch_warnings():
        # SQLite copies the table to drop a column, reflecting users (its foreign key) on the way, whose
        # expression index uq_users_username_lower SQLAlchemy cannot read; that index is not copied or touched.
        warnings.filterwarnings("ignore", ".*expression-based index '?uq_users_username_lower")
        with op.batch_alter_table('judgments', schema=None) as batch_op:
            batch_op.drop_column('external_annotator')
