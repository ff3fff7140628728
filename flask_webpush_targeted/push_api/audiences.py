"""The push API's audiences: a CRM uploads its segment once, as CSV or NDJSON, then sends to it.

The upload is read from the request's stream a line at a time and stored as it is read
(``audiences.store_audience``), so its size bounds neither the web process's memory nor
the request body limit of the other routes: ``WEBPUSH_API_MAX_AUDIENCE_BYTES`` does.
"""

from __future__ import annotations

from flask import Blueprint, current_app, request, url_for
from flask.typing import ResponseReturnValue

from .. import audiences
from ..audience_files import CSV_TYPES, NDJSON_TYPES, csv_rows, ndjson_rows
from ..context import extension as ext
from ..exceptions import AudienceNotFound, AudienceTooLarge, BadRequestError
from .access import answer, authorize


def register(bp: Blueprint, api: str) -> None:
    """Add the audience routes under ``api``."""
    bp.add_url_rule(f"{api}/audiences", "api_create_audience", create_audience,
                    methods=["POST"])
    one = f"{api}/audiences/<audience_id>"
    bp.add_url_rule(one, "api_audience", get_audience)
    bp.add_url_rule(one, "api_delete_audience", delete_audience, methods=["DELETE"])


def _audience_id(raw: str) -> int:
    # A path segment: digits only, and no more than the id column holds.
    if not raw.isascii() or not raw.isdigit() or len(raw) > 10 or not 0 < int(raw) < 2**31:
        raise AudienceNotFound(f"No audience has id {raw[:20]!r}.")
    return int(raw)


def create_audience() -> ResponseReturnValue:
    """Store an audience from a CSV or NDJSON body, streamed; 201 with its id and size."""
    authorize("send")
    limit = current_app.config["WEBPUSH_API_MAX_AUDIENCE_BYTES"]
    name = request.args.get("name")
    if name is None:
        raise BadRequestError("name is required: POST audiences?name=<a name for people>.")
    if request.content_length is not None and request.content_length > limit:
        raise AudienceTooLarge(f"The audience is over {limit:,} bytes "
                               "(WEBPUSH_API_MAX_AUDIENCE_BYTES); nothing was stored.")
    kind = request.mimetype
    if kind in CSV_TYPES:
        rows = csv_rows(request.stream, limit)
    elif kind in NDJSON_TYPES:
        rows = ndjson_rows(request.stream, limit)
    else:
        raise BadRequestError("Send the audience as text/csv (a user id a line, or a header "
                              "user_id,<var>...) or application/x-ndjson ({\"user_id\": ...} a "
                              "line).")
    webpush = ext()
    audience, rejected = audiences.store_audience(webpush.db, webpush.models, rows, name=name)
    url = url_for("webpush.api_audience", audience_id=audience.id, _external=True)
    return answer({**audiences.audience_fields(audience), "rejected": rejected.as_dict()},
                  201, Location=url)


def get_audience(audience_id: str) -> ResponseReturnValue:
    """An audience's id, name, size, creation time and var names."""
    authorize("send")
    webpush = ext()
    audience = audiences.get_audience(webpush.db, webpush.models, _audience_id(audience_id))
    return answer(audiences.audience_fields(audience))


def delete_audience(audience_id: str) -> ResponseReturnValue:
    """Delete an audience; 409 while a notification still has to read it."""
    authorize("send")
    webpush = ext()
    audiences.delete_audience(webpush.db, webpush.models, _audience_id(audience_id))
    return "", 204
