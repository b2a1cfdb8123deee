"""run context: run_call (budget reservations + remote ids of every engine/trainer call) replaces remote_job

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 21:50:00
"""

import sqlalchemy as sa
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('run_call',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=160), nullable=False),
    sa.Column('engine', sa.String(length=64), nullable=False),
    sa.Column('character_id', sa.Integer(), nullable=True),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('remote_id', sa.Text(), nullable=True),
    sa.Column('reserved_usd', sa.Float(), nullable=False),
    sa.Column('billed_usd', sa.Float(), nullable=True),
    sa.Column('outputs', sa.JSON(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['character_id'], ['character.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    op.create_index(op.f('ix_run_call_character_id'), 'run_call', ['character_id'], unique=False)
    op.create_index(op.f('ix_run_call_job_id'), 'run_call', ['job_id'], unique=False)
    # Remote jobs still running when the project is upgraded keep their ids: a retry resumes them.
    op.execute(
        "INSERT INTO run_call (key, engine, status, remote_id, reserved_usd, outputs, created_at, updated_at) "
        "SELECT fingerprint, provider, CASE WHEN status = 'running' THEN 'submitted' ELSE status END, "
        "remote_id, 0.0, '[]', created_at, created_at FROM remote_job"
    )
    op.drop_table('remote_job')


def downgrade() -> None:
    op.create_table('remote_job',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('provider', sa.String(length=64), nullable=False),
    sa.Column('remote_id', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('fingerprint')
    )
    op.drop_index(op.f('ix_run_call_job_id'), table_name='run_call')
    op.drop_index(op.f('ix_run_call_character_id'), table_name='run_call')
    op.drop_table('run_call')
