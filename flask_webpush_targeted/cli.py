"""The ``flask webpush`` command group."""

from __future__ import annotations

import json

import click
from flask import current_app
from flask.cli import AppGroup

from .config import generate_vapid_keys

webpush_cli = AppGroup("webpush", help="Targeted Web Push: keys, users' data, sending, stats.")


@webpush_cli.command("generate-vapid-keys")
def generate_vapid_keys_command() -> None:
    """Print a new VAPID key pair as config lines ready to paste."""
    private, public = generate_vapid_keys()
    click.echo(f'WEBPUSH_VAPID_PRIVATE_KEY = "{private}"')
    click.echo(f'WEBPUSH_VAPID_PUBLIC_KEY = "{public}"')
    click.echo('WEBPUSH_VAPID_SUBJECT = "mailto:you@example.com"  # who push services may contact')


@webpush_cli.command("export-user")
@click.argument("user_id")
def export_user_command(user_id: str) -> None:
    """Print, as JSON, what is stored about USER_ID (no endpoints or keys)."""
    data = current_app.extensions["webpush"].export_user(user_id)
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@webpush_cli.command("forget-user")
@click.argument("user_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def forget_user_command(user_id: str, yes: bool) -> None:
    """Erase USER_ID's subscriptions, consents and deliveries."""
    if not yes:
        click.confirm(f"Erase every web push record of user {user_id!r}?", abort=True)
    counts = current_app.extensions["webpush"].forget_user(user_id)
    click.echo(", ".join(f"{n} {name}" for name, n in counts.items()) + " deleted.")
