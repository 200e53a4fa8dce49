"""The ``leukolab`` command line: a thin layer over the same services and tasks as the web app."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from app.errors import LeukolabError

app = typer.Typer(help="leukolab: active labelling of white blood cells.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
users_app = typer.Typer(help="Accounts.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (not tests): each writes a JSON report.", no_args_is_help=True)
export_app = typer.Typer(help="Export labels or a trained model.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(bench_app, name="bench")
app.add_typer(export_app, name="export")


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Migrate the configured database to REVISION (default: the newest)."""
    from app import db

    db.upgrade(revision=revision)
    typer.echo(f"database at {db.head_revision() if revision == 'head' else revision}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="target revision, e.g. base or 0001")]) -> None:
    """Migrate the configured database down to REVISION."""
    from app import db

    db.downgrade(revision=revision)
    typer.echo(f"database at {revision}")


@db_app.command("check")
def db_check(
    show: Annotated[int, typer.Option(help="list at most this many mismatched cells")] = 20,
) -> None:
    """Exit 0 when the database is reachable and migrated and every cell's cached current label
    equals the one its label rows give; otherwise say what is wrong (exit 1)."""
    from app import db
    from app.labelling.service import current_label_mismatches

    try:
        db.check_migrated()
    except LeukolabError as error:
        raise fail(error.message, 1) from None
    with db.session_scope() as session:
        mismatches = current_label_mismatches(session=session)
    if mismatches:
        for mismatch in mismatches[:show]:
            typer.echo(
                f"cell {mismatch.cell_id}: current_label_id {mismatch.cached_label_id}, "
                f"its label rows give {mismatch.standing_label_id}",
                err=True,
            )
        raise fail(f"{len(mismatches)} cells have a current label that disagrees with their label rows", 1)
    typer.echo("database ready; every cell's current label agrees with its label rows")


@users_app.command("create")
def users_create(
    name: str,
    role: Annotated[str, typer.Option(help="admin or cytologist")] = "cytologist",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from standard input")
    ] = False,
) -> None:
    """Create a user."""
    from pydantic import ValidationError

    from app.db import session_scope
    from app.users.schemas import UserCreate
    from app.users.service import create_user

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        user_create = UserCreate(username=name, password=password, role=role)
        with session_scope() as session:
            user = create_user(session=session, user_create=user_create)
    except ValidationError as error:
        raise fail("; ".join(f"{e['loc'][0]}: {e['msg']}" for e in error.errors())) from None
    except LeukolabError as error:
        raise fail(error.message) from None
    typer.echo(f"created {user.role} {user.username!r} (id {user.id})")


@users_app.command("list")
def users_list() -> None:
    """List users."""
    from app.db import session_scope
    from app.users.service import list_users

    with session_scope() as session:
        for user in list_users(session=session):
            typer.echo(f"{user.id}\t{user.username}\t{user.role}\t{'active' if user.is_active else 'deactivated'}")


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Run the web server on the configured database."""
    import uvicorn

    from app import db

    try:
        db.check_migrated()
    except LeukolabError as error:
        raise fail(error.message, 1) from None
    # X-Forwarded-* headers are believed only from the proxies listed in FORWARDED_ALLOW_IPS (none by default):
    # the client address they give is what login throttling counts by (docs/deploy.md, "TLS").
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        proxy_headers=True,
        forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", ""),
    )


@export_app.command("labels")
def export_labels(
    out: Annotated[Path, typer.Argument(help="a .csv file for csv; an empty or new folder otherwise")],
    format: Annotated[str, typer.Option("--format", help="csv, imagefolder or coco")] = "csv",
    pseudo_labels: Annotated[
        bool, typer.Option("--pseudo-labels", help="add the model's pseudo-labels of cells no expert labelled")
    ] = False,
    predictions: Annotated[
        bool, typer.Option("--predictions", help="add the model's predictions of cells no expert labelled")
    ] = False,
    model_version: Annotated[
        int | None, typer.Option("--model-version", help="whose pseudo-labels/predictions (default: the active)")
    ] = None,
) -> None:
    """Export the expert labels; model labels only with --pseudo-labels/--predictions, marked by origin."""
    from app.db import session_scope
    from app.export import service

    if format not in service.LABEL_FORMATS:
        raise fail(f"unknown format {format!r}; use one of {', '.join(service.LABEL_FORMATS)}")
    if format != "csv" and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise fail(f"{out} exists and is not an empty folder; {format} writes a folder")
    try:
        with session_scope() as session:
            rows = service.label_rows(
                session=session, pseudo_labels=pseudo_labels, predictions=predictions, model_version_id=model_version
            )
            classes = service.class_names(session=session)
        marked = pseudo_labels or predictions
        if format == "csv":
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("w", newline="", encoding="utf-8") as file:
                file.writelines(service.csv_chunks(rows, marked=marked))
        else:
            service.write_files(service.label_files(rows, format=format, classes=classes, marked=marked), out)
    except LeukolabError as error:
        raise fail(error.message) from None
    origins = ", ".join(f"{n} {o}" for o, n in Counter(row.origin for row in rows).items()) or "nothing"
    typer.echo(f"exported {len(rows)} labelled cells ({origins}) as {format} to {out}")


@export_app.command("model")
def export_model(
    out: Annotated[Path, typer.Argument(help="the network's file; the model card goes beside it (NAME.card.json)")],
    format: Annotated[str, typer.Option("--format", help="onnx or torchscript")] = "onnx",
    version: Annotated[int | None, typer.Option("--version", help="model version id (default: the active)")] = None,
) -> None:
    """Export a model version's network (teacher weights) with its model card (JSON)."""
    from app.export.service import MODEL_FORMATS
    from worker.exports import export_version

    if format not in MODEL_FORMATS:
        raise fail(f"unknown format {format!r}; use one of {', '.join(MODEL_FORMATS)}")
    try:
        network, card = export_version(model_id=version, out=out, format=format)
    except LeukolabError as error:
        raise fail(error.message) from None
    except (OSError, ValueError) as error:
        raise fail(f"cannot export the model: {error}") from None
    typer.echo(f"wrote {network} and {card}")


def _register_commands_from_other_modules() -> None:
    from bench import cli as bench_cli
    from bench.labelling import labelling_command
    from bench.races import races_command
    from cli.classes import classes_app
    from cli.importing import cold_start_command, import_command
    from cli.reference import reference_app
    from cli.worker import worker_command

    app.command("import", help="Import a folder or .zip of cell images; class sub-folders with --labelled.")(
        import_command
    )
    app.command("cold-start")(cold_start_command)
    bench_app.command("labelling")(labelling_command)
    bench_app.command("races")(races_command)
    bench_app.command("ssl")(bench_cli.ssl)
    bench_app.command("throughput")(bench_cli.throughput)
    bench_app.command("locate")(bench_cli.locate)
    app.command("worker")(worker_command)
    bench_app.command("active")(bench_cli.bench_active)
    bench_app.command("ood")(bench_cli.ood)
    bench_app.command("transfer")(bench_cli.transfer)
    bench_app.command("pretrain")(bench_cli.pretrain)
    app.add_typer(classes_app, name="classes")
    app.add_typer(reference_app, name="reference")


_register_commands_from_other_modules()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
