"""The state the extension keeps for one app, in one object reached through ``current_app``.

Flask-SQLAlchemy's way: the extension object (``app.extensions["webpush"]``, shared by
the apps it is initialised on) holds no app; what belongs to one app lives in its
``AppState``, created by ``init_app``, at ``app.extensions["webpush.state"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask, current_app

from .categories import Category
from .local_time import Window
from .models import Models

if TYPE_CHECKING:  # the host's object, only annotated here
    from flask_sqlalchemy import SQLAlchemy

if TYPE_CHECKING:  # annotations only: extension and worker_state are above this module
    from redis import Redis

    from .extension import WebPush
    from .worker_state import SendingState


@dataclass
class AppState:
    """One app's database, models and per-process resources."""

    #: the host's Flask-SQLAlchemy object
    db: SQLAlchemy
    models: Models
    #: WEBPUSH_EXTRA_PUSH_SERVICES, normalised once at init_app
    extra_origins: frozenset[str]
    #: WEBPUSH_CATEGORIES parsed (None: categories off), WEBPUSH_QUIET_HOURS parsed and
    #: WEBPUSH_DEFAULT_TIMEZONE, all read once at init_app
    categories: dict[str, Category] | None = None
    quiet_hours: Window | None = None
    default_zone: str = "UTC"
    #: the Redis client, created on first use (``redis_queue.redis_connection``)
    redis: Redis | None = None
    #: this process's VAPID signer, endpoint guard and sender, built when a worker starts
    #: or on first use (``worker_state``)
    sending: SendingState | None = None


def app_state(app: Flask | None = None) -> AppState:
    """The state of ``app``, or of the current app."""
    state: AppState = (app or current_app).extensions["webpush.state"]
    return state


def extension(app: Flask | None = None) -> WebPush:
    """The WebPush extension of ``app``, or of the current app."""
    ext: WebPush = (app or current_app).extensions["webpush"]
    return ext
