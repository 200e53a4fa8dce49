"""``leukolab import PATH --fields [--sample ID]``: a thin layer over ``app.samples.fields``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from sqlalchemy.orm import Session

from app.db import session_scope
from app.errors import LeukolabError
from app.samples.fields import FieldImportSummary, import_field_folder, import_field_zip
from cli.importing import AfterImportReport, progress_bar, refuse_import


def print_summary(summary: FieldImportSummary) -> None:
    typer.echo(
        f"imported {summary.fields} fields with {summary.cells} white cells into {len(summary.samples)} "
        f"sample{'s' if len(summary.samples) != 1 else ''}; {summary.duplicates} fields already there skipped"
        f" (import {summary.import_id})"
    )
    for sample in summary.samples:
        typer.echo(
            f"  {sample.identifier}{' (new)' if sample.created else ''}: {sample.fields} fields, {sample.cells} cells"
            f" ({sample.touching_edge} at the field edge, {sample.merged} merged), {sample.duplicates} skipped"
        )
    if summary.empty_fields:
        typer.echo(f"no white cell in {len(summary.empty_fields)} fields: {', '.join(summary.empty_fields)}")
    if summary.skipped:
        typer.echo(f"skipped {len(summary.skipped)} non-image files: {', '.join(summary.skipped)}")


def import_fields(
    path: Path,
    *,
    sample: str | None,
    um_per_px: float | None,
    user_id_for: Callable[[Session], int | None],
    console: Console,
) -> None:
    """Import the smear fields at ``path`` (folder or .zip) with a progress bar, or exit 2 saying why not."""
    sent = AfterImportReport()
    try:
        with session_scope() as session, progress_bar(console, "locating cells") as progress:
            user_id = user_id_for(session)
            run = import_field_folder if path.is_dir() else import_field_zip
            target = {"path": path} if path.is_dir() else {"file": path}
            summary = run(
                session=session, **target, sample=sample, user_id=user_id, um_per_px=um_per_px, progress=progress
            )
            sent.after_import(session=session, unlabelled=summary.cells)
    except LeukolabError as error:
        refuse_import(error)
    print_summary(summary)
    sent.print()


def attach_to_sample(*, session: Session, import_id: int | None, sample: str, user_id: int | None) -> None:
    """Put a tile import's new cells into ``sample`` and say so."""
    from app.samples.service import attach_import

    if import_id is None:
        return
    row, moved = attach_import(session=session, import_id=import_id, identifier=sample, user_id=user_id)
    typer.echo(f"{moved} cells put into sample {row.identifier!r}")
