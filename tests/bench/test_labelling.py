"""`leukolab bench labelling` on a tiny load, through the command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.support.cli import leukolab
from tests.support.database import create_pg_database, drop_pg_database


def test_bench_labelling_reports_latencies_and_loses_no_label(tmp_path: Path) -> None:
    name = f"leukolab_test_bench_labelling_{os.getpid()}"
    url = create_pg_database(name)
    out = tmp_path / "labelling.json"
    try:
        result = leukolab(
            *("bench", "labelling", "--json", str(out), "--database-url", url, "--cells", "200", "--users", "2"),
            *("--seconds", "2", "--think-ms", "0", "--warmup-s", "0.5", "--server-workers", "1"),
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    finally:
        drop_pg_database(name)
    report = json.loads(out.read_text())
    assert (report["cells"], report["users"], report["server_workers"]) == (200, 2, 1)
    assert report["errors"] == 0, report["error_samples"]
    assert report["labels_acknowledged"] > 0 and report["lost_labels"] == 0
    assert report["next"]["count"] > 0 and report["label"]["count"] > 0
    assert 0 < report["next"]["p50_ms"] <= report["next"]["p95_ms"] <= report["next"]["p99_ms"]
    assert report["requests_per_s"] > 0
