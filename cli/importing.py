"""``leukolab import PATH [--labelled]``: a thin layer over ``app.cells.importer``.

Once an import of unlabelled cells commits, it sends the worker the cold start (before any model) or
the scoring of its cells by the active model (``app.cells.service.after_import``), as ``reference
install`` sends its scoring: the import needs no torch and waits for neither. ``leukolab cold-start``
runs the cold start here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy.orm import Session

from app.cells.importer import ImportSummary, import_folder, import_zip
from app.cells.service import after_import, importing_user
from app.cells.sources import ImportRefused
from app.db import session_scope
from app.errors import LeukolabError
from app.training import broker


def _print_summary(summary: ImportSummary) -> None:
    labels = f", {summary.labelled} labelled" if summary.labelled else ""
    typer.echo(
        f"imported {summary.imported} cells{labels}; {summary.duplicates} duplicates skipped"
        f" (import {summary.import_id})"
    )
    if summary.skipped:
        typer.echo(f"skipped {len(summary.skipped)} non-image files: {', '.join(summary.skipped)}")


def warn(message: str) -> None:
    typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW)


class AfterImportReport:
    """What became of the task an import sends after its commit (``after_import``), for the closing lines."""

    SENT = {
        broker.TASK_COLD_START: "no model yet: the cold start was sent to the worker, which chooses the first cells "
        "to label",
        broker.TASK_SCORE_NEW: "a model is active: the new cells were sent to the worker for scoring; they get "
        "suggestions and join the queue once scored",
    }

    def __init__(self) -> None:
        self.sent: str | None = None
        self.failed = False

    def after_import(self, *, session: Session, unlabelled: int) -> None:
        self.sent = after_import(session=session, unlabelled=unlabelled, report=self._failed)

    def _failed(self, message: str) -> None:
        self.failed = True
        warn(message)

    def print(self) -> None:
        if self.sent is not None and not self.failed:
            typer.echo(self.SENT[self.sent])


@contextmanager
def progress_bar(console: Console, label: str) -> Iterator[Callable[[int, int], None]]:
    """A transient progress bar on ``console``; yields the ``progress(done, total)`` callback the imports take."""
    with Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True
    ) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def refuse_import(error: LeukolabError) -> NoReturn:
    """Say why nothing was imported (each refused file for an ``ImportRefused``) and exit with status 2."""
    if isinstance(error, ImportRefused):
        for rejection in error.rejections:
            typer.secho(f"refused: {rejection.file}: {rejection.reason}", err=True, fg=typer.colors.RED)
        count = len(error.rejections)
        typer.secho(
            f"error: {count} file{'s' if count != 1 else ''} refused; nothing was imported",
            err=True,
            fg=typer.colors.RED,
        )
    else:
        typer.secho(f"error: {error.message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2) from None


def import_command(
    path: Annotated[Path, typer.Argument(help="a folder of images, or a .zip")],
    labelled: Annotated[
        bool, typer.Option("--labelled", help="class sub-folders are expert labels (an ImageFolder)")
    ] = False,
    as_user: Annotated[str | None, typer.Option("--as-user", help="admin to attribute labels to")] = None,
    fields: Annotated[
        bool, typer.Option("--fields", help="whole smear fields: white cells are located, cut out and queued")
    ] = False,
    sample: Annotated[
        str | None, typer.Option("--sample", help="the sample the cells go into (fields: else one per top folder)")
    ] = None,
    um_per_px: Annotated[
        float | None, typer.Option("--um-per-px", help="pixel size of a new sample's fields (default 0.06)")
    ] = None,
) -> None:
    """Import a folder or .zip of cell images, all or nothing; with --labelled, sub-folders are classes."""
    console = Console(stderr=True)
    if not path.exists():
        typer.secho(f"error: {path}: no such file or folder", err=True, fg=typer.colors.RED)
        raise typer.Exit(2)
    if fields:
        from cli.samples import import_fields

        user_id_for = lambda session: importing_user(session=session, as_user=as_user, labelled=False)  # noqa: E731
        import_fields(path, sample=sample, um_per_px=um_per_px, user_id_for=user_id_for, console=console)
        return
    sent = AfterImportReport()
    try:
        with session_scope() as session, progress_bar(console, "importing") as progress:
            user_id = importing_user(session=session, as_user=as_user, labelled=labelled)
            if path.is_dir():
                summary = import_folder(
                    session=session, path=path, labelled=labelled, user_id=user_id, progress=progress
                )
            else:
                summary = import_zip(session=session, file=path, labelled=labelled, user_id=user_id, progress=progress)
            if sample is not None:
                from cli.samples import attach_to_sample

                attach_to_sample(session=session, import_id=summary.import_id, sample=sample, user_id=user_id)
            sent.after_import(session=session, unlabelled=summary.imported - summary.labelled)
    except LeukolabError as error:
        refuse_import(error)
    _print_summary(summary)
    sent.print()


def cold_start_command(
    seed: Annotated[int, typer.Option("--seed", help="the k-means seed")] = 0,
) -> None:
    """Before any model: queue the cells that cover the variety of the unlabelled ones (k-means++)."""
    from worker.coldstart import cold_start_queue

    written = cold_start_queue(seed=seed)
    if written:
        typer.echo(f"queued {written} cells for a cold start")
    else:
        typer.echo("nothing queued: a model is active (its scores order the queue) or no cell is unlabelled")
