"""tenancy: character names unique per owner, revocable users, ids never reused

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 21:30:00

- `character.name` was unique in the whole project, so a 409 told one user another's names: it is now
  unique per owner (`uq_character_owner_name`).
- `api_user.revoked_at`: `flenwheel user revoke NAME`; a revoked user's token answers 401.
- On SQLite, ids of characters, training runs and jobs are never reused after a delete (AUTOINCREMENT):
  files and jobs named by id must never pass to a later row.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The unnamed UNIQUE(name) of 0001, as SQLite reflects it under this naming convention.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _old_name_constraint() -> str:
    return "character_name_key" if op.get_bind().dialect.name == "postgresql" else "uq_character_name"


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table(
        "character",
        naming_convention=NAMING,
        recreate="always" if sqlite else "auto",
        table_kwargs={"sqlite_autoincrement": True},
    ) as batch_op:
        batch_op.drop_constraint(_old_name_constraint(), type_="unique")
        batch_op.create_unique_constraint("uq_character_owner_name", ["owner_id", "name"])
    with op.batch_alter_table("api_user") as batch_op:
        batch_op.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
    if sqlite:
        for table in ("training_run", "job"):
            with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": True}):
                pass


def downgrade() -> None:
    with op.batch_alter_table("api_user") as batch_op:
        batch_op.drop_column("revoked_at")
    with op.batch_alter_table("character", naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint("uq_character_owner_name", type_="unique")
        batch_op.create_unique_constraint(_old_name_constraint(), ["name"])
