"""responses.n_chars: the response length stored at insert

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Add responses.n_chars and backfill it from the texts."""
    with op.batch_alter_table('responses', schema=None) as batch_op:
        batch_op.add_column(sa.Column('n_chars', sa.Integer(), nullable=True))
    responses = sa.table('responses', sa.column('text', sa.Text()), sa.column('n_chars', sa.Integer()))
    op.execute(responses.update().values(n_chars=sa.func.length(responses.c.text)))


def downgrade() -> None:
    """Drop responses.n_chars."""
    with op.batch_alter_table('responses', schema=None) as batch_op:
        batch_op.drop_column('n_chars')
