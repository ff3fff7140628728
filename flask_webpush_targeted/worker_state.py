"""The sending state of a worker process: built once when the worker starts, handed to
every job, closed when the worker stops.

``SendingState`` holds what sending needs and what is worth keeping from one batch to the
next: the VAPID key, loaded and checked, with the signed header per push service
(``VapidHeaders``); the endpoint guard with its DNS answers (``EndpointGuard``); and the
``PushSender``, with its TLS context, 429 pauses, keep-alive connections and event loop.
``make_worker`` builds it before the worker takes its first job, as arq's ``on_startup``
builds a worker's resources, and keeps it on the app's ``AppState``; the worker closes it
when it stops. Jobs reach it through ``sending_state()``.

What lives across jobs, by how the jobs run:

``flask webpush worker`` (``AppSimpleWorker``, the default: jobs run in the worker's process;
each process of ``--processes N`` likewise)
    Everything: one signed VAPID header per push service, renewed an hour before its 12 h
    expiry; each host's DNS answer for a minute; the keep-alive connections, their TLS
    handshakes done; the pauses services asked for with 429.

``flask webpush worker --fork`` (``AppWorker``: a work horse forked per job)
    The state is built in the worker before any fork, so every horse starts with the VAPID
    key already loaded and the subject checked, the TLS context with its CA certificates
    read, and the guard's and sender's settings. Their caches are inherited too, but the
    worker itself sends nothing and nothing is signed ahead, so they are empty: each horse
    signs its header per push service (one ECDSA signature; the same header as the other
    horses', ``VapidHeaders``), resolves hosts again, and
    opens its own connections on an event loop of its own (never the worker's sockets or
    loop, which it leaves untouched); what a horse learns ends with it.

Anywhere else (a test calling ``send_batch``, a plain ``rq worker``)
    Built by the first job of the process that needs it, kept for the process's later
    jobs, closed when the process exits. Under a plain forking ``rq worker`` that is once
    per work horse, which ends with ``os._exit`` (its sockets close with it): nothing
    lives across jobs.
"""

from __future__ import annotations

import atexit
import threading
from dataclasses import dataclass

from flask import Flask, current_app

from .clock import monotonic
from .config import extra_push_service_kinds
from .context import app_state
from .transport.guard import EndpointGuard
from .transport.sender import PushSender
from .transport.vapid import VapidHeaders, load_vapid_private_key


@dataclass
class SendingState:
    """What sending keeps between jobs: VAPID signer, endpoint guard and sender."""

    vapid: VapidHeaders
    guard: EndpointGuard
    sender: PushSender
    #: made by a job rather than by a worker starting: then closed when the process exits
    on_first_use: bool = False

    def close(self) -> None:
        """Close the sender's connections and event loop (those of this process)."""
        if self.on_first_use:
            atexit.unregister(self.close)
        self.sender.close()


#: one first-use build at a time (jobs run in one thread, tests may not)
_building = threading.Lock()


def build_sending_state(app: Flask) -> SendingState:
    """A new sending state from the app's configuration (the VAPID key is loaded here)."""
    config = app.config
    vapid = VapidHeaders(load_vapid_private_key(config["WEBPUSH_VAPID_PRIVATE_KEY"]),
                         config["WEBPUSH_VAPID_SUBJECT"])
    guard = EndpointGuard(app_state(app).extra_origins)
    sender = PushSender(
        vapid, guard,
        timeout=(config["WEBPUSH_CONNECT_TIMEOUT"], config["WEBPUSH_READ_TIMEOUT"]),
        concurrency=config["WEBPUSH_SEND_CONCURRENCY"],
        per_origin=config["WEBPUSH_PER_ORIGIN_CONCURRENCY"],
        max_retry_delay=config["WEBPUSH_RETRY_MAX_DELAY"],
        clock=monotonic,
        service_kinds=extra_push_service_kinds(config),
    )
    return SendingState(vapid, guard, sender)


def start_sending(app: Flask) -> SendingState:
    """Build the app's sending state as a worker starts (closing one a job built on first use;
    another worker's, in this process, stays open until that worker stops it)."""
    state = build_sending_state(app)
    previous, app_state(app).sending = app_state(app).sending, state
    if previous is not None and previous.on_first_use:
        previous.close()
    return state


def stop_sending(app: Flask, state: SendingState) -> None:
    """Close ``state`` as its worker stops, and forget it if it is still the app's."""
    if app_state(app).sending is state:
        app_state(app).sending = None
    state.close()


def sending_state(app: Flask | None = None) -> SendingState:
    """The sending state of the app (the current one by default), built on first use."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    holder = app_state(app)
    state = holder.sending
    if state is None:
        with _building:
            state = holder.sending
            if state is None:
                state = build_sending_state(app)
                state.on_first_use = True
                # Nobody stops this process's state but its end; a worker's closes it sooner.
                atexit.register(state.close)
                holder.sending = state
    return state

