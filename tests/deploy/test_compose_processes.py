"""The compose stack without Docker: each service's own command, run as a process on this machine.

The commands and environments come from docker-compose.yml (with .env.example as the .env, plus test
secrets). The only changes are the ones Docker would otherwise provide: the hostnames `db` and
`redis` point at this machine's Postgres and Redis (a fresh database, a Redis database number of our
own), the artefact volume is a temporary folder, and the web server gets a free port.

Then, as hospital IT would: migrate, start web and the workers, wait for /readyz, create the first
admin with the documented command, import labelled cells and start a retrain through the API, which
must reach "succeeded".
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.deploy.compose_project import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    REPO,
    as_argv,
    load_project,
    read_env_file,
    service_environment,
)
from tests.support.database import PG_SERVER

REDIS_SERVER = os.environ.get("LEUKOLAB_TEST_REDIS", "redis://127.0.0.1:6379")
TEST_DATABASE = "leukolab_test_deploy"
TEST_REDIS_DB = 5  # apart from the other tests' Redis databases
SECRETS = {
    "POSTGRES_PASSWORD": "deploytest0123456789abcdef",
    "LEUKOLAB_SECRET_KEY": "deploy-test-" + "s" * 48,
}
ADMIN, ADMIN_PASSWORD = "it-admin", "a-long-deploy-test-password-42"
WBC_CLASSES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
LABELLED_PER_CLASS, UNLABELLED_PER_CLASS = 8, 2
TRAINING_TIMEOUT_S = 300
SCORING_TIMEOUT_S = 120


# --- what must exist before this test can run --------------------------------------------------------


def _missing_retraining() -> str | None:
    """Why the retraining loop (issue 4) cannot be exercised yet, or None when it can."""
    if importlib.util.find_spec("worker") is None or importlib.util.find_spec("worker.tasks") is None:
        return "worker.tasks does not exist yet (the Celery worker of issue 4)"
    from app.main import create_app

    if "/api/v1/training-runs" not in create_app(check_schema=False).openapi()["paths"]:
        return "the /api/v1/training-runs route does not exist yet (issue 4)"
    return None


def _unreachable_servers() -> str | None:
    import psycopg
    import redis

    try:
        with psycopg.connect(f"{PG_SERVER}/postgres", connect_timeout=3):
            pass
    except psycopg.Error as error:
        return f"no Postgres at {PG_SERVER}: {error}"
    try:
        redis.Redis.from_url(f"{REDIS_SERVER}/{TEST_REDIS_DB}", socket_timeout=3).ping()
    except redis.RedisError as error:
        return f"no Redis at {REDIS_SERVER}: {error}"
    return None


# --- compose services as local processes ---------------------------------------------------------------


def local_url(url: str, service_hosts: set[str]) -> str:
    """A compose URL pointing at a compose service, pointed at this machine's server instead."""
    parts = urlsplit(url)
    if parts.hostname not in service_hosts:
        return url
    if parts.scheme.startswith("postgresql"):
        server = urlsplit(PG_SERVER)
        return urlunsplit((parts.scheme, server.netloc, f"/{TEST_DATABASE}", parts.query, ""))
    if parts.scheme.startswith("redis"):
        return urlunsplit((parts.scheme, urlsplit(REDIS_SERVER).netloc, f"/{TEST_REDIS_DB}", "", ""))
    raise AssertionError(f"no local stand-in for {url}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def executable(argv: list[str]) -> list[str]:
    """`leukolab ...` as the image runs it, the command line of this checkout (the console script may be
    installed from another one)."""
    assert argv[0] == "leukolab", argv
    return [
        sys.executable,
        "-c",
        "import sys; from cli.main import main; sys.argv[0] = 'leukolab'; main()",
        *argv[1:],
    ]


@dataclass
class Stack:
    root: Path
    services: dict
    port: int
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self, name: str) -> dict[str, str]:
        """What the container of service ``name`` would see: .env (env_file), then ``environment``."""
        hosts = set(self.services)
        compose_env = {**read_env_file(ENV_EXAMPLE), **SECRETS, **service_environment(self.services[name])}
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEUKOLAB_")}
        env.update({key: local_url(value, hosts) for key, value in compose_env.items()})
        env["LEUKOLAB_ARTEFACT_DIR"] = str(self.root / "artefacts")  # the `artefacts` volume
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def argv(self, name: str) -> list[str]:
        argv = as_argv(self.services[name]["command"])
        if "--port" in argv:
            argv[argv.index("--port") + 1] = str(self.port)
        return executable(argv)

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def run_once(self, name: str, argv: list[str] | None = None, stdin: str | None = None) -> str:
        """A one-shot container (`migrate`, `docker compose run --rm web ...`); fails on a non-zero exit."""
        done = subprocess.run(
            executable(argv) if argv else self.argv(name),
            cwd=REPO,
            env=self.environment(name),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def start(self, name: str) -> None:
        with self.log(name).open("wb") as log:
            self.processes[name] = subprocess.Popen(
                self.argv(name),
                cwd=REPO,
                env=self.environment(name),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: teardown also ends Celery's children
            )

    def check_running(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 60) -> str:
        path = self.log(name)
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def tails(self) -> str:
        return "\n".join(f"--- {name} ---\n{self.tail(name)}" for name in self.processes)

    def stop(self, *names: str) -> None:
        """SIGTERM (as `docker compose stop`), then SIGKILL after a grace period; all when no names."""
        stopping = {name: self.processes.pop(name) for name in names or list(self.processes)}
        for process in stopping.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in stopping.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _reset_servers() -> None:
    import psycopg
    import redis

    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEST_DATABASE}" WITH (FORCE)')
    redis.Redis.from_url(f"{REDIS_SERVER}/{TEST_REDIS_DB}").flushdb()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The compose project's services, none started yet, on a fresh database and Redis database."""
    reason = _unreachable_servers()
    if reason:
        pytest.skip(reason)
    import psycopg

    root = tmp_path_factory.mktemp("compose")
    _reset_servers()
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{TEST_DATABASE}"')
    (root / "artefacts").mkdir()
    services = load_project(COMPOSE_FILE, env={**read_env_file(ENV_EXAMPLE), **SECRETS})["services"]
    running = Stack(root=root, services=services, port=free_port())
    try:
        yield running
    finally:
        running.stop()
        _reset_servers()
        shutil.rmtree(root / "artefacts", ignore_errors=True)


# --- data ----------------------------------------------------------------------------------------------


def cells_zip(per_class: int, *, labelled: bool, seed: int) -> bytes:
    """Synthetic cells: a stained disc whose colour and size depend on the class, plus noise."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, name in enumerate(WBC_CLASSES):
            for n in range(per_class):
                pixels = np.full((48, 48, 3), (235, 215, 220), dtype=np.float32)
                ys, xs = np.mgrid[0:48, 0:48]
                pixels[(xs - 24) ** 2 + (ys - 24) ** 2 <= (10 + 2 * index) ** 2] = (
                    40 * index,
                    60,
                    200 - 30 * index,
                )
                pixels += rng.normal(0, 10, pixels.shape)
                png = io.BytesIO()
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(png, "PNG")
                path = f"{name}/{name}_{n:03d}.png" if labelled else f"cell_{index}_{n:03d}.png"
                archive.writestr(path, png.getvalue())
    return buffer.getvalue()


# --- the tests -------------------------------------------------------------------------------------------


def wait_until_ready(stack: Stack, client: httpx.Client, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        stack.check_running()
        try:
            status = client.get("/readyz").status_code
        except httpx.TransportError:
            status = None
        if status == 200:
            return
        time.sleep(0.5)
    pytest.fail(f"/readyz still {status} after {timeout_s} s\n{stack.tails()}")


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    """`migrate`, then `web`, then the first admin and some cells, as docs/deploy.md does it."""
    with httpx.Client(base_url=stack.base_url, timeout=30) as http:
        refuses_before_migrating(stack, http)
        assert "database at" in stack.run_once("migrate")
        stack.start("web")
        wait_until_ready(stack, http)

        # docs/deploy.md: docker compose run --rm web leukolab users create NAME --role admin --password-stdin
        stack.run_once(
            "web",
            ["leukolab", "users", "create", ADMIN, "--role", "admin", "--password-stdin"],
            stdin=ADMIN_PASSWORD + "\n",
        )
        token = http.post("/api/v1/auth/token", data={"username": ADMIN, "password": ADMIN_PASSWORD})
        assert token.status_code == 200, token.text
        http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        yield http


def refuses_before_migrating(stack: Stack, http: httpx.Client, timeout_s: float = 60) -> None:
    """On an empty database `web` exits non-zero or answers 503 on /readyz, never 200."""
    stack.start("web")
    process = stack.processes["web"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            assert process.returncode != 0, stack.tail("web")
            break
        status = _readyz(http)
        assert status != 200, "web is ready on an unmigrated database"
        if status == 503:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"web neither refused nor answered /readyz within {timeout_s} s\n{stack.tail('web')}")
    stack.stop("web")


def _readyz(http: httpx.Client) -> int | None:
    try:
        return http.get("/readyz").status_code
    except httpx.TransportError:
        return None


def test_migrate_then_web_is_ready_and_the_first_admin_can_import(stack: Stack, client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    for archive, labelled in (
        (cells_zip(LABELLED_PER_CLASS, labelled=True, seed=1), True),
        (cells_zip(UNLABELLED_PER_CLASS, labelled=False, seed=2), False),
    ):
        imported = client.post(
            "/api/v1/imports",
            params={"labelled": str(labelled).lower()},
            files={"file": ("cells.zip", archive, "application/zip")},
        )
        assert imported.status_code == 201, imported.text
        per_class = LABELLED_PER_CLASS if labelled else UNLABELLED_PER_CLASS
        assert imported.json()["imported"] == len(WBC_CLASSES) * per_class
    stack.check_running()


@pytest.mark.worker
def test_a_retrain_started_through_the_api_succeeds_on_the_workers(stack: Stack, client: httpx.Client) -> None:
    reason = _missing_retraining()
    if reason:
        pytest.skip(reason)
    for name in ("worker", "worker-score"):
        stack.start(name)
    started = client.post("/api/v1/training-runs", json={"method": "supervised", "profile": "tiny"})
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]

    deadline = time.monotonic() + TRAINING_TIMEOUT_S
    run: dict = {}
    while time.monotonic() < deadline:
        stack.check_running()
        run = client.get(f"/api/v1/training-runs/{run_id}").json()
        if run.get("status") in {"succeeded", "failed", "cancelled"}:
            break
        time.sleep(2)
    assert run.get("status") == "succeeded", f"training run {run_id}: {run}\n{stack.tails()}"

    # Promoting the new model sends the scoring to the `score` queue, i.e. to worker-score.
    model_id = run["model_version_id"]
    promoted = client.post(f"/api/v1/models/{model_id}/promote")
    assert promoted.status_code == 200, promoted.text
    deadline = time.monotonic() + SCORING_TIMEOUT_S
    scoring: dict = {}
    while time.monotonic() < deadline:
        stack.check_running()
        model = next(m for m in client.get("/api/v1/models").json() if m["id"] == model_id)
        scoring = model["scoring"]
        if scoring["status"] in {"ready", "failed"}:
            break
        time.sleep(1)
    assert scoring.get("status") == "ready", f"model {model_id} scoring: {scoring}\n{stack.tails()}"
    assert scoring["done"] == scoring["total"] == len(WBC_CLASSES) * UNLABELLED_PER_CLASS
    queue = client.get("/api/v1/queue").json()
    assert queue and all(entry["reason"] for entry in queue)
