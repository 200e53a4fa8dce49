"""``leukolab worker``: start a Celery worker on the configured broker and database.

Imports nothing heavy at module level: the leukolab CLI registers this command at start-up.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Annotated

import typer

log = logging.getLogger("leukolab.worker")
MIGRATION_WAIT_S = 120


def _wait_for_migrations() -> None:
    """Workers wait until the schema is migrated (the web's start-up runs the migrations)."""
    from app import db
    from app.errors import LeukolabError

    deadline = time.monotonic() + MIGRATION_WAIT_S
    while True:
        try:
            db.check_migrated()
            return
        except LeukolabError as error:
            if time.monotonic() > deadline:
                raise typer.Exit(1) from error
            log.warning("waiting for the database: %s", error.message)
            time.sleep(2)


def reconcile_runs() -> list[int]:
    """A train worker starting up fails the runs left "running" by a worker that died."""
    from app.db import session_scope
    from app.training.service import fail_orphaned_runs

    with session_scope() as session:
        ids = fail_orphaned_runs(
            session=session,
            reason="the worker running this run stopped (killed, crashed or restarted); start a new run",
        )
    if ids:
        log.warning("marked failed the runs a dead worker left running: %s", ids)
    return ids


def worker_command(
    queues: Annotated[str, typer.Option(help="comma-separated queues: train (one GPU worker), score (any number)")] = (
        "train,score"
    ),
    concurrency: Annotated[int, typer.Option(help="parallel tasks; keep 1 for a train worker")] = 1,
    loglevel: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING")] = "INFO",
) -> None:
    """Run a Celery worker for the retraining loop (Redis, or the filesystem broker under ./var)."""
    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = set(names) - {"train", "score"}
    if not names or unknown:
        raise typer.BadParameter(f"unknown queues {sorted(unknown)}: use train and/or score")
    _wait_for_migrations()
    from ml.device import device_name, fork_safe_device_name

    # A prefork pool's children must find CUDA uninitialised, so only a solo worker probes it here.
    described = device_name() if concurrency == 1 else fork_safe_device_name()
    log.info("leukolab worker: queues %s, concurrency %s, device %s", ",".join(names), concurrency, described)
    if "train" in names:
        reconcile_runs()
    from worker.celery_app import celery_app

    argv = [
        "worker",
        "--queues",
        ",".join(names),
        "--concurrency",
        str(concurrency),
        "--loglevel",
        loglevel.upper(),
        "--hostname",
        f"leukolab-{'-'.join(names)}-{os.getpid()}@{socket.gethostname()}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        # One task at a time in the worker process itself: CUDA and fork do not mix, and a
        # killed worker then takes its run with it (its heartbeats stop).
        "--pool",
        "solo" if concurrency == 1 else "prefork",
    ]
    celery_app.worker_main(argv)
