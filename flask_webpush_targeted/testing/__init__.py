"""Real test doubles for Web Push: a local push service and a headless Firefox driver.

Needs the ``testing`` extra: ``pip install flask-webpush-targeted[testing]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .push_service import Ack, LocalPushService, ReceivedPush, Subscription, tls_contexts

if TYPE_CHECKING:
    from .firefox import FirefoxSession

__all__ = ["Ack", "FirefoxSession", "LocalPushService", "ReceivedPush", "Subscription",
           "tls_contexts"]


def __getattr__(name: str) -> Any:
    """Import FirefoxSession lazily, so the package works without marionette_driver."""
    if name == "FirefoxSession":
        from .firefox import FirefoxSession

        return FirefoxSession
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
