"""docs/deploy.md: its compose snippets merge onto docker-compose.yml, and its restore procedure works.

The restore test runs the documented `pg_dump` / `dropdb` / `createdb` / `pg_restore` and `tar`
commands against this machine's Postgres instead of the `db` container, and checks that leukolab comes
back with its users and cells.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.deploy.compose_project import COMPOSE_FILE, REPO, example_env, load_project
from tests.support import cli
from tests.support.database import PG_SERVER

DOCS = REPO / "docs" / "deploy.md"
SECRETS = {"POSTGRES_PASSWORD": "0123456789abcdef", "LEUKOLAB_SECRET_KEY": "k" * 64}
RESTORE_DATABASE = "leukolab_test_deploy_restore"


def documented_overrides() -> dict[str, str]:
    """The ```yaml blocks of docs/deploy.md that start with `# docker-compose.override.yml: PURPOSE`."""
    blocks = re.findall(r"```yaml\n(# docker-compose\.override\.yml: ([^\n]+)\n.*?)```", DOCS.read_text(), re.S)
    return {purpose: block for block, purpose in blocks}


def with_override(block: str, tmp_path: Path) -> dict:
    override = tmp_path / "docker-compose.override.yml"
    override.write_text(block)
    return load_project(COMPOSE_FILE, override, env=example_env(**SECRETS))["services"]


def test_the_docs_have_the_overrides_this_file_checks() -> None:
    assert set(documented_overrides()) == {
        "TLS with Caddy",
        "an existing Postgres and Redis instead of the bundled ones",
    }


def test_caddy_override_puts_web_behind_the_proxy(tmp_path: Path) -> None:
    services = with_override(documented_overrides()["TLS with Caddy"], tmp_path)
    assert "ports" not in services["web"]
    assert services["caddy"]["depends_on"]["web"]["condition"] == "service_healthy"
    assert set(services) - {"caddy"} == set(load_project(COMPOSE_FILE, env=example_env(**SECRETS))["services"])


def test_external_services_override_leaves_the_bundled_ones_out(tmp_path: Path) -> None:
    services = with_override(
        documented_overrides()["an existing Postgres and Redis instead of the bundled ones"], tmp_path
    )
    assert services["db"]["profiles"] == ["bundled"] and services["redis"]["profiles"] == ["bundled"]
    for name in ("migrate", "web", "worker", "worker-score"):
        depends_on = services[name].get("depends_on") or {}
        assert not {"db", "redis"} & set(depends_on), name
    for name in ("web", "worker", "worker-score"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


# --- backup and restore ----------------------------------------------------------------------------------


def leukolab(*args: str, database: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEUKOLAB_")}
    env["LEUKOLAB_DATABASE_URL"] = f"{PG_SERVER.replace('postgresql://', 'postgresql+psycopg://')}/{database}"
    return cli.leukolab(*args, env=env, stdin=stdin, timeout=120)


def pg(*argv: str, stdin: bytes | None = None, stdout: Path | None = None) -> None:
    """A Postgres client tool against the test server, as `docker compose exec -T db TOOL` runs it."""
    server = re.match(r"postgresql://(?:(?P<user>[^@:]+)@)?(?P<host>[^:/]+)(?::(?P<port>\d+))?", PG_SERVER)
    assert server, PG_SERVER
    connection = ["-h", server["host"], "-p", server["port"] or "5432", "-U", server["user"] or "postgres"]
    tool, *rest = argv
    with open(stdout, "wb") if stdout else open(os.devnull, "wb") as out:
        done = subprocess.run([tool, *connection, *rest], input=stdin, stdout=out, stderr=subprocess.PIPE, timeout=120)
    assert done.returncode == 0, f"{tool}: {done.stderr.decode()}"


@pytest.fixture
def restore_database() -> str:
    if not all(shutil.which(tool) for tool in ("pg_dump", "pg_restore", "dropdb", "createdb")):
        pytest.skip("the Postgres client tools are not installed")
    try:
        pg("dropdb", "--if-exists", "--force", RESTORE_DATABASE)
    except AssertionError as error:
        pytest.skip(f"no Postgres at {PG_SERVER}: {error}")
    pg("createdb", RESTORE_DATABASE)
    yield RESTORE_DATABASE
    pg("dropdb", "--if-exists", "--force", RESTORE_DATABASE)


def test_the_documented_backup_restores_users_cells_and_models(restore_database: str, tmp_path: Path) -> None:
    docs = DOCS.read_text()
    # the commands below are the documented ones; fail here if the docs change and this test does not
    for documented in (
        "pg_dump -U leukolab -d leukolab --format=custom",
        "dropdb -U leukolab --force leukolab",
        "createdb -U leukolab leukolab",
        "pg_restore -U leukolab -d leukolab --no-owner --exit-on-error",
        'tar czf "/backup/artefacts-$stamp.tar.gz" -C /data/artefacts .',
        "find /data/artefacts -mindepth 1 -delete",
        "tar xzf /backup/artefacts-$stamp.tar.gz -C /data/artefacts",
    ):
        assert documented in docs, documented

    database = restore_database
    assert leukolab("db", "upgrade", database=database).returncode == 0
    created = leukolab(
        "users",
        "create",
        "alice",
        "--role",
        "admin",
        "--password-stdin",
        database=database,
        stdin="a-long-restore-test-password\n",
    )
    assert created.returncode == 0, created.stderr
    images = tmp_path / "cells"
    for index, name in enumerate(("neutrophil", "lymphocyte", "monocyte")):
        (images / name).mkdir(parents=True)
        Image.new("RGB", (24, 24), (40 * index, 90, 200)).save(images / name / "a.png")
    imported = leukolab("import", str(images), "--labelled", database=database)
    assert imported.returncode == 0, imported.stderr

    artefacts = tmp_path / "artefacts"
    (artefacts / "models").mkdir(parents=True)
    (artefacts / "models" / "v1.pt").write_bytes(b"weights")

    # backup
    dump = tmp_path / "leukolab.dump"
    pg("pg_dump", "-d", database, "--format=custom", stdout=dump)
    archive = tmp_path / "artefacts.tar.gz"
    subprocess.run(["tar", "czf", str(archive), "-C", str(artefacts), "."], check=True)

    # disaster
    pg("dropdb", "--force", database)
    (artefacts / "models" / "v1.pt").write_bytes(b"overwritten")
    (artefacts / "stray").write_text("left over")

    # restore, as documented: drop, create, pg_restore from standard input; empty the volume, untar
    pg("dropdb", "--if-exists", "--force", database)
    pg("createdb", database)
    pg("pg_restore", "-d", database, "--no-owner", "--exit-on-error", stdin=dump.read_bytes())
    subprocess.run(["find", str(artefacts), "-mindepth", "1", "-delete"], check=True)
    subprocess.run(["tar", "xzf", str(archive), "-C", str(artefacts)], check=True)

    checked = leukolab("db", "check", database=database)
    assert checked.returncode == 0, checked.stderr
    assert "alice" in leukolab("users", "list", database=database).stdout
    assert (artefacts / "models" / "v1.pt").read_bytes() == b"weights"
    assert not (artefacts / "stray").exists()
    import psycopg

    with psycopg.connect(f"{PG_SERVER}/{database}") as conn:
        assert conn.execute("SELECT count(*) FROM cells").fetchone() == (3,)
        assert conn.execute("SELECT count(*) FROM labels").fetchone() == (3,)
