"""farm turns: when a farm-wide periodic pass (the reconciler's) last ran on any worker, so that
the farm runs one per interval, not one per worker

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "farm_turns",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("ran_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("farm_turns")
