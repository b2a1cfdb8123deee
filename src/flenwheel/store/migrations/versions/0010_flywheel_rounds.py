"""flywheel rounds: one record per round of flywheel 1 (seed 001 steps 1.5–1.8)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 01:00:00

- `flywheel_round`: a character's rounds, numbered 1, 2, …: the stage reached and the round's record
  (coverage, prompts, candidates, filter numbers, review outcomes, dataset version, run, evaluation,
  comparison, cost, why the loop stopped), kept as JSON so a resumed round continues where it stopped.
- Review labels gain `pristine` and the source `policy`: both fit the existing string columns.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flywheel_round",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("character_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["character_id"], ["character.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("character_id", "number", name="uq_flywheel_round_number"),
    )
    op.create_index(op.f("ix_flywheel_round_character_id"), "flywheel_round", ["character_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_flywheel_round_character_id"), table_name="flywheel_round")
    op.drop_table("flywheel_round")
