"""character.sheet: the character sheet moves from a file into the store

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 01:10:00

The sheet (anchors, variations, strengths, image size) was a YAML file in the API host's project folder,
`characters/<id>/sheet.yaml`, which a worker on another host could not read. It is now a JSON column on the
character (NULL = never edited: the defaults). A sheet.yaml an earlier release left is imported on first read
by the host that has it (pipeline/sheet.py `load_sheet_config`) and renamed `sheet.yaml.imported`: nothing a
user stored is lost.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("character") as batch_op:
        batch_op.add_column(sa.Column("sheet", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("character") as batch_op:
        batch_op.drop_column("sheet")
