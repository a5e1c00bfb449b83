"""estimates, budgets and reuse: throughput per batch key and device, per-project budgets, each
job's estimate, and the fingerprint by which a job reuses the outputs of an identical one

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "throughput",
        sa.Column("batch_key", sa.String(255), primary_key=True),
        sa.Column("device", sa.String(32), primary_key=True),
        sa.Column("jobs", sa.BigInteger(), nullable=False),
        sa.Column("units", sa.Float(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "budgets",
        sa.Column("project", sa.String(64), sa.ForeignKey("projects.name"), primary_key=True),
        sa.Column("device_seconds", sa.Float(), nullable=False),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("estimate_seconds", sa.Float(), nullable=False,
                                      server_default="0"))
        batch_op.add_column(sa.Column("fingerprint", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("reused_from", sa.String(32), nullable=True))
        batch_op.create_index("ix_jobs_fingerprint_status", ["fingerprint", "status"])


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_fingerprint_status")
        batch_op.drop_column("reused_from")
        batch_op.drop_column("fingerprint")
        batch_op.drop_column("estimate_seconds")
    op.drop_table("budgets")
    op.drop_table("throughput")
