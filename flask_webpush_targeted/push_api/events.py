"""The push API's event export: ``GET events``, the log as NDJSON, a page at a time.

Each line is one event, ``{"id", "type", "created_at", "data"}``, oldest first. A page holds
at most ``limit`` events (10,000 by default, 1,000,000 at most); when it is full, the
``Webpush-Next-Cursor`` header (and a ``Link: rel="next"``) gives the cursor of the next
one, known before the first line is sent. The page is streamed from the database a chunk
at a time (``event_log.read``), so memory does not grow with it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, request, stream_with_context, url_for
from flask.typing import ResponseReturnValue

from .. import event_log
from ..context import extension as ext
from ..exceptions import BadRequestError
from ..limits import MAX_ID
from .access import authorize
from .requests import _int_arg, parse_rfc3339

#: events per page by default, and at most
DEFAULT_LIMIT, MAX_LIMIT = 10_000, 1_000_000
_CURSOR = re.compile(r"[0-9]{1,19}", re.ASCII)


def register(bp: Blueprint, api: str) -> None:
    """Add the event export under ``api``."""
    bp.add_url_rule(f"{api}/events", "api_events", export_events)


def parse_cursor(text: str | None) -> int:
    """A cursor: an event id from an earlier page (0: from the start)."""
    if text is None or text == "":
        return 0
    if not _CURSOR.fullmatch(text) or int(text) > MAX_ID:
        raise BadRequestError("cursor must be the Webpush-Next-Cursor of an earlier page "
                              "(an event id).")
    return int(text)


def export_events() -> ResponseReturnValue:
    """The event log from ``cursor`` (and ``since``), as NDJSON."""
    authorize("stats")
    args = request.args
    after = parse_cursor(args.get("cursor"))
    since = parse_rfc3339(args["since"], "since") if args.get("since") else None
    limit = _int_arg({k: v for k, v in args.items() if v != ""}, "limit", DEFAULT_LIMIT,
                     MAX_LIMIT)
    webpush = ext()
    db, m = webpush.db, webpush.models
    last = event_log.last_id(db, m, after=after, since=since, limit=limit)
    headers = {"Cache-Control": "no-store"}
    if last is not None:
        # Only the parameters this route reads: another name could be url_for's own.
        kept = {name: args[name] for name in ("since", "limit") if args.get(name)}
        following = url_for("webpush.api_events", _external=True,
                            **{**kept, "cursor": str(last)})
        headers.update({"Webpush-Next-Cursor": str(last), "Link": f'<{following}>; rel="next"'})

    def lines() -> Iterator[str]:
        # Up to the cursor given: events erased or pruned meanwhile must not make this page
        # run past it (the next page would repeat them).
        for row in event_log.read(db, m, after=after, since=since, up_to=last, limit=limit):
            yield json.dumps(event_log.as_json(row), ensure_ascii=False,
                             separators=(",", ":")) + "\n"

    return Response(stream_with_context(lines()), mimetype="application/x-ndjson",
                    headers=headers)


def dump(stream: Any, *, after: int = 0, since: Any = None) -> int:
    """Write the whole log from ``after`` (and ``since``) to ``stream`` as NDJSON; return how
    many events were written (the CLI's export-events)."""
    webpush = ext()
    written = 0
    for row in event_log.read(webpush.db, webpush.models, after=after, since=since):
        stream.write(json.dumps(event_log.as_json(row), ensure_ascii=False,
                                separators=(",", ":")) + "\n")
        written += 1
    return written
