"""training runs of an editor LoRA: trained from a correction set instead of a dataset version

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 01:40:00

- `training_run.correction_set_id`: the correction set (flywheel 2) an editor LoRA was trained from.
- `training_run.dataset_version_id` may now be NULL (an editor run has no dataset version); a character LoRA run
  still names one. Exactly one of the two is set.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table(
        "training_run",
        recreate="always" if sqlite else "auto",
        table_kwargs={"sqlite_autoincrement": True},  # run ids name folders: never reused
    ) as batch_op:
        batch_op.alter_column("dataset_version_id", existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column("correction_set_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            "fk_training_run_correction_set_id", "correction_set", ["correction_set_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("training_run") as batch_op:
        batch_op.drop_constraint("fk_training_run_correction_set_id", type_="foreignkey")
        batch_op.drop_column("correction_set_id")
        batch_op.alter_column("dataset_version_id", existing_type=sa.Integer(), nullable=False)
