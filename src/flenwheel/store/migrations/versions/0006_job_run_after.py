"""job.run_after: a retry's backoff gets its own column

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 01:00:00

A transient failure's backoff was kept in `heartbeat_at` (a queued row with a future heartbeat was not
claimable), so the column meant two things. `run_after` now holds the not-before time and claims on every
backend honour it; `heartbeat_at` is only the running worker's last sign of life. Rows waiting out a backoff
when the database is upgraded keep their wait.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job") as batch_op:
        batch_op.add_column(sa.Column("run_after", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE job SET run_after = heartbeat_at, heartbeat_at = NULL "
        "WHERE status = 'queued' AND heartbeat_at IS NOT NULL"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE job SET heartbeat_at = run_after WHERE status = 'queued' AND run_after IS NOT NULL"
    )
    with op.batch_alter_table("job") as batch_op:
        batch_op.drop_column("run_after")
