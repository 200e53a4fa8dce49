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


def load_script(name: str):
    """``scripts/NAME.py`` as a module, for its functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ``bench ssl --profile tiny`` cut to a few steps: a checkpoint in seconds
TINY_SSL = ["epochs=1", "round_epochs=1", "steps_per_epoch=3", "batch_size=12", "labelled_per_batch=6", "eval_every=1"]


def tiny_ssl(data: Path, out: Path, *extra: str, method: str = "supervised") -> dict:
    """``leukolab bench ssl`` in this process on ``data`` (3 labels a class, ``TINY_SSL``); its JSON report."""
    import json

    from typer.testing import CliRunner

    from cli.main import app

    args = ["bench", "ssl", "--data", str(data), "--labels-per-class", "3", "--method", method]
    args += ["--profile", "tiny", "--json", str(out), *extra]
    for setting in TINY_SSL:
        args += ["--set", setting]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def tiny_known_and_unknown(tmp_path: Path, known_test: int = 4, unknown: int = 5) -> tuple[Path, Path, Path]:
    """Three known classes (8 train cells a class, ``known_test`` test cells), two unknown ones ("ig",
    "platelet", ``unknown`` cells a class), and a checkpoint trained on the known ones: (data, other, checkpoint)."""
    from tests.support.images import make_manifest_dataset

    data = make_manifest_dataset(tmp_path / "cells", train_per_class=8, test_per_class=known_test)
    unknown_classes = ("ig", "platelet")
    other = make_manifest_dataset(tmp_path / "other", unknown_classes, train_per_class=0, test_per_class=unknown)
    checkpoint = tmp_path / "model.pt"
    tiny_ssl(data, tmp_path / "run.json", "--checkpoint", str(checkpoint))
    return data, other, checkpoint
