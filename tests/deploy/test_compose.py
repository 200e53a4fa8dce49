"""Static checks of the Docker deployment: compose files, .env.example, Dockerfile and .dockerignore.

No Docker engine runs here, so these read the files the way Compose and BuildKit would and check
them against the code they start: the CLI commands, the settings, the health endpoints.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import DEV_SECRET_KEY, Settings
from tests.deploy.compose_project import (
    COMPOSE_FILE,
    CPU_OVERRIDE_FILE,
    DOCKERFILE,
    DOCKERIGNORE,
    ENV_EXAMPLE,
    REPO,
    MissingVariable,
    as_argv,
    documented_names,
    example_env,
    load_project,
    read_env_file,
    service_environment,
    variables_used,
)

SECRETS = {"POSTGRES_PASSWORD": "0123456789abcdef0123456789abcdef", "LEUKOLAB_SECRET_KEY": "k" * 64}
APP_SERVICES = ("migrate", "web", "worker", "worker-score")
LONG_RUNNING = ("db", "redis", "web", "worker", "worker-score")
SETTING_NAMES = {f"LEUKOLAB_{name.upper()}" for name in Settings.model_fields}


@pytest.fixture(scope="module")
def project() -> dict:
    return load_project(COMPOSE_FILE, env=example_env(**SECRETS))


@pytest.fixture(scope="module")
def services(project: dict) -> dict:
    return project["services"]


@pytest.fixture(scope="module")
def cpu_services() -> dict:
    return load_project(COMPOSE_FILE, CPU_OVERRIDE_FILE, env=example_env(**SECRETS))["services"]


def depends(service: dict) -> dict[str, str]:
    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):
        return {name: "service_started" for name in depends_on}
    return {name: spec.get("condition", "service_started") for name, spec in depends_on.items()}


def gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices") or []


def mounts(service: dict) -> dict[str, str]:
    """target path -> volume name, for named-volume mounts in short syntax."""
    result = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        result[target] = source
    return result


def healthcheck_text(service: dict) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else test


# --- services -------------------------------------------------------------------------------------------


def test_the_services_are_the_ones_the_docs_describe(services: dict) -> None:
    assert set(services) == {"db", "redis", "migrate", "web", "worker", "worker-score"}


def test_db_is_postgres_16_on_a_named_volume_with_pg_isready(project: dict, services: dict) -> None:
    db = services["db"]
    assert re.fullmatch(r"postgres:16([.-][\w.-]+)?", db["image"])
    data_volume = mounts(db)["/var/lib/postgresql/data"]
    assert data_volume in project["volumes"]
    assert "pg_isready" in healthcheck_text(db)
    assert db["environment"]["POSTGRES_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]
    assert "ports" not in db, "the database must not be published on the network"


def test_redis_is_redis_7_with_aof_persistence_and_a_healthcheck(project: dict, services: dict) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    command = as_argv(redis["command"])
    assert command[command.index("--appendonly") + 1] == "yes"
    assert mounts(redis)["/data"] in project["volumes"], "the AOF file must live on a named volume"
    assert "redis-cli ping" in healthcheck_text(redis)
    assert "ports" not in redis


def test_migrate_runs_the_migrations_once_when_the_database_is_healthy(services: dict) -> None:
    migrate = services["migrate"]
    assert as_argv(migrate["command"]) == ["leukolab", "db", "upgrade"]
    assert depends(migrate) == {"db": "service_healthy"}
    assert migrate["restart"] == "no"


def test_web_waits_for_the_database_and_the_migrations(services: dict) -> None:
    web_depends = depends(services["web"])
    assert web_depends["db"] == "service_healthy"
    assert web_depends["migrate"] == "service_completed_successfully"


def test_web_healthcheck_asks_readyz_on_the_port_it_serves(services: dict) -> None:
    web = services["web"]
    argv = as_argv(web["command"])
    assert argv[:2] == ["leukolab", "serve"]
    port = argv[argv.index("--port") + 1]
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert f"http://127.0.0.1:{port}/readyz" in healthcheck_text(web)
    assert web["ports"] == [f"0.0.0.0:8000:{port}"]


def test_web_healthcheck_fails_on_a_503(services: dict) -> None:
    """The image has no curl; the check is Python's urlopen, which raises on any 4xx/5xx."""
    test = services["web"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert "urllib.request.urlopen(" in test[3]
    compile(test[3], "healthcheck", "exec")


def test_worker_takes_the_train_queue_one_task_at_a_time_on_the_gpu(services: dict) -> None:
    worker = services["worker"]
    argv = as_argv(worker["command"])
    assert argv[:2] == ["leukolab", "worker"]
    assert argv[argv.index("--queues") + 1] == "train"
    assert argv[argv.index("--concurrency") + 1] == "1"
    assert gpu_devices(worker) == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert worker["build"]["args"]["TORCH_VARIANT"] == "cuda"


def test_score_workers_are_cpu_only_and_scalable(services: dict) -> None:
    score = services["worker-score"]
    argv = as_argv(score["command"])
    assert argv[:2] == ["leukolab", "worker"]
    assert argv[argv.index("--queues") + 1] == "score"
    assert gpu_devices(score) == []
    assert score["build"]["args"]["TORCH_VARIANT"] == "cpu"
    # `--scale worker-score=3` fails on a fixed container name or a published port
    assert "container_name" not in score
    assert "ports" not in score


def test_only_the_train_worker_reserves_the_gpu(services: dict) -> None:
    assert [name for name, service in services.items() if gpu_devices(service)] == ["worker"]


@pytest.mark.parametrize("name", ["worker", "worker-score"])
def test_workers_start_after_the_migrations(services: dict, name: str) -> None:
    conditions = depends(services[name])
    assert conditions["migrate"] == "service_completed_successfully"
    assert conditions["redis"] == "service_healthy"


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_services_come_back_after_a_reboot(services: dict, name: str) -> None:
    assert services[name]["restart"] == "unless-stopped"


def test_postgres_data_and_artefacts_are_named_volumes_shared_by_the_app(project: dict, services: dict) -> None:
    artefact_dir = service_environment(services["web"])["LEUKOLAB_ARTEFACT_DIR"]
    assert "artefacts" in project["volumes"] and "pgdata" in project["volumes"]
    for name in ("web", "worker", "worker-score"):
        assert mounts(services[name]).get(artefact_dir) == "artefacts", name
        assert service_environment(services[name])["LEUKOLAB_ARTEFACT_DIR"] == artefact_dir


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_run_in_production_mode_with_the_bundled_services(services: dict, name: str) -> None:
    environment = service_environment(services[name])
    assert environment["LEUKOLAB_MODE"] == "production"
    assert environment["LEUKOLAB_SECRET_KEY"] == SECRETS["LEUKOLAB_SECRET_KEY"]
    assert environment["LEUKOLAB_DATABASE_URL"] == (
        f"postgresql+psycopg://leukolab:{SECRETS['POSTGRES_PASSWORD']}@db:5432/leukolab"
    )
    assert environment["LEUKOLAB_REDIS_URL"].startswith("redis://redis:6379/")
    Settings(
        **{
            key.removeprefix("LEUKOLAB_").lower(): value
            for key, value in environment.items()
            if key.startswith("LEUKOLAB_")
        }
    )


def test_an_existing_postgres_and_redis_replace_the_bundled_ones() -> None:
    url = "postgresql+psycopg://lab:pw@pg.hospital.local:5432/leukolab"
    env = example_env(**SECRETS, LEUKOLAB_DATABASE_URL=url, LEUKOLAB_REDIS_URL="redis://cache.local:6379/3")
    services = load_project(COMPOSE_FILE, env=env)["services"]
    for name in APP_SERVICES:
        environment = service_environment(services[name])
        assert environment["LEUKOLAB_DATABASE_URL"] == url
        assert environment["LEUKOLAB_REDIS_URL"] == "redis://cache.local:6379/3"


# --- secrets --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_compose_refuses_to_start_without_each_secret(secret: str) -> None:
    env = example_env(**{**SECRETS, secret: ""})
    with pytest.raises(MissingVariable) as refused:
        load_project(COMPOSE_FILE, env=env)
    assert refused.value.name == secret


def test_env_example_ships_without_secrets() -> None:
    values = read_env_file(ENV_EXAMPLE)
    assert values["POSTGRES_PASSWORD"] == "" and values["LEUKOLAB_SECRET_KEY"] == ""
    with pytest.raises(MissingVariable):
        load_project(COMPOSE_FILE, env=values)


@pytest.mark.parametrize("key", [DEV_SECRET_KEY, "short-but-not-default"])
def test_production_mode_refuses_a_default_or_short_secret_key(key: str) -> None:
    with pytest.raises(ValidationError, match="LEUKOLAB_SECRET_KEY"):
        Settings(mode="production", secret_key=key)


# --- settings and variables ------------------------------------------------------------------------


def test_every_leukolab_name_in_the_deployment_files_is_a_setting(services: dict) -> None:
    used = variables_used(COMPOSE_FILE) | variables_used(CPU_OVERRIDE_FILE) | documented_names(ENV_EXAMPLE)
    for service in services.values():
        used |= set(service_environment(service))
    unknown = {name for name in used if name.startswith("LEUKOLAB_")} - SETTING_NAMES
    assert not unknown, f"not fields of app.settings.Settings: {sorted(unknown)}"


def test_every_setting_is_listed_in_env_example() -> None:
    missing = SETTING_NAMES - documented_names(ENV_EXAMPLE)
    assert not missing, f"add to .env.example (commented with its default if optional): {sorted(missing)}"


def test_every_variable_compose_reads_is_documented_in_env_example() -> None:
    used = variables_used(COMPOSE_FILE) | variables_used(CPU_OVERRIDE_FILE)
    missing = used - documented_names(ENV_EXAMPLE)
    assert not missing, f"document in .env.example: {sorted(missing)}"


def test_env_example_values_are_valid_settings() -> None:
    values = {k: v for k, v in read_env_file(ENV_EXAMPLE).items() if k.startswith("LEUKOLAB_") and v}
    settings = Settings(**{k.removeprefix("LEUKOLAB_").lower(): v for k, v in values.items()})
    assert settings.cookie_secure is True


# --- entry points ---------------------------------------------------------------------------------------


def _service_commands() -> list[tuple[str, list[str]]]:
    services = load_project(COMPOSE_FILE, env=example_env(**SECRETS))["services"]
    return [(name, as_argv(services[name]["command"])) for name in APP_SERVICES]


# docs/deploy.md tells hospital IT to run these inside the web container.
DOCUMENTED_COMMANDS = [
    ("first admin", ["leukolab", "users", "create", "alice", "--role", "admin", "--password-stdin"]),
    ("wait for the database", ["leukolab", "db", "check"]),
]


@pytest.mark.parametrize(("what", "argv"), _service_commands() + DOCUMENTED_COMMANDS, ids=lambda v: str(v))
def test_every_command_is_a_leukolab_entry_point_with_those_options(what: str, argv: list[str]) -> None:
    """The command with `--help` appended: Click rejects an unknown subcommand or option, then prints help."""
    from typer.testing import CliRunner

    from cli.main import app as cli

    assert argv[0] == "leukolab"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["leukolab"] == "cli.main:main"
    result = CliRunner().invoke(cli, [*argv[1:], "--help"])
    assert result.exit_code == 0, f"{what}: `{' '.join(argv)}` is not a valid command:\n{result.output}"


# --- CPU-only variant --------------------------------------------------------------------------------------


def test_cpu_override_removes_the_gpu_reservation(cpu_services: dict) -> None:
    assert all(not gpu_devices(service) for service in cpu_services.values())
    worker = cpu_services["worker"]
    assert worker["build"]["args"]["TORCH_VARIANT"] == "cpu"
    assert worker["image"] == cpu_services["web"]["image"], "a CPU-only site needs one application image"
    assert as_argv(worker["command"]) == ["leukolab", "worker", "--queues", "train", "--concurrency", "1"]


def test_cpu_override_leaves_everything_else_alone(services: dict, cpu_services: dict) -> None:
    for name in set(services) - {"worker"}:
        assert cpu_services[name] == services[name], name
    for key in ("depends_on", "volumes", "environment", "restart"):
        assert cpu_services["worker"][key] == services["worker"][key], key


# --- Dockerfile -------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (instruction, _) in enumerate(instructions) if instruction == "FROM")
    return instructions[last_from:]


def test_the_image_runs_as_a_non_root_user() -> None:
    users = [args for instruction, args in final_stage(dockerfile_instructions()) if instruction == "USER"]
    assert users, "the final stage sets no USER"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_dependencies_are_installed_before_the_code_is_copied() -> None:
    instructions = dockerfile_instructions()
    copies = [(i, args) for i, (instruction, args) in enumerate(instructions) if instruction == "COPY"]
    metadata = next(i for i, args in copies if args.split()[0] == "pyproject.toml")
    code = next(i for i, args in copies if args.split()[0] == ".")
    installs = [
        i for i, (instruction, args) in enumerate(instructions) if instruction == "RUN" and "pip install" in args
    ]
    assert metadata < code
    assert any(metadata < i < code for i in installs), "no dependency install between metadata and code"
    torch_installs = [i for i in installs if "-r torch.txt" in instructions[i][1]]
    assert len(torch_installs) == 2 and all(i < code for i in torch_installs)


def test_compose_torch_variants_are_dockerfile_stages(services: dict, cpu_services: dict) -> None:
    stages = {m.group(1) for m in re.finditer(r"^FROM\s+\S+\s+AS\s+(\S+)", DOCKERFILE.read_text(), re.M | re.I)}
    variants = {
        s["build"]["args"]["TORCH_VARIANT"] for s in [*services.values(), *cpu_services.values()] if "build" in s
    }
    assert variants == {"cpu", "cuda"}
    assert {f"torch-{variant}" for variant in variants} <= stages


def test_cpu_image_takes_torch_from_the_cpu_index() -> None:
    text = DOCKERFILE.read_text()
    cpu_stage = text.split("AS torch-cpu", 1)[1].split("\nFROM ", 1)[0]
    cuda_stage = text.split("AS torch-cuda", 1)[1].split("\nFROM ", 1)[0]
    assert "download.pytorch.org/whl/cpu" in cpu_stage and "torch.version.cuda is None" in cpu_stage
    assert "whl/cpu" not in cuda_stage and "assert torch.version.cuda" in cuda_stage


def test_torch_pins_come_from_pyproject() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("torch==") for d in deps) and any(d.startswith("torchvision==") for d in deps)
    assert not re.search(r"torch(vision)?==\d", DOCKERFILE.read_text()), "pin torch in pyproject.toml only"


# --- build context --------------------------------------------------------------------------------------


def dockerignore_allows(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent matches the path."""
    allowed = True
    parts = path.split("/")
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, "/".join(parts[: n + 1])) for n in range(len(parts))):
            allowed = negate
    return allowed


def test_build_context_holds_the_code_and_the_files_it_reads_at_runtime() -> None:
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in {pattern.rstrip("*") for pattern in packages}:
        assert dockerignore_allows(f"{package}/__init__.py"), package
    for path in (
        "pyproject.toml",
        "README.md",
        "alembic.ini",
        "migrations/env.py",
        "templates/base.html",
        "static/htmx.min.js",
    ):
        assert dockerignore_allows(path), path


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".git/config",
        ".venv/bin/python",
        "var/leukolab.db",
        "tests/conftest.py",
        "app/__pycache__/db.cpython-311.pyc",
        "leukolab.egg-info/PKG-INFO",
    ],
)
def test_build_context_leaves_out_secrets_data_and_local_state(path: str) -> None:
    assert not dockerignore_allows(path)


def test_the_readme_pyproject_names_exists() -> None:
    """The image installs the project, and setuptools refuses a missing `readme` file."""
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("readme")
    assert readme is None or (REPO / readme).is_file(), f"pyproject.toml names {readme}, which does not exist"


def test_the_dockerfile_splits_torch_off_the_pyproject_dependencies(tmp_path: Path) -> None:
    """Runs the Dockerfile's own `python -c` step (line continuations joined, as BuildKit does)."""
    import shutil
    import subprocess
    import sys

    joined = re.sub(r"\\\n", "", DOCKERFILE.read_text())
    step = next(line for line in joined.splitlines() if line.startswith("RUN python -c") and "tomllib" in line)
    command = step.removeprefix("RUN ").split(" && pip install", 1)[0]
    assert command.startswith("python -c ")
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    subprocess.run(["sh", "-c", command], cwd=tmp_path, env=env, check=True)

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = (tmp_path / "torch.txt").read_text().splitlines()
    rest = (tmp_path / "requirements.txt").read_text().splitlines()
    assert sorted(torch) == sorted(d for d in deps if re.match(r"torch(vision)?\b(?!-)", d))
    assert sorted(torch + rest) == sorted(deps)
