"""The ``leukolab`` command of this checkout in a child process, as hospital IT and the benchmarks run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def leukolab(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``leukolab ARGS`` (``python -m cli``: the console script may be installed from another checkout)."""
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=ROOT,
        env={**(os.environ if env is None else env), "PYTHONPATH": str(ROOT)},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
