"""unit pulses: one row per running work unit, touched every few seconds by its worker, so a
lost worker's jobs go back to the queue in seconds without rewriting job rows to stay alive

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "unit_pulses",
        sa.Column("owner", sa.String(128), primary_key=True),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("unit_pulses")
