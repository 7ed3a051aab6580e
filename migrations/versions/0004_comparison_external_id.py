"""comparisons.external_id: the id the imported row gave the pair

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Add comparisons.external_id (empty for pairs imported before)."""
    with op.batch_alter_table('comparisons', schema=None) as batch_op:
        batch_op.add_column(sa.Column('external_id', sa.String(length=256), nullable=True))


def downgrade() -> None:
    """Drop comparisons.external_id."""
    with op.batch_alter_table('comparisons', schema=None) as batch_op:
        batch_op.drop_column('external_id')
