"""The Celery client the web process enqueues with, by task name: no task code and no torch here.

``worker/celery_app.py`` builds the worker from the same configuration and registers the tasks,
so arrows point one way (worker → app). Without ``LEUKOLAB_REDIS_URL`` the broker is kombu's
filesystem transport under ``settings.broker_dir``, which needs no Redis (the embedded demo).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from celery import Celery

from app.errors import ServiceUnavailable
from app.settings import Settings, get_settings

TASK_RETRAIN = "leukolab.retrain"
TASK_SCORE_ALL = "leukolab.score_all"
TASK_SCORE = "leukolab.score"
TASK_SCORE_NEW = "leukolab.score_new"
TASK_REFRESH_QUEUE = "leukolab.refresh_queue"
TASK_COLD_START = "leukolab.cold_start_queue"
QUEUE_TRAIN = "train"
QUEUE_SCORE = "score"
TASK_QUEUES = {
    TASK_RETRAIN: QUEUE_TRAIN,
    TASK_SCORE_ALL: QUEUE_SCORE,
    TASK_SCORE: QUEUE_SCORE,
    TASK_SCORE_NEW: QUEUE_SCORE,
    TASK_REFRESH_QUEUE: QUEUE_SCORE,
    TASK_COLD_START: QUEUE_SCORE,
}
BROKER_CHECK_TIMEOUT_S = 1.0
# A paper-profile run on a GPU can take hours: Redis must not hand its message to another
# worker meanwhile (the task also refuses a run that is no longer queued).
VISIBILITY_TIMEOUT_S = 12 * 3600


def filesystem_folders(broker_dir: Path) -> tuple[Path, Path, Path]:
    """The message, processed and control (exchange table) folders of the filesystem transport."""
    return broker_dir / "queue", broker_dir / "processed", broker_dir / "control"


def celery_config(settings: Settings) -> dict:
    """Celery settings shared by the web client and the worker."""
    config: dict = {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": QUEUE_SCORE,
        "task_routes": {name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_backend": None,  # state lives in the database
        "task_ignore_result": True,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }
    if settings.redis_url:
        config["broker_url"] = settings.redis_url
        config["broker_transport_options"] = {
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            "socket_connect_timeout": BROKER_CHECK_TIMEOUT_S,
            "socket_timeout": 5,
        }
    else:
        queue, processed, control = filesystem_folders(Path(settings.broker_dir).resolve())
        config["broker_url"] = "filesystem://"
        config["broker_transport_options"] = {
            "data_folder_in": str(queue),
            "data_folder_out": str(queue),
            "processed_folder": str(processed),
            "control_folder": str(control),  # kombu's default is ./control in the working directory
            "store_processed": False,
        }
    return config


def make_celery(settings: Settings | None = None, include: list[str] | None = None) -> Celery:
    """A Celery app configured from ``settings``; ``include`` names task modules (worker only)."""
    settings = settings or get_settings()
    if not settings.redis_url:
        for folder in filesystem_folders(Path(settings.broker_dir).resolve()):
            folder.mkdir(parents=True, exist_ok=True)
    app = Celery("leukolab", include=include or [])
    app.conf.update(celery_config(settings))
    return app


@lru_cache(maxsize=4)
def _client(redis_url: str | None, broker_dir: str) -> Celery:
    return make_celery(get_settings())


def client() -> Celery:
    """The web process's Celery client for the current settings."""
    settings = get_settings()
    return _client(settings.redis_url, str(settings.broker_dir))


def check_broker(*, blocked: str = "training cannot start now") -> None:
    """Raise ``ServiceUnavailable`` unless the broker answers within a second."""
    settings = get_settings()
    if not settings.redis_url:
        return  # the filesystem transport is a local folder
    import redis

    try:
        redis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=BROKER_CHECK_TIMEOUT_S,
            socket_timeout=BROKER_CHECK_TIMEOUT_S,
        ).ping()
    except redis.RedisError as error:
        raise ServiceUnavailable(
            f"the task broker (Redis) is unreachable, so {blocked}: {error}. "
            "Labelling goes on; try again once Redis is back."
        ) from error


def enqueue(task: str, *args: object) -> None:
    """Send ``task`` by name to its queue. Call only after the commit that created its rows."""
    try:
        client().send_task(
            task,
            args=list(args),
            queue=TASK_QUEUES[task],
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
        )
    except Exception as error:  # noqa: BLE001 - kombu raises many kinds of connection errors
        raise ServiceUnavailable(f"could not enqueue {task}: the task broker is unreachable ({error})") from error
