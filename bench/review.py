"""How fast the review grid's page data comes back with many cells: a generated PostgreSQL database
(cells, an active model's predictions, expert labels on a share), timed through the HTTP API.

``python -m bench.cli review --cells 100000`` (the issue's gate: under 300 ms per page at 100k cells).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Annotated

import typer

CLASSES = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "artefact"]


def fill(url: str, cells: int, labelled_share: float = 0.3, slides: int = 100) -> None:
    """Insert ``cells`` cells with predictions of one active model, and a label on ``labelled_share`` of them."""
    import psycopg

    plain = url.replace("postgresql+psycopg://", "postgresql://")
    names = "ARRAY[" + ", ".join(f"'{name}'" for name in CLASSES) + "]"
    with psycopg.connect(plain, autocommit=False) as conn:
        conn.execute(
            "INSERT INTO users (username, role, password_hash, is_active, created_at, session_version) "
            "VALUES ('bench', 'admin', 'x', true, now(), 0)"
        )
        conn.execute(
            "INSERT INTO cells (sha256, display_png, display_size, model_input, source_name, slide, random_key,"
            " created_at, awaits_adjudication) "
            "SELECT md5(i::text) || md5((i + 1)::text), '\\x89504e47'::bytea, 64, '\\x00'::bytea, 'gen/' || i, "
            f"'slide-' || (i % {slides}), random(), now(), false FROM generate_series(1, {int(cells)}) AS i"
        )
        conn.execute(
            "INSERT INTO model_versions (artefact_path, class_names, is_active, created_at, scoring_status,"
            " scoring_total, scoring_done) VALUES ('/bench/model.pt', %s, true, now(), 'ready', 0, 0)",
            (psycopg.types.json.Jsonb(CLASSES),),
        )
        conn.execute(
            "INSERT INTO predictions (model_version_id, cell_id, probs, predicted, confidence, entropy, margin,"
            " filter_outcome, created_at) "
            f"SELECT 1, id, '[]'::json, ({names})[1 + (id * 7919) % {len(CLASSES)}], random(), 0.5, 0.1,"
            " 'rejected', now() FROM cells"
        )
        conn.execute(
            "INSERT INTO labels (cell_id, user_id, kind, value, source, created_at) "
            f"SELECT id, 1, 'label', ({names})[1 + (id * 31) % {len(CLASSES)}], 'manual', now() FROM cells "
            f"WHERE random() < {float(labelled_share)}"
        )
        conn.execute("UPDATE cells SET current_label_id = labels.id FROM labels WHERE labels.cell_id = cells.id")
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE")


def measure(url: str, repeats: int = 7) -> dict:
    """Median and worst time (ms) of the grid's page requests on the database at ``url``."""
    from fastapi.testclient import TestClient

    from app import security
    from app.main import create_app

    headers = {"Authorization": f"Bearer {security.issue_token(user_id=1, session_version=0)}"}
    results: dict[str, dict] = {}
    with TestClient(create_app()) as client:

        def timed(name: str, params: dict) -> dict:
            times, body = [], None
            for _ in range(repeats):
                start = time.perf_counter()
                response = client.get("/api/v1/review", params=params, headers=headers)
                times.append((time.perf_counter() - start) * 1000)
                assert response.status_code == 200, response.text
                body = response.json()
            results[name] = {
                "median_ms": round(statistics.median(times), 1),
                "max_ms": round(max(times), 1),
                "cells": len(body["cells"]),
            }
            return body

        first = timed("predicted, first page", {"group": "predicted", "limit": 100})
        cursor = first["next_cursor"]
        for _ in range(200):  # walk 200 pages in: a cursor deep inside the first classes
            cursor = client.get(
                "/api/v1/review", params={"group": "predicted", "limit": 100, "cursor": cursor}, headers=headers
            ).json()["next_cursor"]
        timed("predicted, page 200", {"group": "predicted", "limit": 100, "cursor": cursor})
        timed("predicted, one class", {"group": "predicted", "cls": "monocyte", "limit": 100})
        timed("predicted, one sample", {"group": "predicted", "sample": "slide-7", "limit": 100})
        label_first = timed("label, first page", {"group": "label", "limit": 100})
        timed("label, one class", {"group": "label", "cls": "basophil", "limit": 100})
        timed("label, page 2", {"group": "label", "limit": 100, "cursor": label_first["next_cursor"]})
    return results


def review_command(
    cells: Annotated[int, typer.Option("--cells", help="cells to generate")] = 100_000,
    pg: Annotated[str, typer.Option("--pg", help="PostgreSQL server")] = "postgresql://postgres@127.0.0.1:5432",
    json_out: Annotated[Path | None, typer.Option("--json", help="write the results here")] = None,
) -> dict:
    """Time the review grid's page data on a generated PostgreSQL database of ``--cells`` cells."""
    import json
    import os

    import psycopg

    from app import db
    from app.settings import get_settings

    name = "leukolab_bench_review"
    with psycopg.connect(f"{pg}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{pg.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    os.environ["LEUKOLAB_DATABASE_URL"] = url
    get_settings.cache_clear()
    db.get_engine.cache_clear()
    db.get_sessionmaker.cache_clear()
    try:
        db.upgrade(url)
        start = time.perf_counter()
        fill(url, cells)
        out = {"cells": cells, "fill_s": round(time.perf_counter() - start, 1), "pages": measure(url)}
    finally:
        db.get_engine().dispose()
        with psycopg.connect(f"{pg}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    typer.echo(json.dumps(out, indent=2))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(out, indent=2) + "\n")
    return out
