"""The WEBPUSH_* settings: every default in one dict, and their validation."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, NoReturn
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization

from .categories import parse_categories, parse_quiet_hours
from .exceptions import ConfigurationError
from .languages import is_language, normalized
from .local_time import is_zone
from .transport.b64url import b64url_decode
from .transport.origins import web_origin
from .transport.services import RULES_BY_NAME

# generate_vapid_keys is documented under this module's name (docs/browser-testing.md)
from .transport.vapid import generate_vapid_keys as generate_vapid_keys
from .transport.vapid import load_vapid_private_key, vapid_subject

#: the consent text of WEBPUSH_CONSENT_TEXT's default, in each language the package speaks
DEFAULT_CONSENT_TEXT: dict[str, str] = {
    "en": "I agree to receive notifications from this shop in this browser, and I agree "
          "that this browser is linked to my customer account so that messages meant for "
          "me (orders, deliveries, service) reach me here. I can withdraw this consent at "
          "any time on my devices page; the link is then removed.",
    "pl": "Zgadzam się na otrzymywanie powiadomień z tego sklepu w tej przeglądarce oraz na "
          "powiązanie tej przeglądarki z moim kontem klienta, aby przeznaczone dla mnie "
          "wiadomości (o zamówieniach, dostawach i obsłudze) docierały do mnie tutaj. Mogę w "
          "każdej chwili wycofać tę zgodę na stronie moich urządzeń; powiązanie zostanie "
          "wtedy usunięte.",
}

#: the values of WEBPUSH_PAYLOAD_FORMAT
PAYLOAD_FORMATS = ("declarative", "legacy")

DEFAULTS: dict[str, Any] = {
    #: base64url of the raw 32-byte P-256 private scalar, or a path to a PEM file.
    #: Required. ``flask webpush generate-vapid-keys`` prints a pair.
    "WEBPUSH_VAPID_PRIVATE_KEY": None,
    #: base64url of the 65-byte uncompressed public point matching the private key.
    "WEBPUSH_VAPID_PUBLIC_KEY": None,
    #: ``mailto:`` or ``https:`` URI the push services may contact (RFC 8292): an email
    #: address (``mailto:ops@shop.example``) or a site (``https://shop.example``, no path).
    "WEBPUSH_VAPID_SUBJECT": None,
    #: Redis URL of the queue. Unset only in development (the demo embeds a Redis).
    "WEBPUSH_REDIS_URL": None,
    #: RQ queue name.
    "WEBPUSH_QUEUE": "webpush",
    #: Prefix of the blueprint's routes.
    "WEBPUSH_URL_PREFIX": "/webpush",
    #: Register the blueprint in init_app; False for hosts that route by hand.
    "WEBPUSH_REGISTER_BLUEPRINT": True,
    #: Scope of the service worker. Defaults to the prefix, so it never replaces a
    #: service worker of the host's own at ``/``.
    "WEBPUSH_SW_SCOPE": None,
    #: Validity period of a notification in seconds when a call gives none (never 0).
    "WEBPUSH_DEFAULT_TTL": 86400,
    #: What the customer agrees to, shown by the opt-in widget: one text, or a dict of
    #: language -> text (the widget shows the customer's language, else the default one's).
    "WEBPUSH_CONSENT_TEXT": DEFAULT_CONSENT_TEXT,
    #: Version of that text; a consent given for another version is refused.
    "WEBPUSH_CONSENT_VERSION": "1",
    #: Check the CSRF token on state-changing browser requests.
    "WEBPUSH_CSRF_ENABLED": True,
    #: Origins accepted as push services besides the browsers' own, e.g.
    #: ``["http://127.0.0.1:8765"]``: the only way to admit a local push service.
    "WEBPUSH_EXTRA_PUSH_SERVICES": [],
    #: Revoke the subscriptions made in a session when its user logs out.
    "WEBPUSH_UNBIND_ON_LOGOUT": False,
    #: A template of the host's that the extension's pages extend (it must define a
    #: ``content`` block), so the devices and statistics pages wear the host's look.
    "WEBPUSH_BASE_TEMPLATE": None,
    #: Origin of the site (``https://shop.example``); absolute notification URLs must
    #: be on it. Unset: inside a request its host is used, otherwise only relative URLs.
    "WEBPUSH_SITE_URL": None,
    #: Key material for tracking tokens; defaults to a key derived from SECRET_KEY.
    "WEBPUSH_TRACKING_SECRET": None,
    #: Events (displayed, clicked, closed) accepted per client address and minute.
    "WEBPUSH_EVENTS_RATE_LIMIT": 600,
    #: Deliveries per batch job: each batch claims, sends and records its rows together.
    "WEBPUSH_BATCH_SIZE": 1000,
    #: Requests in flight at once in one worker process (one asyncio event loop). Results
    #: are written every half this many answers (see benchmarks/README.md for the choice).
    "WEBPUSH_SEND_CONCURRENCY": 256,
    #: Requests in flight at once to any one push-service origin.
    "WEBPUSH_PER_ORIGIN_CONCURRENCY": 64,
    #: Seconds to connect to a push service, and to wait for its answer.
    "WEBPUSH_CONNECT_TIMEOUT": 5.0,
    "WEBPUSH_READ_TIMEOUT": 10.0,
    #: Attempts per delivery before a retryable error (429, 5xx, timeout) becomes final.
    "WEBPUSH_MAX_ATTEMPTS": 5,
    #: First retry delay in seconds, doubled per attempt up to the maximum.
    "WEBPUSH_RETRY_BASE_DELAY": 10.0,
    "WEBPUSH_RETRY_MAX_DELAY": 3600.0,
    #: A delivery claimed this many seconds ago and never finished is taken as
    #: abandoned (its worker died) and sent again by ``recover``.
    "WEBPUSH_CLAIM_TIMEOUT": 300,
    #: How often, in seconds, a worker runs ``recover``.
    "WEBPUSH_RECOVER_INTERVAL": 60,
    #: Largest request body, in bytes, accepted by the subscription endpoints.
    "WEBPUSH_MAX_REQUEST_BYTES": 4096,
    #: Requests per minute accepted from one key of the push API (docs/api.md); more get
    #: 429 with Retry-After.
    "WEBPUSH_API_RATE_LIMIT": 600,
    #: Most user ids (or recipients) in one ``POST /api/v1/notifications``; larger sets go
    #: through an audience (``POST /api/v1/audiences``).
    "WEBPUSH_API_MAX_USERS": 10_000,
    #: Largest request body, in bytes, the push API accepts (10,000 ids of ~100 characters).
    "WEBPUSH_API_MAX_REQUEST_BYTES": 1_048_576,
    #: The longest a fan-out job may run, in seconds, before RQ stops it (and ``recover``
    #: runs it again, from the start): a million-member audience takes minutes.
    "WEBPUSH_FANOUT_TIMEOUT": 3600,
    #: Largest audience upload (``POST /api/v1/audiences``, read as a stream), in bytes.
    "WEBPUSH_API_MAX_AUDIENCE_BYTES": 200 * 1024 * 1024,
    #: The kinds of notification a customer chooses among (order updates, offers...):
    #: None keeps ``category=`` a free label; a dict name -> {label, description,
    #: required, default, quiet_hours, cap} turns preferences on (docs/config.md).
    "WEBPUSH_CATEGORIES": None,
    #: Hours, in each device's own time zone, when nothing is sent: None, or
    #: ("21:00", "08:00"). A delivery due inside them is held until they end.
    "WEBPUSH_QUIET_HOURS": None,
    #: The time zone of a device whose browser did not say (an IANA name).
    "WEBPUSH_DEFAULT_TIMEZONE": "UTC",
    #: What a push message holds: "declarative" (Declarative Web Push, which Safari 18.4
    #: shows without running the service worker; the service worker reads it elsewhere)
    #: or "legacy" (the package's own JSON, for service workers of a host's own that read
    #: it). Declarative needs WEBPUSH_SITE_URL: its ``navigate`` URL must be absolute.
    "WEBPUSH_PAYLOAD_FORMAT": "declarative",
    #: The language of a device whose browser did not say, and the text a notification in
    #: several languages must have (a BCP 47 tag such as "en" or "pl").
    "WEBPUSH_DEFAULT_LANGUAGE": "en",
    #: Which browser push service an origin of WEBPUSH_EXTRA_PUSH_SERVICES stands for, so
    #: that service's rules apply to it (a proxy, a test's local push service): a dict
    #: origin -> "fcm", "mozilla", "apple" or "wns". Other origins are known by their host.
    "WEBPUSH_EXTRA_PUSH_SERVICE_KINDS": {},
    #: A conversion within this long after a click on a push counts as that push's
    #: ("direct"); a timedelta or seconds, at most 90 days.
    "WEBPUSH_ATTRIBUTION_WINDOW": 86400,
    #: One with no click in its window, within this long after a push was displayed,
    #: counts as influenced by it.
    "WEBPUSH_INFLUENCE_WINDOW": 86400,
}


#: the longest a conversion window (WEBPUSH_ATTRIBUTION_WINDOW...) may be
MAX_WINDOW = timedelta(days=90)


def window(config: Any, name: str) -> timedelta:
    """The conversion window ``name`` of the config (a timedelta or seconds), checked."""
    value = config.get(name)
    span: timedelta | None
    if isinstance(value, timedelta):
        span = value
    elif isinstance(value, int) and not isinstance(value, bool):
        # compared before timedelta() sees it: a huge int would overflow it
        span = timedelta(seconds=value) if 0 < value <= MAX_WINDOW.total_seconds() else None
    else:
        raise ValueError(f"{name} must be a timedelta or a whole number of seconds.")
    if span is None or not timedelta(seconds=1) <= span <= MAX_WINDOW:
        raise ValueError(f"{name} must be between 1 second and 90 days.")
    return span


def _extra_origin(url: Any) -> str:
    """A WEBPUSH_EXTRA_PUSH_SERVICES entry as ``web_origin`` spells it; ValueError when it
    is not ``http(s)://host[:port]`` with nothing after."""
    if not isinstance(url, str):
        raise ValueError(url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(url)
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(url)
    return web_origin(parts)  # ValueError for a port out of range


log = logging.getLogger("flask_webpush_targeted")

KEYS_HINT = "Run `flask webpush generate-vapid-keys` and paste its output into your config."
MISSING_KEYS = "WEBPUSH_VAPID_PRIVATE_KEY and WEBPUSH_VAPID_PUBLIC_KEY must be set. " + KEYS_HINT


def keys_pending(config: dict[str, Any]) -> bool:
    """Validate the settings for init_app; True when both VAPID keys are unset (a new app)."""
    if config.get("WEBPUSH_VAPID_PRIVATE_KEY") or config.get("WEBPUSH_VAPID_PUBLIC_KEY"):
        validate_config(config)
        return False
    # Only a new app has neither key: its CLI must run, so that generate-vapid-keys can
    # print them. One key without the other is a mistake, refused by validate_config. The
    # site's URL is asked for once the keys are in (generate-vapid-keys prints its line).
    validate_settings(config, new_app=True)
    log.warning("webpush: %s Until then every other use raises this error.", MISSING_KEYS)
    return True


def refuse_without_keys() -> NoReturn:
    """Raise the missing-keys ConfigurationError (the blueprint's hook while keys are unset)."""
    raise ConfigurationError(MISSING_KEYS)


class PendingState:
    """Stands for an app's AppState while its VAPID keys are unset: any use raises."""

    def __getattr__(self, name: str) -> Any:
        """Raise the missing-keys ConfigurationError for any attribute but Python's own."""
        if name.startswith("__"):
            raise AttributeError(name)
        refuse_without_keys()


def validate_config(config: dict[str, Any]) -> None:
    """Check the settings once, at init_app, with errors that say how to fix them."""
    hint = KEYS_HINT
    private = config.get("WEBPUSH_VAPID_PRIVATE_KEY")
    public = config.get("WEBPUSH_VAPID_PUBLIC_KEY")
    subject = config.get("WEBPUSH_VAPID_SUBJECT")
    if not private or not public:
        raise ConfigurationError(MISSING_KEYS)
    try:
        key = load_vapid_private_key(private)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"WEBPUSH_VAPID_PRIVATE_KEY is not valid ({exc}). {hint}") from exc
    try:
        public_raw = b64url_decode(public)
    except ValueError as exc:
        raise ConfigurationError(f"WEBPUSH_VAPID_PUBLIC_KEY is not base64url. {hint}") from exc
    expected = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    if public_raw != expected:
        raise ConfigurationError(
            "WEBPUSH_VAPID_PUBLIC_KEY does not match WEBPUSH_VAPID_PRIVATE_KEY "
            "(expected the 65-byte uncompressed point of that key). " + hint
        )
    vapid_subject(subject)
    validate_settings(config)


def validate_settings(config: dict[str, Any], *, new_app: bool = False) -> None:
    """Check every setting but the VAPID ones (``new_app``: nor the ones a new app's first
    steps set with them, WEBPUSH_SITE_URL)."""
    ttl = config.get("WEBPUSH_DEFAULT_TTL")
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 < ttl <= 28 * 86400:
        raise ConfigurationError(
            "WEBPUSH_DEFAULT_TTL must be a whole number of seconds between 1 and 2419200 (28 days)."
        )
    for name in ("WEBPUSH_BATCH_SIZE", "WEBPUSH_SEND_CONCURRENCY", "WEBPUSH_MAX_ATTEMPTS",
                "WEBPUSH_CLAIM_TIMEOUT", "WEBPUSH_RECOVER_INTERVAL", "WEBPUSH_MAX_REQUEST_BYTES",
                 "WEBPUSH_EVENTS_RATE_LIMIT", "WEBPUSH_PER_ORIGIN_CONCURRENCY",
                 "WEBPUSH_API_RATE_LIMIT", "WEBPUSH_API_MAX_USERS",
                 "WEBPUSH_API_MAX_REQUEST_BYTES", "WEBPUSH_API_MAX_AUDIENCE_BYTES",
                 "WEBPUSH_FANOUT_TIMEOUT"):
        value = config.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigurationError(f"{name} must be a whole number of at least 1.")
    for name in ("WEBPUSH_CONNECT_TIMEOUT", "WEBPUSH_READ_TIMEOUT", "WEBPUSH_RETRY_BASE_DELAY",
                "WEBPUSH_RETRY_MAX_DELAY"):
        value = config.get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ConfigurationError(f"{name} must be a positive number of seconds.")
    if not str(config.get("WEBPUSH_CONSENT_VERSION") or "").strip():
        raise ConfigurationError("WEBPUSH_CONSENT_VERSION must be a non-empty string.")
    _validate_consent_text(config)
    prefix = config.get("WEBPUSH_URL_PREFIX")
    if not isinstance(prefix, str) or not prefix.startswith("/") or prefix.endswith("/"):
        raise ConfigurationError("WEBPUSH_URL_PREFIX must start with '/' and not end with '/'.")
    extra = config.get("WEBPUSH_EXTRA_PUSH_SERVICES")
    if isinstance(extra, str) or not isinstance(extra, (list, tuple)):
        raise ConfigurationError(
            "WEBPUSH_EXTRA_PUSH_SERVICES must be a list of origins, e.g. ['http://127.0.0.1:8765']."
        )
    for origin in extra:
        try:
            _extra_origin(origin)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"WEBPUSH_EXTRA_PUSH_SERVICES entry {origin!r} is not an origin "
                "(scheme://host[:port], nothing after it)."
            ) from exc
    _validate_service_kinds(config)
    for name in ("WEBPUSH_ATTRIBUTION_WINDOW", "WEBPUSH_INFLUENCE_WINDOW"):
        try:
            window(config, name)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
    _validate_targeting_rules(config)
    _validate_reach(config, require_site=not new_app)


def _validate_reach(config: dict[str, Any], *, require_site: bool) -> None:
    form = config.get("WEBPUSH_PAYLOAD_FORMAT")
    if form not in PAYLOAD_FORMATS:
        raise ConfigurationError(
            f"WEBPUSH_PAYLOAD_FORMAT must be 'declarative' or 'legacy', not {form!r}.")
    site = config.get("WEBPUSH_SITE_URL")
    if site is not None:
        try:
            if not isinstance(site, str) or "?" in site or "#" in site:
                raise ValueError(site)
            _extra_origin(site)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"WEBPUSH_SITE_URL must be the site's origin, such as 'https://shop.example' "
                f"(scheme://host[:port], nothing after it), not {site!r}.") from exc
    elif form == "declarative" and require_site:
        raise ConfigurationError(
            "WEBPUSH_SITE_URL must be set (the site's origin, such as "
            "'https://shop.example'): WEBPUSH_PAYLOAD_FORMAT 'declarative', the default, "
            "opens an absolute URL when a notification is clicked. Set WEBPUSH_SITE_URL, or "
            "set WEBPUSH_PAYLOAD_FORMAT = 'legacy' to keep the package's own JSON.")
    if not is_language(config.get("WEBPUSH_DEFAULT_LANGUAGE")):
        raise ConfigurationError(
            "WEBPUSH_DEFAULT_LANGUAGE must be a BCP 47 language tag such as 'en' or 'pl'.")


def consent_texts(config: Mapping[str, Any]) -> dict[str, str]:
    """WEBPUSH_CONSENT_TEXT as language -> text: one text is the default language's."""
    text = config["WEBPUSH_CONSENT_TEXT"]
    if isinstance(text, Mapping):
        return {normalized(key): value for key, value in text.items()}
    return {normalized(config["WEBPUSH_DEFAULT_LANGUAGE"]): text}


def _validate_consent_text(config: dict[str, Any]) -> None:
    text = config.get("WEBPUSH_CONSENT_TEXT")
    if not isinstance(text, Mapping):
        if not isinstance(text, str) or not text.strip():
            raise ConfigurationError(
                "WEBPUSH_CONSENT_TEXT must be a non-empty string, or a dict of language "
                "-> non-empty string such as {'en': '...', 'pl': '...'}.")
        return
    seen: set[str] = set()
    for key, value in text.items():
        if not is_language(key):
            raise ConfigurationError(
                f"WEBPUSH_CONSENT_TEXT: {str(key)[:40]!r} is not a language tag such as "
                "'en' or 'pl'.")
        if normalized(key) in seen:
            raise ConfigurationError(f"WEBPUSH_CONSENT_TEXT has the language {key!r} twice.")
        seen.add(normalized(key))
        if not isinstance(value, str) or not value.strip():
            raise ConfigurationError(
                f"WEBPUSH_CONSENT_TEXT[{key!r}] must be a non-empty string.")
    default = config.get("WEBPUSH_DEFAULT_LANGUAGE")
    if is_language(default) and normalized(str(default)) not in seen:
        raise ConfigurationError(
            f"WEBPUSH_CONSENT_TEXT must have a text in WEBPUSH_DEFAULT_LANGUAGE {default!r}: "
            "a customer whose language it lacks is shown that one.")


def _validate_service_kinds(config: dict[str, Any]) -> None:
    kinds = config.get("WEBPUSH_EXTRA_PUSH_SERVICE_KINDS")
    names = ", ".join(repr(name) for name in RULES_BY_NAME)
    example = "e.g. {'http://127.0.0.1:8765': 'wns'}"
    if not isinstance(kinds, Mapping):
        raise ConfigurationError(
            f"WEBPUSH_EXTRA_PUSH_SERVICE_KINDS must be a dict of origin -> kind ({names}), "
            f"{example}.")
    listed = set()
    for origin in config.get("WEBPUSH_EXTRA_PUSH_SERVICES") or ():
        try:
            listed.add(_extra_origin(origin))
        except (ValueError, TypeError):
            continue  # refused above
    for origin, kind in kinds.items():
        try:
            spelled = _extra_origin(origin)
        except (ValueError, TypeError):
            spelled = None
        if spelled is None or spelled not in listed:
            raise ConfigurationError(
                f"WEBPUSH_EXTRA_PUSH_SERVICE_KINDS names {origin!r}, which is not an origin "
                "listed in WEBPUSH_EXTRA_PUSH_SERVICES: list it there too (a kind applies "
                "only to an admitted extra push service).")
        if kind not in RULES_BY_NAME:
            raise ConfigurationError(
                f"WEBPUSH_EXTRA_PUSH_SERVICE_KINDS gives {origin!r} the kind {kind!r}; a kind "
                f"is one of {names}.")


def _validate_targeting_rules(config: dict[str, Any]) -> None:
    try:
        parse_categories(config.get("WEBPUSH_CATEGORIES"))
    except ValueError as exc:
        raise ConfigurationError(f"WEBPUSH_CATEGORIES: {exc}.") from exc
    try:
        parse_quiet_hours(config.get("WEBPUSH_QUIET_HOURS"))
    except ValueError as exc:
        raise ConfigurationError(
            f"WEBPUSH_QUIET_HOURS must be None or a pair such as ('21:00', '08:00'): {exc}."
        ) from exc
    if not is_zone(config.get("WEBPUSH_DEFAULT_TIMEZONE")):
        raise ConfigurationError(
            "WEBPUSH_DEFAULT_TIMEZONE must be an IANA time zone name such as 'UTC' or "
            "'Europe/Warsaw'."
        )


def extra_push_origins(config: dict[str, Any]) -> frozenset[str]:
    """The origins of WEBPUSH_EXTRA_PUSH_SERVICES, spelled by ``web_origin``."""
    return frozenset(_extra_origin(o) for o in config["WEBPUSH_EXTRA_PUSH_SERVICES"])


def extra_push_service_kinds(config: dict[str, Any]) -> dict[str, str]:
    """WEBPUSH_EXTRA_PUSH_SERVICE_KINDS with its origins spelled by ``web_origin``, as the
    sender compares them."""
    return {_extra_origin(origin): kind
            for origin, kind in config["WEBPUSH_EXTRA_PUSH_SERVICE_KINDS"].items()}
