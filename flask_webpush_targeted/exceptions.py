"""Errors raised by the extension.

Errors that can reach a browser subclass both ``WebPushError`` and werkzeug's
HTTP exception of the right status, and render as the JSON error shape of the
API: ``{"error": "<code>", "message": "<for a person>"}``.
"""

from __future__ import annotations

import json
from typing import Any

from werkzeug.exceptions import (
    BadRequest,
    Conflict,
    Forbidden,
    HTTPException,
    NotFound,
    RequestEntityTooLarge,
    TooManyRequests,
    Unauthorized,
    UnprocessableEntity,
)
from werkzeug.wrappers import Response


class WebPushError(Exception):
    """Base class of every error this extension raises."""


class ConfigurationError(WebPushError, RuntimeError):
    """A WEBPUSH_* setting is missing or invalid."""


class InvalidArgument(WebPushError, ValueError):
    """Host code passed a value a public function does not take (e.g. prune's period)."""


class InvalidUserId(InvalidArgument):
    """A user (or user id) given to the extension is not one it can store.

    A user id is a string (or an int) of 1 to 255 characters without NUL or lone
    surrogates: PostgreSQL refuses NUL in text, and a lone surrogate is not UTF-8.
    A ValueError too, so host code written against earlier versions still catches it.
    """


class APIError(WebPushError, HTTPException):
    """An error answered to a client as JSON."""

    error = "error"

    def __init__(self, message: str, *, error: str | None = None) -> None:
        super().__init__(description=message)
        if error:
            self.error = error

    @property
    def message(self) -> str:
        """What is wrong, for a person."""
        return self.description or ""

    def __str__(self) -> str:
        return self.message

    def get_body(self, environ: Any = None, scope: Any = None) -> str:
        """The JSON error body."""
        return json.dumps({"error": self.error, "message": self.message})

    def get_headers(self, environ: Any = None, scope: Any = None) -> list[tuple[str, str]]:
        """JSON, never cached."""
        return [("Content-Type", "application/json"), ("Cache-Control", "no-store")]

    def get_response(self, environ: Any = None, scope: Any = None) -> Response:
        """A JSON response with this error's status."""
        return Response(self.get_body(), self.code, self.get_headers())


class BadRequestError(APIError, BadRequest):
    """The request is malformed: not JSON, wrong types, missing keys."""

    error = "bad_request"


class CSRFError(APIError, BadRequest):
    """The CSRF token is missing or wrong."""

    error = "csrf_failed"


class LoginRequired(APIError, Unauthorized):
    """The endpoint needs a logged-in user."""

    error = "login_required"

    def get_headers(self, environ: Any = None, scope: Any = None) -> list[tuple[str, str]]:
        """No WWW-Authenticate: the session cookie is the only credential."""
        return super().get_headers(environ, scope)


class ConsentRequired(APIError, Forbidden):
    """Consent is missing, refused, or was given for another text version."""

    error = "consent_required"


class RequestTooLarge(APIError, RequestEntityTooLarge):
    """The request body is larger than WEBPUSH_MAX_REQUEST_BYTES."""

    error = "too_large"


class InvalidSubscription(APIError, UnprocessableEntity):
    """The push endpoint or keys are not acceptable."""

    error = "invalid_subscription"


class InvalidNotification(APIError, UnprocessableEntity):
    """A notify_* argument is invalid (ttl, urgency, topic, send_at, url, devices...)."""

    error = "invalid_notification"


class InvalidPreferences(APIError, UnprocessableEntity):
    """A choice of categories names one that is not configured, is not true or false, or
    turns off a required category (or categories are off: WEBPUSH_CATEGORIES is None)."""

    error = "invalid_preferences"


class InvalidConversion(APIError, UnprocessableEntity):
    """A conversion's value, currency, order id or time is not acceptable."""

    error = "invalid_conversion"


class PayloadTooLarge(InvalidNotification):
    """The payload, tracking token included, exceeds the 3993-byte Web Push limit."""

    code = 413
    error = "payload_too_large"


class QueueUnavailable(WebPushError):
    """Redis did not answer: the notification is stored and will be recovered later."""

    def __init__(self, message: str, notification_id: int | None = None) -> None:
        super().__init__(message)
        self.notification_id = notification_id


class NotificationNotFound(APIError, NotFound):
    """No notification has this id."""

    error = "not_found"


class TrackingTokenInvalid(APIError, Forbidden):
    """A tracking token is forged, tampered with, expired, or names no delivery."""

    error = "invalid_token"


class RateLimited(APIError, TooManyRequests):
    """Too many requests from this client; try again after ``retry_after`` seconds."""

    error = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def get_headers(self, environ: Any = None, scope: Any = None) -> list[tuple[str, str]]:
        """JSON, with Retry-After."""
        return [*super().get_headers(environ, scope), ("Retry-After", str(self.retry_after))]


class SubscriptionNotFound(APIError, NotFound):
    """No such subscription belongs to the current user."""

    error = "not_found"


class AudienceNotFound(APIError, NotFound):
    """No audience has this id."""

    error = "not_found"


class InvalidAudience(APIError, UnprocessableEntity):
    """An audience's name or members are not what ``create_audience`` takes."""

    error = "invalid_audience"


class AudienceInUse(APIError, Conflict):
    """The audience is the target of a notification not fanned out yet."""

    error = "audience_in_use"


class AudienceTooLarge(APIError, RequestEntityTooLarge):
    """An audience upload over WEBPUSH_API_MAX_AUDIENCE_BYTES."""

    error = "too_large"
