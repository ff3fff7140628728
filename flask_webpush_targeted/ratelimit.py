"""The one rate limiter of the routes: a fixed window counted in Redis.

Used by the service worker's events (per client address) and the push API (per key).
"""

from __future__ import annotations

import logging
import time

from .exceptions import RateLimited
from .redis_queue import REDIS_ERRORS, redis_connection

log = logging.getLogger("flask_webpush_targeted")

#: the length of a window, in seconds
WINDOW = 60


def check_rate_limit(prefix: str, limit: int, message: str, *,
                     outage_warning: str | None = None) -> None:
    """Count this request under ``prefix``; RateLimited once more than ``limit`` were counted.

    The window is fixed: the wall-clock minute (``int(now // 60)``), one Redis counter per
    prefix and minute (``<prefix>:<minute>``), kept two minutes. Every request counts,
    refused ones included, and the count starts again at 0 on the minute, so a client may
    send up to twice ``limit`` across a window's edge. Retry-After is the seconds left in
    the window the request was counted in (1 to 60).

    When Redis does not answer the request goes through, uncounted: an event is then
    counted rather than lost, and an API call is served (nothing is sent before the queue
    is back anyway). ``outage_warning``, if given, is logged then.
    """
    now = time.time()
    key = f"{prefix}:{int(now // WINDOW)}"
    try:
        pipe = redis_connection().pipeline()
        pipe.incr(key)
        pipe.expire(key, 2 * WINDOW)
        count = pipe.execute()[0]
    except REDIS_ERRORS:
        if outage_warning is not None:
            log.warning("%s", outage_warning)
        return
    if count > limit:
        raise RateLimited(message, retry_after=max(1, WINDOW - int(now) % WINDOW))
