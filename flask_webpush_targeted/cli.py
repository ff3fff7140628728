"""The ``flask webpush`` command group."""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from datetime import datetime, timedelta
from typing import Any

import click
import sqlalchemy as sa
from flask import current_app
from flask.cli import AppGroup

from . import stats
from .audience_cli import audience_cli
from .clock import utcnow
from .context import app_state
from .counters import fold_old_platform_rows
from .exceptions import (
    BadRequestError,
    InvalidNotification,
    InvalidPreferences,
    InvalidUserId,
    NotificationNotFound,
    QueueUnavailable,
    WebPushError,
)
from .notifications import DEVICE_WORDS, MAX_RATE_PER_MINUTE, URGENCIES, NotificationOptions
from .push_api.events import dump as dump_events
from .push_api.events import parse_cursor
from .push_api.keys import SCOPES, create_key, find_keys, list_keys, revoke_key
from .push_api.requests import parse_rfc3339
from .targeting import users_without
from .transport.text import storable
from .transport.vapid import generate_vapid_keys
from .users import user_id_of
from .worker import run_pool, run_worker

#: the longest retention prune accepts (100 years): more overflows the date arithmetic
MAX_PRUNE_DAYS = 36_500
#: user ids per query when looking for ones never subscribed (a bound on the parameters)
_CHUNK = 500


class WebPushGroup(AppGroup):
    """The command group: an error of the extension is a message and exit code 1, never a
    traceback (every command below reaches the extension's public functions)."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, turning a WebPushError into a ClickException."""
        try:
            return super().invoke(ctx)
        except WebPushError as exc:
            raise click.ClickException(str(exc)) from exc


def _storable_arg(value: str, hint: str) -> str:
    """``value`` if it can be stored (no NUL, no lone surrogate), else a usage error."""
    if not storable(value):
        raise click.BadParameter("must not contain NUL characters or lone surrogates",
                                 param_hint=hint)
    return value


webpush_cli = WebPushGroup("webpush",
                           help="Targeted Web Push: keys, users' data, sending, stats.")


@webpush_cli.command("generate-vapid-keys")
def generate_vapid_keys_command() -> None:
    """Print a new VAPID key pair as config lines ready to paste."""
    private, public = generate_vapid_keys()
    click.echo(f'WEBPUSH_VAPID_PRIVATE_KEY = "{private}"')
    click.echo(f'WEBPUSH_VAPID_PUBLIC_KEY = "{public}"')
    click.echo('WEBPUSH_VAPID_SUBJECT = "mailto:you@example.com"  # who push services may contact')
    if not current_app.config.get("WEBPUSH_SITE_URL"):
        click.echo('WEBPUSH_SITE_URL = "https://shop.example"  # your site\'s origin: a clicked '
                   'notification opens a page of it')


@webpush_cli.command("export-user")
@click.argument("user_id")
def export_user_command(user_id: str) -> None:
    """Print, as JSON, what is stored about USER_ID (no endpoints or keys)."""
    data = current_app.extensions["webpush"].export_user(_storable_arg(user_id, "USER_ID"))
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@webpush_cli.command("forget-user")
@click.argument("user_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def forget_user_command(user_id: str, yes: bool) -> None:
    """Erase USER_ID's subscriptions, consents and deliveries."""
    _storable_arg(user_id, "USER_ID")
    if not yes:
        click.confirm(f"Erase every web push record of user {user_id!r}?", abort=True)
    counts = current_app.extensions["webpush"].forget_user(user_id)
    click.echo(", ".join(f"{n} {name}" for name, n in counts.items()) + " deleted.")


@webpush_cli.command("worker")
@click.option("--burst", is_flag=True, help="Work off what is queued and due, then exit.")
@click.option("--processes", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Worker processes to run under this command (RQ's worker pool): one per "
                   "core; a process that dies is replaced, Ctrl+C or SIGTERM stops all.")
@click.option("--fork", is_flag=True,
              help="Fork a work horse per job (RQ's default worker): every batch then opens "
                   "new connections and signs its VAPID headers again; slower.")
@click.option("--simple", is_flag=True, hidden=True,
              help="Jobs in the worker's own process: the default; kept for existing scripts.")
@click.option("--name", default=None, help="Worker name (default: host and pid).",
              callback=lambda _ctx, _param, value: value if value is None
              else _storable_arg(value, "--name"))
def worker_command(burst: bool, processes: int, fork: bool, simple: bool,
                   name: str | None) -> None:
    """Run an RQ worker with its scheduler on WEBPUSH_QUEUE, jobs in its own process (started
    again after a Redis failure, until SIGTERM or Ctrl+C)."""
    if fork and simple:
        raise click.UsageError("--fork and --simple exclude each other (--simple is the default).")
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if processes > 1:
        run_pool(app, processes, simple=not fork, name=name, burst=burst)
    else:
        run_worker(app, simple=not fork, name=name, burst=burst)


@webpush_cli.command("fold-platforms")
def fold_platforms_command() -> None:
    """Fold per-platform figures counted by device label into browser and device type."""

    ext = current_app.extensions["webpush"]
    click.echo(f"{fold_old_platform_rows(ext.db, ext.models)} per-platform rows folded.")


@webpush_cli.command("recover")
def recover_command() -> None:
    """Enqueue notifications and deliveries left behind by a Redis outage or a dead worker."""
    done = current_app.extensions["webpush"].recover()
    click.echo(", ".join(f"{n} {what}" for what, n in done.items()))


#: the defaults of ``notify_users``, for the options ``send`` offers
_DEFAULTS = {option.name: option.default for option in fields(NotificationOptions)}


@webpush_cli.command("send")
@click.option("--user", "users", multiple=True, help="A user id (repeatable).")
@click.option("--users-file", type=click.File("rb"),
              help="A file of user ids, one a line (UTF-8).")
@click.option("--title", required=True)
@click.option("--body", default=_DEFAULTS["body"])
@click.option("--url", default=None, help="Opened on click: a path or a URL on this site.")
@click.option("--devices", type=click.Choice(DEVICE_WORDS), default=_DEFAULTS["devices"])
@click.option("--ttl", type=int, default=None,
              help="Validity period in seconds (0: a device offline at that moment never "
                   "gets it; a warning says so).")
@click.option("--urgency", type=click.Choice(URGENCIES), default=_DEFAULTS["urgency"])
@click.option("--topic", default=None)
@click.option("--category", default=None,
              help="With WEBPUSH_CATEGORIES, one of its names (default: the first required "
                   "one); without, a free label.")
@click.option("--send-at", default=None,
              help="ISO 8601 time with an offset, e.g. 2026-12-01T09:00+01:00; a time "
                   "in the past is refused (leave it out to send now).")
@click.option("--send-at-local", default=_DEFAULTS["send_at_local"], metavar="HH:MM",
              help="Each device gets it at the next such time in its own time zone "
                   "(not with --send-at).")
@click.option("--quiet-hours/--no-quiet-hours", default=_DEFAULTS["quiet_hours"],
              help="Keep or ignore quiet hours (default: the category's or "
                   "WEBPUSH_QUIET_HOURS).")
@click.option("--rate-per-minute", type=int, default=_DEFAULTS["rate_per_minute"], metavar="N",
              help=f"At most N deliveries a minute, across all workers (1 to "
                   f"{MAX_RATE_PER_MINUTE:,}).")
@click.option("--idempotency-key", default=None)
@click.option("--audience", "audience", type=click.IntRange(1, 2**31 - 1), default=None,
              metavar="ID", help="Send to an audience's members instead of --user.")
@click.option("--var", "var_items", multiple=True, metavar="NAME=VALUE",
              help="A value for {NAME} in the texts, for every recipient (repeatable); "
                   "with it, the texts are templates.")
def send_command(users: tuple[str, ...], users_file: Any, title: str, body: str, url: str | None,
                 devices: str, ttl: int | None, urgency: str, topic: str | None,
                 category: str | None, send_at: str | None, send_at_local: str | None,
                 quiet_hours: bool | None, rate_per_minute: int | None,
                 idempotency_key: str | None, audience: int | None,
                 var_items: tuple[str, ...]) -> None:
    """Send one notification to the given users or audience; prints its id, the users without
    devices and, among them, the user ids with no subscription at all."""
    _check_category(category)
    values = _vars(var_items)
    ids = list(users)
    if users_file is not None:
        try:
            lines = users_file.read().decode("utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise click.BadParameter(f"not UTF-8 text ({exc})", param_hint="--users-file") from exc
        with click.progressbar(lines, label="Reading user ids") as bar:
            ids.extend(line.strip() for line in bar if line.strip())
    if audience is not None and ids:
        raise click.UsageError("Give --audience or users (--user, --users-file), not both.")
    if not ids and audience is None:
        raise click.UsageError("Give at least one --user, a --users-file or an --audience.")
    when = _send_at(send_at)
    if ttl == 0:
        click.echo("Warning: --ttl 0 means a device that is offline when the notification "
                   "is sent never gets it (the push service drops it at once).", err=True)
    webpush = current_app.extensions["webpush"]
    try:
        n = webpush.notify_users(
            ids or None, audience=audience, vars=values, title=title, body=body, url=url,
            devices=devices, ttl=ttl, urgency=urgency, topic=topic, category=category,
            send_at=when, idempotency_key=idempotency_key, send_at_local=send_at_local,
            quiet_hours=quiet_hours, rate_per_minute=rate_per_minute)
    except InvalidNotification as exc:
        raise click.ClickException(exc.message) from exc
    except QueueUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Notification {n.id} {n.status} for {n.target_count} user(s).")
    without = users_without(webpush.db, webpush.models, n.targeting)
    if without is None:
        click.echo("Users without devices: known once the worker has fanned it out "
                   f"(flask webpush stats {n.id}).")
        return
    unknown = _never_subscribed(without)
    # JSON lists: a user id may hold commas, quotes or line breaks.
    click.echo(f"{len(without)} user(s) without devices: "
               f"{json.dumps(without, ensure_ascii=False)}")
    click.echo(f"{len(unknown)} of them with no subscription at all (unknown to web push): "
               f"{json.dumps(unknown, ensure_ascii=False)}")


def _vars(items: tuple[str, ...]) -> dict[str, str] | None:
    """``--var NAME=VALUE`` options as notify_users' vars (None when none is given)."""
    if not items:
        return None
    values: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item[:60]!r} is not NAME=VALUE", param_hint="--var")
        values[name] = value
    return values


def _send_at(send_at: str | None) -> datetime | None:
    """``--send-at`` as a datetime; a usage error (exit 2) if not ISO 8601 or in the past."""
    if not send_at:
        return None
    try:
        when = datetime.fromisoformat(send_at)
    except ValueError as exc:
        raise click.BadParameter(f"not an ISO 8601 time: {send_at!r}",
                                 param_hint="--send-at") from exc
    if when.utcoffset() is None:
        return when  # notify_users says it needs an offset
    now = utcnow()
    try:
        past = when < now
    except OverflowError:  # year 1 at +05:00: notify_users refuses it with the years allowed
        return when
    if past:
        raise click.BadParameter(
            f"{send_at!r} is in the past (it is now {now:%Y-%m-%dT%H:%M:%SZ}): give a later "
            "time, or leave --send-at out to send now.", param_hint="--send-at")
    return when


def _never_subscribed(user_ids: list[str]) -> list[str]:
    """The ``user_ids``, in order, that no subscription (active or not) was ever stored for."""
    webpush = current_app.extensions["webpush"]
    Sub = webpush.models.Subscription
    known: set[str] = set()
    for start in range(0, len(user_ids), _CHUNK):
        known.update(webpush.db.session.scalars(
            sa.select(Sub.user_id).where(Sub.user_id.in_(user_ids[start:start + _CHUNK]))
            .distinct()))
    return [u for u in user_ids if u not in known]


def _check_category(category: str | None) -> None:
    """With categories configured, ``--category`` names one of them (a usage error, exit 2,
    otherwise): the choices are the app's, known only once it is loaded."""
    configured = app_state().categories
    if category is not None and configured is not None and category not in configured:
        raise click.BadParameter(
            f"{category!r} is not one of {', '.join(map(repr, configured))} "
            "(WEBPUSH_CATEGORIES).", param_hint="--category")


@webpush_cli.command("stats")
@click.argument("notification_id", type=int, required=False)
@click.option("--limit", default=20, type=click.IntRange(1, 1000),
              help="How many notifications to list without an ID (1 to 1000).")
def stats_command(notification_id: int | None, limit: int) -> None:
    """Print one notification's figures, or the latest notifications with their funnels."""

    webpush = current_app.extensions["webpush"]
    if notification_id is not None:
        try:
            figures = webpush.stats(notification_id)
        except NotificationNotFound as exc:
            raise click.ClickException(exc.message) from exc
        width = max(len(k) for k in figures)
        for key, value in figures.items():
            if isinstance(value, list):
                click.echo(f"{key}:")
                for item in value:
                    click.echo("  " + ", ".join(f"{k}={v}" for k, v in item.items()))
            else:
                click.echo(f"{key:<{width}}  {value}")
        return
    items, total = stats.list_notifications(webpush.db, webpush.models, per_page=limit)
    click.echo(f"{'id':>6}  {'status':<9} {'sent':>7} {'shown':>7} {'clicked':>7} "
               f"{'failed':>7}  title")
    for item in items:
        n, f = item["notification"], item["funnel"]
        click.echo(f"{n.id:>6}  {n.status:<9} {f['sent']:>7} {f['displayed']:>7} "
                   f"{f['clicked']:>7} {f['failed'] + f['gone'] + f['expired']:>7}  "
                   f"{n.payload['title']}")
    click.echo(f"{len(items)} of {total} notifications.")


@webpush_cli.command("export-events")
@click.option("--since", default=None,
              help="Only events from this time on (RFC 3339 with an offset, e.g. "
                   "2026-12-01T00:00:00Z).")
@click.option("--cursor", default=None,
              help="Only events after this one (the id of the last event read before).")
def export_events_command(since: str | None, cursor: str | None) -> None:
    """Write the event log to stdout as NDJSON, oldest first (a line per event)."""
    try:
        when = parse_rfc3339(since, "--since") if since else None
        after = parse_cursor(cursor)
    except BadRequestError as exc:
        raise click.BadParameter(str(exc.description)) from exc
    written = dump_events(sys.stdout, after=after, since=when)
    click.echo(f"{written} events.", err=True)


@webpush_cli.command("prune")
@click.option("--older-than", "days", type=click.IntRange(1, MAX_PRUNE_DAYS), required=True,
              help="Remove deliveries of notifications finished more than DAYS days ago.")
def prune_command(days: int) -> None:
    """Delete old deliveries, keeping each notification's totals."""

    done = current_app.extensions["webpush"].prune(timedelta(days=days))
    click.echo(f"{done['deliveries']} deliveries of {done['notifications']} notifications "
               f"removed, and {done['events']} events of the log; their totals are kept.")


# -- keys of the push API (docs/api.md) ---------------------------------------------------------

api_key_cli = AppGroup("api-key", help="Keys of the push API for external systems (CRMs).")
webpush_cli.add_command(api_key_cli)
webpush_cli.add_command(audience_cli)


@api_key_cli.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, type=click.Choice(SCOPES),
              help="What the key may do (repeatable); default: send.")
def api_key_create_command(name: str, scopes: tuple[str, ...]) -> None:
    """Create a key named NAME; print it once, on stdout (only its hash is stored)."""

    webpush = current_app.extensions["webpush"]
    _storable_arg(name, "NAME")
    try:
        row, key = create_key(webpush.db, webpush.models, name, scopes or ("send",))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    # The explanation goes to stderr, so `KEY=$(flask webpush api-key create crm)` works.
    click.echo(f"API key {row.id} ({row.name}) with scope(s) {', '.join(row.scopes)}. "
               "Store it now: it is shown only this once.", err=True)
    click.echo(key)


@api_key_cli.command("list")
def api_key_list_command() -> None:
    """List the keys: id, name, scopes, created, last used, revoked (never the secrets)."""

    webpush = current_app.extensions["webpush"]
    rows = list_keys(webpush.db, webpush.models)

    def when(value: Any) -> str:
        return value.strftime("%Y-%m-%d %H:%M") if value else "-"

    click.echo(f"{'id':>4}  {'name':<24} {'scopes':<20} {'created':<16}  {'last used':<16}  "
               "revoked")
    for row in rows:
        click.echo(f"{row.id:>4}  {row.name:<24} {','.join(row.scopes):<20} "
                   f"{when(row.created_at):<16}  {when(row.last_used_at):<16}  "
                   f"{when(row.revoked_at)}")
    click.echo(f"{len(rows)} key(s).")


@api_key_cli.command("revoke")
@click.argument("key")
def api_key_revoke_command(key: str) -> None:
    """Revoke KEY (its id, e.g. 3 or wpk_3, or its name) at once."""

    webpush = current_app.extensions["webpush"]
    rows = [r for r in find_keys(webpush.db, webpush.models, key) if r.revoked_at is None]
    if not rows:
        raise click.ClickException(f"No active API key {key!r}.")
    if len(rows) > 1:
        ids = ", ".join(str(r.id) for r in rows)
        raise click.ClickException(f"Several active keys are named {key!r} (ids {ids}); "
                                   "revoke one by its id.")
    revoke_key(webpush.db, rows[0])
    click.echo(f"API key {rows[0].id} ({rows[0].name}) revoked.")


# -- customers' choices of categories -----------------------------------------------------------

_ON, _OFF = ("on", "true", "yes", "1"), ("off", "false", "no", "0")


def _choices(values: tuple[str, ...]) -> dict[str, bool]:
    """``--set name=on|off`` options as choices; a usage error for a malformed one."""
    choices: dict[str, bool] = {}
    for value in values:
        name, sep, word = value.partition("=")
        word = word.strip().lower()
        if not sep or not name or word not in _ON + _OFF:
            raise click.BadParameter(f"{value!r} is not NAME=on or NAME=off",
                                     param_hint="--set")
        choice = word in _ON
        if choices.get(name, choice) != choice:
            raise click.BadParameter(f"{name!r} is set both on and off", param_hint="--set")
        choices[name] = choice
    return choices


@webpush_cli.command("preferences")
@click.argument("user_id")
@click.option("--set", "changes", multiple=True, metavar="NAME=on|off",
              help="Turn a category on or off for the user (repeatable); each change is "
                   "recorded in the consent ledger with source 'host'.")
def preferences_command(user_id: str, changes: tuple[str, ...]) -> None:
    """Print USER_ID's choice per category, after the changes --set asks for."""
    try:
        user_id = user_id_of(user_id)
    except InvalidUserId as exc:
        raise click.BadParameter(str(exc), param_hint="USER_ID") from exc
    webpush = current_app.extensions["webpush"]
    categories = app_state().categories
    if changes:
        choices = _choices(changes)
        before = webpush.preferences(user_id)
        try:
            after = webpush.set_preferences(user_id, choices, source="host")
        except InvalidPreferences as exc:
            raise click.BadParameter(exc.message, param_hint="--set") from exc
        changed = sum(before.get(name) != value for name, value in after.items())
        click.echo(f"{changed} change(s) recorded for user {user_id!r}.")
    else:
        after = webpush.preferences(user_id)
    if not categories:
        click.echo("Categories are off (WEBPUSH_CATEGORIES is None): there is nothing to "
                   "choose.")
        return
    width = max(len(name) for name in categories)
    for name, category in categories.items():
        note = " (required)" if category.required else ""
        click.echo(f"{name:<{width}}  {'on' if after[name] else 'off':<3}  "
                   f"{category.label}{note}")
