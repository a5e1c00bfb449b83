"""partial status indexes: queued jobs in claim order (per queue, per batch key), running jobs
by lease expiry and waiting jobs, each index holding only the jobs of its status. A planner
with statistics taken while the farm sat idle (nothing queued, nothing running) took any index
led by status as the way to a claim's jobs and sorted every queued one; an index that holds
only queued jobs in claim order is the way in. And on PostgreSQL the status column keeps no
statistics: its distribution changes in seconds (a submission queues 100,000 jobs, a farm
drains them) and ANALYZE runs after a share of the table has changed, so the planner counted
a status's jobs from a table that no longer is (1 queued job where 30,000 waited: a tie, which
a claim's sort of every queued job could win). With none, it takes a share of the table as
it is now. Each update of a job also writes fewer index entries (a finished job is in none of
these indexes).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def _where(status: str) -> dict[str, Any]:
    condition = sa.text(f"status = '{status}'")
    return {"postgresql_where": condition, "sqlite_where": condition}


def upgrade() -> None:
    op.drop_index("ix_jobs_status_queue_rank_index", table_name="jobs")
    op.drop_index("ix_jobs_status_key_rank_index", table_name="jobs")
    op.drop_index("ix_jobs_status_lease", table_name="jobs")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE jobs ALTER COLUMN status SET STATISTICS 0")
        # no statistics taken from now on, and the ones taken before go: a statistics target
        # of 0 keeps them (ANALYZE leaves the column alone), and with them a claim sorted every
        # queued job. The column's type, set again, drops them for its owner (no superuser):
        # the table is not rewritten, the three other indexes holding status are rebuilt
        op.execute("ALTER TABLE jobs ALTER COLUMN status TYPE VARCHAR(16)")
    op.create_index("ix_jobs_queued_queue_rank", "jobs", ["queue", "rank", "index"],
                    **_where("queued"))
    op.create_index("ix_jobs_queued_key_rank", "jobs", ["batch_key", "rank", "index"],
                    **_where("queued"))
    op.create_index("ix_jobs_running_lease", "jobs", ["lease_expires_at"], **_where("running"))
    op.create_index("ix_jobs_waiting", "jobs", ["id"], **_where("waiting"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE jobs ALTER COLUMN status SET STATISTICS -1")
    op.create_index("ix_jobs_status_lease", "jobs", ["status", "lease_expires_at"])
    op.create_index("ix_jobs_status_key_rank_index", "jobs", ["status", "batch_key", "rank", "index"])
    op.create_index("ix_jobs_status_queue_rank_index", "jobs", ["status", "queue", "rank", "index"])
    op.drop_index("ix_jobs_waiting", table_name="jobs")
    op.drop_index("ix_jobs_running_lease", table_name="jobs")
    op.drop_index("ix_jobs_queued_key_rank", table_name="jobs")
    op.drop_index("ix_jobs_queued_queue_rank", table_name="jobs")
