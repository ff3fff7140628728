"""A session-bound CSRF token for the extension's state-changing browser requests.

The extension does not depend on Flask-WTF: the token lives in the host's
signed session and is sent back in the ``X-CSRF-Token`` header (JSON) or the
``csrf_token`` form field (HTML forms).
"""

from __future__ import annotations

import hmac
import secrets

from flask import current_app, request, session

from .exceptions import CSRFError

SESSION_KEY = "_webpush_csrf"
HEADER = "X-CSRF-Token"
FORM_FIELD = "csrf_token"


def csrf_token() -> str:
    """The current session's token, created on first use."""
    token = session.get(SESSION_KEY)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[SESSION_KEY] = token
    return token


def check_csrf() -> None:
    """Raise CSRFError unless the request carries this session's token."""
    if not current_app.config["WEBPUSH_CSRF_ENABLED"]:
        return
    expected = session.get(SESSION_KEY)
    sent = request.headers.get(HEADER)
    if not sent and request.mimetype in ("application/x-www-form-urlencoded",
                                         "multipart/form-data"):
        sent = request.form.get(FORM_FIELD)
    if not isinstance(expected, str) or not sent or not hmac.compare_digest(
        expected.encode(), sent.encode()
    ):
        raise CSRFError(
            f"The CSRF token is missing or wrong: send the page's token in the {HEADER} header."
        )
