"""The rules of each browser push service, in one table, looked up by endpoint host.

Push services differ where RFC 8030 and RFC 8292 leave room: how long they keep a
message, which answer means "slow down", how long a VAPID JWT may live and how often it
may be renewed. The sender applies a service's rule at send time (``sender.py``: the TTL
header, the answer's meaning; ``vapid.py``: the JWT's lifetime); what is stored (a
notification's validity, its deliveries' expiry, the statistics) never changes with it.

docs/deployment.md ("Push services' rules") shows the same table for people.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

#: RFC 8292 section 2: a VAPID JWT's ``exp`` is at most 24 hours ahead
VAPID_MAX_LIFETIME = 24 * 3600


@dataclass(frozen=True)
class PushServiceRule:
    """What one push service asks of an application server."""

    #: the name WEBPUSH_EXTRA_PUSH_SERVICE_KINDS refers to it by
    name: str
    #: hosts it sends from: a host matches one that it equals or ends with after a dot
    host_suffixes: tuple[str, ...] = ()
    #: the longest it keeps a message, in seconds: a longer TTL is sent as this; None: no cap
    max_ttl: int | None = None
    #: the statuses it answers when it wants fewer requests: retried with backoff and
    #: the origin paused, as a 429 is (Retry-After honoured, WEBPUSH_RETRY_MAX_DELAY bounds it)
    throttle_statuses: frozenset[int] = frozenset({429})
    #: the furthest ahead a VAPID JWT's ``exp`` may be, in seconds
    vapid_max_lifetime: int = VAPID_MAX_LIFETIME
    #: the shortest time one signed VAPID header is used before a new one is signed
    vapid_min_reuse: int = 0
    #: whether it refuses a request without a TTL header (the sender always sends one)
    ttl_required: bool = False

    def ttl_header(self, ttl: int) -> int:
        """The TTL to send for a message valid ``ttl`` more seconds: at most ``max_ttl``."""
        return ttl if self.max_ttl is None or ttl <= self.max_ttl else self.max_ttl


#: Any other push service (and an origin of WEBPUSH_EXTRA_PUSH_SERVICES not given a kind):
#: RFC 8030 and RFC 8292 as they are, nothing capped.
DEFAULT_RULE = PushServiceRule("default")

#: The browsers' push services.
PUSH_SERVICE_RULES: tuple[PushServiceRule, ...] = (
    # Chrome, Edge on Android, Opera, Samsung Internet: a message is kept at most 4 weeks.
    PushServiceRule("fcm", ("fcm.googleapis.com", "android.googleapis.com"),
                    max_ttl=2_419_200),
    # Firefox (autopush): at most 30 days, and a request without TTL is refused (errno 111).
    PushServiceRule("mozilla", ("push.services.mozilla.com",), max_ttl=2_592_000,
                    ttl_required=True),
    # Safari: about 30 days; a JWT whose exp is more than a day ahead is refused (403), and
    # Apple asks that the JWT be renewed at most once an hour.
    PushServiceRule("apple", ("push.apple.com",), max_ttl=2_592_000,
                    vapid_max_lifetime=24 * 3600, vapid_min_reuse=3600),
    # Edge on Windows (WNS): TTL required; throttling is answered 406 Not Acceptable.
    PushServiceRule("wns", ("notify.windows.com",), throttle_statuses=frozenset({406, 429}),
                    ttl_required=True),
)

#: the rules by name, for WEBPUSH_EXTRA_PUSH_SERVICE_KINDS
RULES_BY_NAME: dict[str, PushServiceRule] = {rule.name: rule for rule in PUSH_SERVICE_RULES}


def rule_for_host(host: str) -> PushServiceRule:
    """The rule of the push service at ``host`` (any case, a trailing dot ignored);
    ``DEFAULT_RULE`` for a host of none of them."""
    host = host.lower().rstrip(".")
    for rule in PUSH_SERVICE_RULES:
        for suffix in rule.host_suffixes:
            if host == suffix or host.endswith("." + suffix):
                return rule
    return DEFAULT_RULE


def rule_for_origin(origin: str, kinds: Mapping[str, str] | None = None) -> PushServiceRule:
    """The rule for a push-service origin (``web_origin``'s spelling): the kind
    WEBPUSH_EXTRA_PUSH_SERVICE_KINDS gives it, else the rule of its host.

    Called once per origin (the sender keeps the answer): not on the hot path.
    """
    if kinds:
        name = kinds.get(origin)
        if name is not None:
            return RULES_BY_NAME[name]
    try:
        host = urlsplit(origin).hostname or ""
    except ValueError:
        return DEFAULT_RULE
    return rule_for_host(host)
