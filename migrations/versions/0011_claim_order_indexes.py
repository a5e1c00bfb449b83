"""claim order indexes: the queue's and the batch key's queued jobs in claim order (rank, then
line index), so a claim reads the jobs it takes, not every queued job of the key to sort them;
the (status, batch_key, priority) index goes: the key's claim order index serves its lookups

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_status_queue_rank_index", "jobs", ["status", "queue", "rank", "index"])
    op.create_index("ix_jobs_status_key_rank_index", "jobs", ["status", "batch_key", "rank", "index"])
    op.drop_index("ix_jobs_status_queue_rank", table_name="jobs")
    op.drop_index("ix_jobs_status_key_rank", table_name="jobs")
    op.drop_index("ix_jobs_status_batch_key", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_status_batch_key", "jobs", ["status", "batch_key", "priority"])
    op.create_index("ix_jobs_status_queue_rank", "jobs", ["status", "queue", "rank"])
    op.create_index("ix_jobs_status_key_rank", "jobs", ["status", "batch_key", "rank"])
    op.drop_index("ix_jobs_status_key_rank_index", table_name="jobs")
    op.drop_index("ix_jobs_status_queue_rank_index", table_name="jobs")
