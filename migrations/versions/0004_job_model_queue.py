"""job model and queue: each model has its own Celery queue, recorded per job; the workers
that run, with the models they serve

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model", sa.String(64), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("queue", sa.String(128), nullable=False, server_default=""))
    # Before this revision every job ran on the built-in models, on the queues of its kind.
    op.execute("UPDATE jobs SET model = CASE WHEN kind = 'noop' THEN 'noop' ELSE 'aether' END, "
               "queue = CASE WHEN kind = 'noop' THEN 'noop' WHEN kind = 'video' "
               "THEN 'aether.long' ELSE 'aether' END")


    op.create_table(
        "workers",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("workers")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("queue")
        batch_op.drop_column("model")
