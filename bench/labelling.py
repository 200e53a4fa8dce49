"""``leukolab bench labelling``: latency of next-cell and label under concurrent labellers, over HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import random
import time
from pathlib import Path
from typing import Annotated

import typer

from cli.server import start_server

BENCH_DB = "leukolab_bench"
PASSWORD = "bench-password-123"


def _percentiles(samples: list[float]) -> dict[str, float]:
    import numpy as np

    if not samples:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan"), "count": 0}
    values = np.asarray(samples) * 1000
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p95_ms": round(float(np.percentile(values, 95)), 2),
        "p99_ms": round(float(np.percentile(values, 99)), 2),
        "count": len(samples),
    }


def _fill(url: str, cells: int, users: int) -> None:
    """Create a fresh schema with ``cells`` generated cells and ``users`` cytologists."""
    from PIL import Image
    from sqlalchemy import insert

    from app import db
    from app.models import Cell, User
    from app.security import hash_password

    db.upgrade(url)
    engine = db.make_engine(url)
    tile = io.BytesIO()
    Image.new("RGB", (16, 16), (180, 120, 200)).save(tile, format="PNG")
    png = tile.getvalue()
    zeros = bytes(64 * 64 * 3 - 8)
    password_hash = hash_password(PASSWORD)
    with engine.begin() as conn:
        conn.execute(
            insert(User),
            [
                {"username": f"bench{i}", "role": "cytologist", "password_hash": password_hash, "is_active": True}
                for i in range(users)
            ],
        )
        batch = 5000
        with typer.progressbar(range(0, cells, batch), label=f"generating {cells} cells") as starts:
            for start in starts:
                rows = []
                for index in range(start, min(cells, start + batch)):
                    unique = index.to_bytes(8, "little")
                    rows.append(
                        {
                            "sha256": hashlib.sha256(unique).hexdigest(),
                            "display_png": png,
                            "display_size": 16,
                            "model_input": unique + zeros,
                            "source_name": f"bench/{index}.png",
                            "random_key": random.random(),
                        }
                    )
                conn.execute(insert(Cell), rows)
    if engine.dialect.name == "postgresql":  # fresh statistics, as autovacuum would give a live site
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    engine.dispose()


def _class_names(url: str) -> list[str]:
    from sqlalchemy import select

    from app import db
    from app.models import CellClass

    engine = db.make_engine(url)
    with engine.connect() as conn:
        names = list(conn.scalars(select(CellClass.name).where(CellClass.is_wbc)))
    engine.dispose()
    return names


async def _drive(base: str, users: int, seconds: float, classes: list[str], think_s: float, warmup_s: float) -> dict:
    import httpx

    next_latency: list[float] = []
    label_latency: list[float] = []
    acknowledged: list[int] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=users * 2)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        tokens = []
        for i in range(users):
            response = await client.post("/api/v1/auth/token", data={"username": f"bench{i}", "password": PASSWORD})
            response.raise_for_status()
            tokens.append(response.json()["access_token"])
        measure_from = time.perf_counter() + warmup_s  # connections, pools and caches warm up first
        deadline = measure_from + seconds

        async def timed(method: str, url: str, latencies: list[float], **kwargs):
            started = time.perf_counter()
            try:
                response = await client.request(method, url, **kwargs)
            except httpx.HTTPError as error:
                errors.append(f"{url.split('/')[-1]}: {error.__class__.__name__}")
                return None
            if started >= measure_from:
                latencies.append(time.perf_counter() - started)
            return response

        async def labeller(token: str) -> None:
            headers = {"Authorization": f"Bearer {token}"}
            while time.perf_counter() < deadline:
                response = await timed("GET", "/api/v1/queue/next", next_latency, headers=headers)
                if response is None or response.status_code != 200:
                    errors.append(f"next: HTTP {response.status_code}") if response is not None else None
                    continue
                cell_id = response.json()["cell_id"]
                await asyncio.sleep(random.uniform(0.5, 1.5) * think_s)  # looking at the cell
                response = await timed(
                    "POST",
                    f"/api/v1/cells/{cell_id}/labels",
                    label_latency,
                    json={"label": random.choice(classes)},
                    headers=headers,
                )
                if response is not None and response.status_code == 201:
                    acknowledged.append(response.json()["id"])
                elif response is not None:
                    errors.append(f"label: HTTP {response.status_code}")

        started = time.perf_counter()
        await asyncio.gather(*(labeller(token) for token in tokens))
        elapsed = time.perf_counter() - max(started, measure_from)
    return {
        "next": _percentiles(next_latency),
        "label": _percentiles(label_latency),
        "requests_per_s": round((len(next_latency) + len(label_latency)) / elapsed, 1),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:10],
        "acknowledged": acknowledged,
    }


def labelling_command(
    json_out: Annotated[Path, typer.Option("--json", help="where to write the report")],
    cells: Annotated[int, typer.Option(help="generated cells")] = 100_000,
    users: Annotated[int, typer.Option(help="concurrent simulated labellers")] = 20,
    seconds: Annotated[float, typer.Option(help="how long to drive the server")] = 30.0,
    database_url: Annotated[
        str | None, typer.Option(help="use this database instead of creating leukolab_bench on local Postgres")
    ] = None,
    server_workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 2,
    think_ms: Annotated[
        float,
        typer.Option(help="mean pause between seeing a cell and labelling it; 0 drives the server flat out"),
    ] = 250.0,
    warmup_s: Annotated[float, typer.Option(help="seconds of driving before latencies are recorded")] = 3.0,
) -> None:
    """Drive the web server with concurrent labellers and report latency percentiles and lost labels."""
    from sqlalchemy import func, select

    from app import db
    from app.models import Label

    if database_url is None:
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {BENCH_DB}")
        database_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{BENCH_DB}"
    _fill(database_url, cells, users)

    try:
        server, base = start_server(database_url, workers=server_workers)
    except RuntimeError as error:
        raise typer.Exit(2) from error
    try:
        classes = _class_names(database_url)
        typer.echo(f"driving {base} with {users} labellers for {seconds:.0f} s")
        result = asyncio.run(_drive(base, users, seconds, classes, think_ms / 1000, warmup_s))
    finally:
        server.terminate()
        server.wait(timeout=30)

    acknowledged = result.pop("acknowledged")
    engine = db.make_engine(database_url)
    with engine.connect() as conn:
        stored = conn.scalar(select(func.count(Label.id)).where(Label.id.in_(acknowledged))) if acknowledged else 0
    engine.dispose()
    result.update(
        labels_acknowledged=len(acknowledged),
        lost_labels=len(acknowledged) - stored,
        cells=cells,
        users=users,
        seconds=seconds,
        think_ms=think_ms,
        warmup_s=warmup_s,
        server_workers=server_workers,
    )
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2))
    typer.echo(json.dumps(result, indent=2))
