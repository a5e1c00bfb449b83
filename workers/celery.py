"""The farm's Celery app at module level, for Celery's own command line:

    celery -A workers.celery inspect ping | active | active_queues | stats
    celery -A workers.celery events --dump
    celery -A workers.celery control shutdown

It reads the same GENFARM_* settings (environment, or .env in the current folder) as `genfarm`,
here at import, as every entry point does; nothing else in genfarm reads them at import time.
Celery finds it as ``workers.celery`` (or ``-A workers``, which looks for this module).
"""

from __future__ import annotations

from jobs.settings import Settings
from workers.app import make_app

app = make_app(Settings())
