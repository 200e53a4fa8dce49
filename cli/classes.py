"""``leukolab classes add|list|rename|retire|restore|merge|unmerge``: a thin layer over ``app.classes.service``."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.classes import service
from app.db import session_scope
from app.errors import LeukolabError
from app.models import User

classes_app = typer.Typer(help="The class set: add, list, rename, retire, merge.", no_args_is_help=True)
AsAdmin = Annotated[str | None, typer.Option("--as", help="the admin recorded as making the change")]


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(2)


def _admin(session: Session, name: str | None) -> User:
    query = select(User).where(User.role == "admin", User.is_active.is_(True))
    query = query.where(User.username == name) if name else query.order_by(User.id).limit(1)
    user = session.scalar(query)
    if user is None:
        raise LeukolabError(
            f"{name!r} is not an active admin"
            if name
            else "create an admin first: leukolab users create NAME --role admin"
        )
    return user


def _run(action) -> object:
    try:
        with session_scope() as session:
            return action(session)
    except LeukolabError as error:
        raise _fail(error.message) from None


@classes_app.command("list")
def list_command(all_: Annotated[bool, typer.Option("--all", help="also the retired classes")] = False) -> None:
    """List the classes in order: key, name, hotkey, WBC or not, labelled cells."""

    def show(session: Session) -> None:
        counts = service.labelled_counts(session=session)
        for c in service.list_classes(session=session, include_retired=all_):
            state = "retired" if c.is_retired else ("wbc" if c.is_wbc else "not-wbc")
            typer.echo(f"{c.id}\t{c.name}\t{c.display_name}\t{c.hotkey}\t{c.colour}\t{state}\t{counts.get(c.name, 0)}")

    _run(show)


@classes_app.command("add")
def add_command(
    name: str,
    hotkey: Annotated[str, typer.Option("--hotkey", help="one digit or letter a-z")],
    colour: Annotated[str | None, typer.Option("--colour", help="#rrggbb")] = None,
    wbc: Annotated[
        bool, typer.Option("--wbc/--not-wbc", help="a white blood cell (counts in the differential)")
    ] = True,
    as_admin: AsAdmin = None,
) -> None:
    """Add a class at the end of the order."""
    text = _run(
        lambda s: _describe(
            service.add_class(session=s, user=_admin(s, as_admin), name=name, hotkey=hotkey, colour=colour, is_wbc=wbc)
        )
    )
    typer.echo(f"added {text}")


@classes_app.command("rename")
def rename_command(old: str, new: str, as_admin: AsAdmin = None) -> None:
    """Rename a class (its key, and so every label, stays)."""
    text = _run(lambda s: _describe(service.rename_class(session=s, user=_admin(s, as_admin), ref=old, new_name=new)))
    typer.echo(f"renamed: {text}")


@classes_app.command("retire")
def retire_command(name: str, as_admin: AsAdmin = None) -> None:
    """Hide a class from labelling, training and scoring; its labels stay."""
    text = _run(lambda s: _describe(service.retire_class(session=s, user=_admin(s, as_admin), ref=name)))
    typer.echo(f"retired {text}")


@classes_app.command("restore")
def restore_command(name: str, as_admin: AsAdmin = None) -> None:
    """Bring a retired class back."""
    text = _run(lambda s: _describe(service.restore_class(session=s, user=_admin(s, as_admin), ref=name)))
    typer.echo(f"restored {text}")


@classes_app.command("merge")
def merge_command(source: str, target: str, as_admin: AsAdmin = None) -> None:
    """Relabel SOURCE's cells as TARGET (a label row per cell) and retire SOURCE; `unmerge ID` undoes it."""

    def merge(session: Session) -> str:
        event = service.merge_classes(session=session, user=_admin(session, as_admin), source=source, target=target)
        cells = event.detail.get("cells", 0)
        return f"merge {event.id}: {cells} cells relabelled (undo: leukolab classes unmerge {event.id})"

    typer.echo(_run(merge))


@classes_app.command("unmerge")
def unmerge_command(event_id: int, as_admin: AsAdmin = None) -> None:
    """Undo merge EVENT_ID: undo rows for its label rows, the merged class restored."""

    def unmerge(session: Session) -> str:
        event = service.undo_merge(session=session, user=_admin(session, as_admin), event_id=event_id)
        return f"merge {event_id} undone: {event.detail.get('cells', 0)} label rows undone"

    typer.echo(_run(unmerge))


def _describe(cls) -> str:
    return f"{cls.display_name!r} (key {cls.name}, hotkey {cls.hotkey}, {'WBC' if cls.is_wbc else 'not a WBC'})"
