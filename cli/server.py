"""The web app in a child process on a free port, ready when /readyz answers: for the benchmarks that drive it
over HTTP and for the tests that drive it with a browser."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    database_url: str, *, workers: int = 1, env: dict[str, str] | None = None, timeout_s: float = 60
) -> tuple[subprocess.Popen, str]:
    """Start the app under uvicorn on a free port and wait until /readyz answers 200."""
    import httpx

    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:create_app",
            "--factory",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, **(env or {}), "LEUKOLAB_DATABASE_URL": database_url},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the server did not become ready in {timeout_s:.0f} s")
