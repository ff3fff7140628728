"""The sending state of a worker process: one PushSender whose VAPID header cache, DNS
answers and keep-alive connections every batch of the process reuses."""

from __future__ import annotations

import atexit
import os

from flask import current_app

from .clock import monotonic
from .context import app_state
from .transport.guard import EndpointGuard
from .transport.sender import PushSender
from .transport.vapid import VapidHeaders, load_vapid_private_key


def worker_sender() -> PushSender:
    """This process's sender: VAPID header cache and keep-alive pool live across jobs."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    cached = app.extensions.get("webpush.sender")
    if cached is None or cached[1] != _pid():
        config = app.config
        sender = PushSender(
            VapidHeaders(load_vapid_private_key(config["WEBPUSH_VAPID_PRIVATE_KEY"]),
                         config["WEBPUSH_VAPID_SUBJECT"]),
            EndpointGuard(app_state(app).extra_origins),
            timeout=(config["WEBPUSH_CONNECT_TIMEOUT"], config["WEBPUSH_READ_TIMEOUT"]),
            concurrency=config["WEBPUSH_SEND_CONCURRENCY"],
            per_origin=config["WEBPUSH_PER_ORIGIN_CONCURRENCY"],
            max_retry_delay=config["WEBPUSH_RETRY_MAX_DELAY"],
            clock=monotonic,
        )
        cached = (sender, _pid())
        app.extensions["webpush.sender"] = cached
        atexit.register(sender.close)
    return cached[0]


def _pid() -> int:
    return os.getpid()
