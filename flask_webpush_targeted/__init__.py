"""Targeted Web Push for Flask: consented, per-user, per-device notifications."""

from __future__ import annotations

from . import signals
from .exceptions import (
    APIError,
    BadRequestError,
    ConfigurationError,
    ConsentRequired,
    CSRFError,
    InvalidConversion,
    InvalidNotification,
    InvalidSubscription,
    LoginRequired,
    NotificationNotFound,
    PayloadTooLarge,
    QueueUnavailable,
    RateLimited,
    RequestTooLarge,
    SubscriptionNotFound,
    TrackingTokenInvalid,
    WebPushError,
)
from .extension import WebPush

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "BadRequestError",
    "CSRFError",
    "ConfigurationError",
    "ConsentRequired",
    "InvalidConversion",
    "InvalidNotification",
    "InvalidSubscription",
    "LoginRequired",
    "NotificationNotFound",
    "PayloadTooLarge",
    "QueueUnavailable",
    "RateLimited",
    "RequestTooLarge",
    "SubscriptionNotFound",
    "TrackingTokenInvalid",
    "WebPush",
    "WebPushError",
    "__version__",
    "signals",
]
