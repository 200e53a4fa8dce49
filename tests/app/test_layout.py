"""The web package's surface: which of our packages it may import, and that torch is never one of them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# ml modules that import no torch; the web process uses only these (STYLE.md, "The shape of leukolab").
TORCH_FREE_ML = {"ml.config", "ml.images", "ml.locate"}


def imported_modules(package: Path) -> dict[str, set[str]]:
    """Every absolute module each file of ``package`` imports, at module level or inside functions."""
    found: dict[str, set[str]] = {}
    for file in sorted(package.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(file.read_text(), filename=str(file))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names if node.module == "ml")
        found[str(file.relative_to(ROOT))] = names
    return found


def test_app_imports_only_the_torch_free_ml_modules_and_never_the_worker_cli_or_bench() -> None:
    ml_used: set[str] = set()
    for file, names in imported_modules(ROOT / "app").items():
        assert not {n for n in names if n.split(".")[0] in {"worker", "cli", "bench", "torch", "torchvision"}}, file
        ml_used |= {n for n in names if n == "ml" or n.startswith("ml.")}
    assert ml_used <= TORCH_FREE_ML, f"app/ imports {sorted(ml_used - TORCH_FREE_ML)}: not in the torch-free surface"


def test_the_torch_free_ml_modules_import_no_torch() -> None:
    for file in sorted(TORCH_FREE_ML):
        names = imported_modules(ROOT / "ml")[f"{file.replace('.', '/')}.py"]
        assert not {n for n in names if n.split(".")[0] in {"torch", "torchvision"}}, file


def test_the_web_app_starts_without_torch() -> None:
    code = (
        "import sys\n"
        "from app.main import create_app\n"
        "create_app(check_schema=False)\n"
        "import app.training.routes, app.export.routes, app.cells.routes, app.labelling.routes\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'torchvision', 'worker', 'bench'})\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
