"""``flask webpush audience``: upload, list and delete audiences from a terminal."""

from __future__ import annotations

from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup

from . import audiences
from .audience_files import csv_rows, ndjson_rows
from .exceptions import WebPushError

audience_cli = AppGroup("audience", help="Audiences: lists of user ids (with vars) to send to.")

#: a file from the command line is the operator's own: no size limit but the disk's
_NO_LIMIT = 2**62


@audience_cli.command("create")
@click.option("--name", required=True, help="What people will call it.")
@click.option("--file", "source", type=click.File("rb"), required=True,
              help="CSV (a user id a line, or a header user_id,<var>,...) or NDJSON "
                   "({\"user_id\": ...} a line); - reads standard input.")
@click.option("--format", "kind", type=click.Choice(["csv", "ndjson"]), default=None,
              help="Default: ndjson for a .ndjson or .jsonl file, else csv.")
def create_command(name: str, source: Any, kind: str | None) -> None:
    """Store an audience from a file, read a line at a time; prints its id and size."""
    if kind is None:
        named = str(getattr(source, "name", ""))
        kind = "ndjson" if named.endswith((".ndjson", ".jsonl")) else "csv"
    rows = (ndjson_rows if kind == "ndjson" else csv_rows)(source, _NO_LIMIT)
    ext = current_app.extensions["webpush"]
    try:
        audience, rejected = audiences.store_audience(ext.db, ext.models, rows, name=name)
    except WebPushError as exc:
        raise click.ClickException(str(exc)) from exc
    shown = f" (vars: {', '.join(sorted(audience.var_lengths))})" if audience.var_lengths else ""
    click.echo(f"Audience {audience.id} {audience.name!r}: {audience.size} member(s){shown}; "
               f"{rejected.count} row(s) rejected, {rejected.duplicates} duplicate(s).")
    for row in rejected.first:
        click.echo(f"  line {row['line']}: {row['reason']}", err=True)


@audience_cli.command("list")
def list_command() -> None:
    """Every audience, newest first: id, size, created, name."""
    ext = current_app.extensions["webpush"]
    for audience in audiences.list_audiences(ext.db, ext.models):
        click.echo(f"{audience.id}\t{audience.size}\t{audience.created_at:%Y-%m-%d %H:%M}"
                   f"\t{audience.name}")


@audience_cli.command("delete")
@click.argument("audience_id", type=click.IntRange(1, 2**31 - 1))
def delete_command(audience_id: int) -> None:
    """Delete an audience (refused while a notification still has to read it)."""
    ext = current_app.extensions["webpush"]
    try:
        audiences.delete_audience(ext.db, ext.models, audience_id)
    except WebPushError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Audience {audience_id} deleted.")
