"""The worker's Celery app: the web process's configuration (``app.training.broker``) plus the
task modules. No torch here; the tasks import it."""

from __future__ import annotations

from app.training.broker import make_celery

celery_app = make_celery(include=["worker.tasks"])
