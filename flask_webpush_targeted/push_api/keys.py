"""Keys of the push API for external systems: creation, revocation, authentication.

A key reads ``wpk_<id>_<secret>``: the prefix makes a leaked key easy to spot
(secret scanners, logs), the id finds its row without a scan, and the secret is
32 random bytes. Only the SHA-256 of the secret is stored: a fast hash is right
for a high-entropy random secret (nothing to brute-force), and it is compared
in constant time. No message, log line or answer ever repeats a key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from werkzeug.exceptions import Forbidden, Unauthorized

from ..clock import utcnow
from ..exceptions import APIError
from ..limits import MAX_ROW_ID
from ..models import Models
from ..transport.text import storable

if TYPE_CHECKING:  # the host's object, only annotated here
    from flask_sqlalchemy import SQLAlchemy

#: What a key may be allowed: send and cancel its own notifications; read every
#: notification's statistics; see a user's devices (support); read and change a user's
#: choices of categories.
SCOPES = ("send", "stats", "devices", "preferences", "conversions")
PREFIX = "wpk_"
_KEY = re.compile(r"wpk_([1-9][0-9]{0,17})_([A-Za-z0-9_-]{43})")
#: last_used_at is written at most this often per key
LAST_USED_RESOLUTION = timedelta(minutes=1)


class ApiKeyRequired(APIError, Unauthorized):
    """No API key was sent, or it is not one (unknown, wrong, revoked)."""

    error = "api_key_required"
    bearer_error: str | None = None

    def get_headers(self, environ: Any = None, scope: Any = None) -> list[tuple[str, str]]:
        """JSON, with the Bearer challenge of RFC 6750."""
        challenge = 'Bearer realm="webpush"'
        if self.bearer_error:
            challenge += f', error="{self.bearer_error}"'
        return [*super().get_headers(environ, scope), ("WWW-Authenticate", challenge)]


class InvalidApiKey(ApiKeyRequired):
    """The key is unknown, its secret wrong, or it was revoked."""

    error = "invalid_api_key"
    bearer_error = "invalid_token"


class InsufficientScope(APIError, Forbidden):
    """The key is valid but lacks the scope this endpoint needs."""

    error = "insufficient_scope"


def hash_secret(secret: str) -> str:
    """The stored form of a key's secret."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def check_scopes(scopes: Any) -> list[str]:
    """The scopes in a canonical order; ValueError for an unknown one."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; choose from {', '.join(SCOPES)}")
    return [s for s in SCOPES if s in scopes]


def create_key(db: SQLAlchemy, m: Models, name: str, scopes: Any) -> tuple[Any, str]:
    """Store a new key; return its row and the full key, which is never shown again."""
    name = name.strip()
    if not 0 < len(name) <= 100:
        raise ValueError("a key's name is 1 to 100 characters")
    chosen = check_scopes(scopes)
    if not chosen:
        raise ValueError(f"give at least one scope: {', '.join(SCOPES)}")
    secret = secrets.token_urlsafe(32)
    row = m.ApiKey(name=name, secret_sha256=hash_secret(secret), scopes=chosen,
                   created_at=utcnow())
    db.session.add(row)
    db.session.commit()
    return row, f"{PREFIX}{row.id}_{secret}"


def find_keys(db: SQLAlchemy, m: Models, id_or_name: str) -> list[Any]:
    """Keys whose id (``3``, ``wpk_3``, or a whole leaked key) or name is ``id_or_name``."""
    K = m.ApiKey
    text = id_or_name.removeprefix(PREFIX)
    if id_or_name.startswith(PREFIX):
        text = text.split("_", 1)[0]
    if text.isascii() and text.isdigit():  # "²".isdigit() is True, int("²") fails
        # An id the column cannot hold names no key (the database would refuse the query).
        row = db.session.get(K, int(text)) if len(text) <= 10 and int(text) <= MAX_ROW_ID \
            else None
        return [row] if row is not None else []
    if not storable(id_or_name):
        return []  # no name holds NUL or a lone surrogate, and the query would fail
    return list(db.session.scalars(sa.select(K).where(K.name == id_or_name).order_by(K.id)))


def revoke_key(db: SQLAlchemy, row: Any) -> bool:
    """Revoke a key at once; False if it was revoked already."""
    if row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    db.session.commit()
    return True


def list_keys(db: SQLAlchemy, m: Models) -> list[Any]:
    """Every key, oldest first (revoked ones included, for the record)."""
    return list(db.session.scalars(sa.select(m.ApiKey).order_by(m.ApiKey.id)))


def authenticate(db: SQLAlchemy, m: Models, authorization: str | None) -> Any:
    """The active key named by an ``Authorization: Bearer`` header, or a 401 error."""
    if not authorization:
        raise ApiKeyRequired("Send an API key: 'Authorization: Bearer wpk_...'.")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiKeyRequired("Send the API key as 'Authorization: Bearer wpk_...'.")
    match = _KEY.fullmatch(token.strip())
    # One message for every bad key: nothing to learn by probing ids.
    invalid = InvalidApiKey("The API key is not valid.")
    if match is None:
        raise invalid
    row = db.session.get(m.ApiKey, int(match.group(1)))
    given = hash_secret(match.group(2))
    if row is None or not hmac.compare_digest(given, row.secret_sha256):
        raise invalid
    if row.revoked_at is not None:
        # Only the holder of the real secret learns the key was revoked.
        raise InvalidApiKey("This API key was revoked; ask for a new one.")
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        row.last_used_at = now
        db.session.commit()
    return row


def require_scope(row: Any, scope: str) -> None:
    """Raise InsufficientScope unless the key has ``scope``."""
    if scope not in row.scopes:
        raise InsufficientScope(
            f"This API key lacks the '{scope}' scope; create one with "
            f"`flask webpush api-key create NAME --scope {scope}`.")


def rate_bucket(row: Any) -> str:
    """A Redis key part naming this key: unique across databases, revealing nothing."""
    # The id alone repeats across databases sharing a Redis (tests, staging); a prefix of
    # the hash of a random secret does not, and cannot be turned back into the secret.
    digest: str = row.secret_sha256
    return digest[:24]
