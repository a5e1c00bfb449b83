"""job rank: the claim order across batches (priority, aged by the time a job has waited)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

AGING_SECONDS = 30.0  # the default of GENFARM_PRIORITY_AGING_SECONDS


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rank", sa.Float(), nullable=False, server_default="0"))
    # jobs of earlier revisions: ranked by when they were submitted and their priority
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("priority", sa.Integer),
                    sa.column("created_at", sa.DateTime(timezone=True)),
                    sa.column("rank", sa.Float))
    conn = op.get_bind()
    rows = conn.execute(sa.select(jobs.c.id, jobs.c.priority, jobs.c.created_at)).all()
    for i in range(0, len(rows), 1000):
        conn.execute(jobs.update().where(jobs.c.id == sa.bindparam("job_id"))
                     .values(rank=sa.bindparam("new_rank")),
                     [{"job_id": job_id, "new_rank": _epoch(created) - priority * AGING_SECONDS}
                      for job_id, priority, created in rows[i : i + 1000]])
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_status_queue_rank", ["status", "queue", "rank"])
        batch_op.create_index("ix_jobs_status_key_rank", ["status", "batch_key", "rank"])


def _epoch(value: object) -> float:
    from datetime import UTC, datetime

    if isinstance(value, str):  # SQLite hands back text
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        return 0.0
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_status_key_rank")
        batch_op.drop_index("ix_jobs_status_queue_rank")
        batch_op.drop_column("rank")
