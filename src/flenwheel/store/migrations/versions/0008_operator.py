"""operators: an API user who may read every user's metrics

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 01:00:00

- `api_user.operator`: `flenwheel user add NAME --operator` (or `flenwheel user operator NAME`). GET /stats shows
  an operator every character's figures (a user only their own), and GET /metrics answers only operators.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_user") as batch_op:
        batch_op.add_column(sa.Column("operator", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("api_user") as batch_op:
        batch_op.drop_column("operator")
