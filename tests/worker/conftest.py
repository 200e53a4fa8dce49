"""A real Celery worker process on this machine's Redis and PostgreSQL, and generated cells."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from app.db import session_scope
from app.labelling.service import add_label
from app.models import User
from tests.support.database import use_database
from tests.support.factories import make_user, new_cell
from tests.support.images import make_cell_image

ROOT = Path(__file__).resolve().parents[2]
REDIS_DB = os.environ.get("LEUKOLAB_TEST_REDIS_DB", "3")
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
CLASSES = ("neutrophil", "lymphocyte", "eosinophil")


class WorkerProcess:
    """``leukolab worker`` in a subprocess, its log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path, queues: str = "train,score") -> None:
        self.log_path = log_path
        self.log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli", "worker", "--queues", queues, "--loglevel", "INFO"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.output()[-3000:]}")
            if " ready." in self.output():
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready in {timeout} s:\n{self.output()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL, as the OOM killer would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


@pytest.fixture
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    return REDIS_URL


@pytest.fixture
def loop_env(pg_db_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Settings shared by this test process (the web side) and the worker processes."""
    values = {
        "redis_url": redis_url,
        "artefact_dir": str(tmp_path / "artefacts"),
        "broker_dir": str(tmp_path / "broker"),
    }
    use_database(pg_db_url, monkeypatch, **values)
    return {
        **os.environ,
        "LEUKOLAB_DATABASE_URL": pg_db_url,
        **{f"LEUKOLAB_{k.upper()}": v for k, v in values.items()},
    }


def _workers(env: dict[str, str], tmp_path: Path) -> Iterator:
    started: list[WorkerProcess] = []

    def start(queues: str = "train,score") -> WorkerProcess:
        worker = WorkerProcess(env, tmp_path / f"worker-{len(started)}.log", queues)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def start_worker(loop_env: dict[str, str], tmp_path: Path) -> Iterator:
    """Start workers on Redis on demand; all are stopped at teardown."""
    yield from _workers(loop_env, tmp_path)


@pytest.fixture
def fs_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The embedded default of ``scripts/demo``: SQLite, no Redis, the filesystem broker."""
    from app import db
    from tests.support.database import reset_caches

    url = f"sqlite:///{tmp_path / 'leukolab.db'}"
    db.upgrade(url)
    monkeypatch.delenv("LEUKOLAB_REDIS_URL", raising=False)
    values = {"artefact_dir": str(tmp_path / "artefacts"), "broker_dir": str(tmp_path / "broker")}
    use_database(url, monkeypatch, **values)
    env = {k: v for k, v in os.environ.items() if k != "LEUKOLAB_REDIS_URL"}
    yield {**env, "LEUKOLAB_DATABASE_URL": url, **{f"LEUKOLAB_{k.upper()}": v for k, v in values.items()}}
    reset_caches()


@pytest.fixture
def start_worker_fs(fs_env: dict[str, str], tmp_path: Path) -> Iterator:
    yield from _workers(fs_env, tmp_path)


@pytest.fixture
def client(loop_env: dict[str, str]) -> Iterator[TestClient]:
    from app.main import create_app

    with TestClient(create_app()) as client:
        yield client


def insert_cells(per_class: dict[str, int], unlabelled: int, labeller: str = "expert", seed: int = 0) -> dict:
    """Generated cells: ``per_class`` labelled by ``labeller`` (an admin), plus unlabelled ones
    drawn from the same classes. Returns ``{"labelled": {cell_id: class}, "unlabelled": [ids]}``."""
    user_id = make_user(labeller, role="admin")
    rng = random.Random(seed)
    labelled: dict[int, str] = {}
    unlabelled_ids: list[int] = []
    with session_scope() as session:
        user = session.get(User, user_id)
        plan = [(name, True) for name, n in per_class.items() for _ in range(n)]
        plan += [(CLASSES[i % len(CLASSES)], False) for i in range(unlabelled)]
        for index, (name, is_labelled) in enumerate(plan):
            image = make_cell_image(seed * 10_007 + index, 64, CLASSES.index(name))
            cell = new_cell(image, source_name=f"generated/{name}-{index}.png", random_key=rng.random())
            session.add(cell)
            session.flush()
            if is_labelled:
                add_label(session=session, user=user, cell_id=cell.id, value=name, source="import")
                labelled[cell.id] = name
            else:
                unlabelled_ids.append(cell.id)
    return {"labelled": labelled, "unlabelled": unlabelled_ids}


def wait_for(predicate, timeout: float = 120, interval: float = 0.2, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")
