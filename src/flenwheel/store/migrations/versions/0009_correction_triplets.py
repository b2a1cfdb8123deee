"""correction triplets and their versions (seed 001 flywheel 2)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 01:30:00

- `correction_triplet`: (source, edit instruction, corrected target) made from each needs_correction image.
- `correction_set`: immutable snapshots c1, c2, … of the complete triplets, the editor LoRA's training input.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "correction_triplet",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("character_id", sa.Integer(), sa.ForeignKey("character.id", ondelete="CASCADE"), nullable=False),
        sa.Column("flawed_asset_id", sa.Integer(), sa.ForeignKey("asset.id", ondelete="CASCADE"), nullable=False),
        sa.Column("source_asset_id", sa.Integer(), sa.ForeignKey("asset.id", ondelete="CASCADE"), nullable=False),
        sa.Column("target_asset_id", sa.Integer(), sa.ForeignKey("asset.id", ondelete="SET NULL"), nullable=True),
        sa.Column("instruction", sa.Text(), nullable=False),
        sa.Column("issue", sa.Text(), nullable=False),
        sa.Column("improvement", sa.Text(), nullable=False),
        sa.Column("dropped", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("flawed_asset_id", name="uq_correction_flawed"),
    )
    op.create_index("ix_correction_triplet_character_id", "correction_triplet", ["character_id"])
    op.create_table(
        "correction_set",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("character_id", sa.Integer(), sa.ForeignKey("character.id", ondelete="CASCADE"), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("character_id", "number", name="uq_correction_set_number"),
    )
    op.create_index("ix_correction_set_character_id", "correction_set", ["character_id"])


def downgrade() -> None:
    op.drop_index("ix_correction_set_character_id", table_name="correction_set")
    op.drop_table("correction_set")
    op.drop_index("ix_correction_triplet_character_id", table_name="correction_triplet")
    op.drop_table("correction_triplet")
