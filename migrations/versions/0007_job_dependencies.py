"""job dependencies: the manifest line a job came from, and what a waiting job waits for

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("line", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("waits_on", sa.JSON(), nullable=True))
        batch_op.create_index("ix_jobs_batch_line_status", ["batch_id", "line", "status"])


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_batch_line_status")
        batch_op.drop_column("waits_on")
        batch_op.drop_column("line")
