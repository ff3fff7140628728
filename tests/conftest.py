"""Shared fixtures: a small host app on SQLite and on PostgreSQL, logged-in clients,
real subscriptions (P-256 keys made here), the real Redis.

Every test that takes ``app`` runs twice, once per database. PostgreSQL tests use
a schema of their own per test session, so parallel runs do not collide.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from hostapp import REDIS_URL, VAPID_PRIVATE, VAPID_PUBLIC, json_config, make_host_app

from flask_webpush_targeted import WebPush
from flask_webpush_targeted.transport.b64url import b64url_encode

POSTGRES_URL = os.environ.get(
    "WEBPUSH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
REDIS_START = ('redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
               "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log")

FCM = "https://fcm.googleapis.com/fcm/send/"
ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def postgres_schema() -> Iterator[str]:
    """A fresh schema in the test database for this session; fails clearly if PG is down."""
    engine = sa.create_engine(POSTGRES_URL)
    schema = f"wp_{uuid.uuid4().hex[:10]}"
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL does not answer at {POSTGRES_URL} ({exc.orig}). "
                    f"Start it with: {PG_START}", pytrace=False)
    yield schema
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A database URL: a SQLite file, or the PostgreSQL test database in this session's schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    schema = request.getfixturevalue("postgres_schema")
    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"


@pytest.fixture
def make_app(db_url: str) -> Iterator[Callable[..., tuple[Flask, SQLAlchemy, WebPush]]]:
    """Build host apps with extra config and their tables; drop them after.

    ``template_folder`` becomes the host's own template folder, for override tests.
    """
    made: list[tuple[Flask, SQLAlchemy]] = []

    def factory(template_folder: Path | None = None,
                **config: Any) -> tuple[Flask, SQLAlchemy, WebPush]:
        app, db, webpush = make_host_app(db_url, **config)
        if template_folder is not None:
            app.template_folder = str(template_folder)
        with app.app_context():
            db.create_all()
        made.append((app, db))
        return app, db, webpush

    yield factory
    for app, db in made:
        with app.app_context():
            db.session.remove()
            db.drop_all()
            db.engine.dispose()


@pytest.fixture
def host(make_app: Callable[..., tuple[Flask, SQLAlchemy, WebPush]],
         ) -> tuple[Flask, SQLAlchemy, WebPush]:
    """(app, db, webpush) with the tables created, dropped after the test."""
    return make_app()


@pytest.fixture
def app(host: tuple[Flask, SQLAlchemy, WebPush]) -> Flask:
    return host[0]


@pytest.fixture
def db(host: tuple[Flask, SQLAlchemy, WebPush]) -> SQLAlchemy:
    return host[1]


@pytest.fixture
def webpush(host: tuple[Flask, SQLAlchemy, WebPush]) -> WebPush:
    return host[2]


def csrf_of(html: str) -> str:
    """The csrf_token form field of a page."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no csrf_token field in the page"
    return match.group(1)


def log_in(client: Any, email: str, password: str) -> Any:
    """Log in to the example shop through its form."""
    token = csrf_of(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"email": email, "password": password,
                                       "csrf_token": token})


class LoggedInClient:
    """A test client logged in as one user, sending that session's CSRF token."""

    def __init__(self, app: Flask, user_id: str) -> None:
        self.user_id = user_id
        self.http = app.test_client()
        self.csrf = self.http.get(f"/login/{user_id}").get_data(as_text=True)

    def post_json(self, url: str, body: Any, **kw: Any) -> Any:
        headers = {"X-CSRF-Token": self.csrf, **kw.pop("headers", {})}
        return self.http.post(url, json=body, headers=headers, **kw)

    def subscribe(self, subscription: dict[str, Any], *, version: str = "1", **extra: Any) -> Any:
        body = {"subscription": subscription,
                "consent": {"notifications": True, "link_to_account": True,
                            "text_version": version}, **extra}
        return self.post_json("/webpush/subscriptions", body)

    def delete(self, url: str) -> Any:
        return self.http.delete(url, headers={"X-CSRF-Token": self.csrf})


@pytest.fixture
def client(app: Flask) -> LoggedInClient:
    """A client logged in as user "1"."""
    return LoggedInClient(app, "1")


@pytest.fixture
def other_client(app: Flask) -> LoggedInClient:
    """A client logged in as user "2"."""
    return LoggedInClient(app, "2")


def assert_no_secrets(text: str, *subscriptions: dict[str, Any]) -> None:
    """Neither an endpoint (nor its last part) nor a key of these subscriptions is in text."""
    for sub in subscriptions:
        assert sub["endpoint"] not in text
        assert sub["endpoint"].rsplit("/", 1)[-1] not in text
        assert sub["keys"]["p256dh"] not in text
        assert sub["keys"]["auth"] not in text


def browser_keys() -> dict[str, str]:
    """A browser-like key pair's public half and a fresh auth secret, base64url."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return {"p256dh": b64url_encode(public), "auth": b64url_encode(secrets.token_bytes(16))}


def make_subscription(endpoint: str | None = None) -> dict[str, Any]:
    """A PushSubscription JSON with real keys at a known push service."""
    return {"endpoint": endpoint or FCM + secrets.token_urlsafe(24), "expirationTime": None,
            "keys": browser_keys()}


@pytest.fixture
def redis_conn() -> Any:
    """A connection to the real Redis; fails with how to start it if it does not answer."""
    import redis

    conn = redis.Redis.from_url(REDIS_URL)
    try:
        conn.ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"Redis does not answer at {REDIS_URL} ({exc}). Start it with: {REDIS_START}",
                    pytrace=False)
    return conn


# -- real servers and browsers ----------------------------------------------------------------


class LiveServer:
    """A Flask app served by werkzeug on a free loopback port, in a thread."""

    def __init__(self, app: Flask) -> None:
        from werkzeug.serving import make_server

        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        # Its clicked notifications (the declarative format's absolute URLs) lead here.
        app.config["WEBPUSH_SITE_URL"] = self.url
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(5)


@pytest.fixture(scope="session")
def push_service() -> Iterator[Any]:
    """The project's local push service (HTTP + Mozilla WebSocket) on loopback."""
    from flask_webpush_targeted.testing import LocalPushService

    with LocalPushService() as service:
        yield service


def shop_environment(folder: Path, push_service: Any, *, secret_key: str,
                     queue: str | None = None) -> dict[str, str]:
    """The environment variables that configure the example shop (see example_app.create_app):
    its own SQLite file in ``folder``, the test VAPID keys, the real Redis, the local push
    service admitted through WEBPUSH_EXTRA_PUSH_SERVICES, and a queue of its own if given."""
    env = {
        "DATABASE_URL": f"sqlite:///{folder / 'shop.db'}", "SECRET_KEY": secret_key,
        "WEBPUSH_VAPID_PRIVATE_KEY": VAPID_PRIVATE, "WEBPUSH_VAPID_PUBLIC_KEY": VAPID_PUBLIC,
        "WEBPUSH_REDIS_URL": REDIS_URL, "WEBPUSH_EXTRA_PUSH_SERVICES": push_service.origin,
    }
    if queue is not None:
        env["WEBPUSH_QUEUE"] = queue
    return env


def make_example_shop(env: dict[str, str]) -> Flask:
    """The example shop built from ``env`` exactly as a worker process started with that
    environment builds it, with its tables created and the demo customers seeded."""
    from unittest import mock

    from example_app import create_app, db
    from example_app.models import seed

    with mock.patch.dict(os.environ, env):
        app = create_app()
    with app.app_context():
        db.create_all()
        seed()
    return app


@pytest.fixture(scope="session")
def live_shop(push_service: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The example shop on a real HTTP server, its SQLite file, the real Redis, and the
    local push service admitted through WEBPUSH_EXTRA_PUSH_SERVICES."""
    env = shop_environment(tmp_path_factory.mktemp("shop"), push_service, secret_key="live-shop")
    server = LiveServer(make_example_shop(env))
    yield server
    server.stop()


class ShopWorker:
    """A real ``flask --app example_app webpush worker`` process (an RQ worker with its
    scheduler) configured, as in production, by environment variables only."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        import subprocess
        import sys

        self.env = env
        self.queue = env.get("WEBPUSH_QUEUE", "webpush")
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "example_app", "webpush", "worker", *args],
            env={**os.environ, **env}, cwd=ROOT_DIR, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def log_tail(self, lines: int = 40) -> str:
        from flask_webpush_targeted.testing.firefox import tail_of

        return tail_of(self.log_path, lines)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the worker has registered itself in Redis for its queue."""
        import time

        import redis
        from rq import Queue, Worker

        conn = redis.Redis.from_url(self.env["WEBPUSH_REDIS_URL"])
        queue = Queue(self.queue, connection=conn)
        deadline = time.monotonic() + timeout
        while not Worker.all(queue=queue):
            if self.process.poll() is not None:
                pytest.fail(f"the worker exited with {self.process.returncode}:\n"
                            f"{self.log_tail()}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"the worker did not start within {timeout}s:\n{self.log_tail()}",
                            pytrace=False)
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown (SIGTERM: the current job finishes), then kill what is left."""
        import signal
        import subprocess

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # a work horse left behind
        self._log.close()


def empty_queue(app: Flask) -> None:
    """Delete the jobs left in the app's queue and in its scheduled and failed registries."""
    from flask_webpush_targeted.redis_queue import get_queue

    with app.app_context():
        queue = get_queue()
        for registry in (queue.scheduled_job_registry, queue.failed_job_registry):
            for job_id in registry.get_job_ids():
                registry.remove(job_id, delete_job=True)
        queue.empty()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright's Python client (a persistent context:
    Chromium refuses the Push API in incognito ones), one per test module."""
    import tempfile

    from browser import CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="webpush-chromium-"), executable_path="/usr/bin/chromium",
            headless=True, args=CHROMIUM_ARGS, viewport={"width": 1000, "height": 900})
        yield context
        context.close()


@pytest.fixture(scope="session")
def firefox(push_service: Any) -> Iterator[Any]:
    """One headless Firefox for the session, its push client pointed at the local service."""
    from flask_webpush_targeted.testing import FirefoxSession

    with FirefoxSession(push_service.websocket_url) as session:
        yield session


# -- sending: the host app, real RQ worker processes, the local push service -------------------

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


class SendingHost:
    """A host app wired to the local push service and a queue of its own, plus helpers to
    subscribe users and to run real `flask webpush worker` processes on the same config."""

    def __init__(self, db_url: str, push_service: Any, **config: Any) -> None:
        self.push_service = push_service
        self.config = {
            "SQLALCHEMY_DATABASE_URI": db_url,
            "WEBPUSH_QUEUE": f"webpush-test-{uuid.uuid4().hex[:8]}",
            "WEBPUSH_EXTRA_PUSH_SERVICES": [push_service.origin],
            "WEBPUSH_VAPID_PRIVATE_KEY": VAPID_PRIVATE, "WEBPUSH_VAPID_PUBLIC_KEY": VAPID_PUBLIC,
            "WEBPUSH_RETRY_BASE_DELAY": 0.5, "WEBPUSH_BATCH_SIZE": 10,
            "WEBPUSH_SITE_URL": "https://shop.example", **config,
        }
        settings = dict(self.config)
        self.app, self.db, self.webpush = make_host_app(
            settings.pop("SQLALCHEMY_DATABASE_URI"), **settings)
        with self.app.app_context():
            self.db.create_all()

    def close(self) -> None:
        empty_queue(self.app)
        with self.app.app_context():
            self.db.session.remove()
            self.db.drop_all()
            self.db.engine.dispose()

    def subscribe(self, user_id: str, label: str | None = None, *,
                  timezone: str | None = None) -> Any:
        """A browser-like subscription minted by the push service, stored for ``user_id``
        (in the browser's ``timezone``, if given)."""
        from flask_webpush_targeted.subscriptions import SubscribeRequest, SubscriptionInfo

        sub = self.push_service.new_subscription()
        info = SubscriptionInfo(sub["endpoint"], sub["keys"]["p256dh"], sub["keys"]["auth"])
        with self.app.app_context():
            row, _ = self.webpush.store.subscribe(
                user_id, SubscribeRequest(info, "1", label, timezone), None)
            self.db.session.refresh(row)
            self.db.session.expunge(row)
            return row

    def env(self, **overrides: Any) -> dict[str, str]:
        import json

        return {**os.environ,
                "WEBPUSH_TEST_APP": json.dumps(json_config({**self.config, **overrides})),
                "PYTHONPATH": TESTS_DIR + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def worker_command(self, *args: str) -> list[str]:
        import sys

        return [sys.executable, "-m", "flask", "--app", "hostapp:create_app", "webpush",
                "worker", *args]

    def run_worker(self, *args: str, timeout: float = 60, **config: Any) -> Any:
        """Run `flask webpush worker --burst` in a new process until the queue is empty;
        ``config`` overrides settings of the worker's app only."""
        import subprocess

        done = subprocess.run(self.worker_command("--burst", *args), env=self.env(**config),
                              capture_output=True, text=True, timeout=timeout, cwd=TESTS_DIR)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    def start_worker(self, *args: str) -> Any:
        """Start a long-running worker process (with its scheduler); the caller stops it."""
        import subprocess

        return subprocess.Popen(self.worker_command(*args), env=self.env(), cwd=TESTS_DIR,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)

    def deliveries(self, notification_id: int) -> list[Any]:
        import sqlalchemy as sa

        D = self.webpush.models.Delivery
        with self.app.app_context():
            rows = self.db.session.scalars(sa.select(D).where(D.notification_id == notification_id)
                                           .order_by(D.id)).all()
            for row in rows:
                self.db.session.expunge(row)
            return list(rows)

    def notification(self, notification_id: int) -> Any:
        with self.app.app_context():
            n = self.db.session.get(self.webpush.models.Notification, notification_id)
            self.db.session.expunge(n)
            return n


def admin_http(host: SendingHost) -> Any:
    """A test client of the host logged in as its administrator (user 9), who is allowed
    the statistics pages."""
    @host.webpush.stats_access
    def admins(user: Any) -> bool:
        return bool(user.is_admin)

    return LoggedInClient(host.app, "9").http


@pytest.fixture
def make_host(db_url: str, push_service: Any, redis_conn: Any,
              ) -> Iterator[Callable[..., SendingHost]]:
    """SendingHost(db_url, push_service, **config), closed after the test."""
    made: list[SendingHost] = []

    def make(**config: Any) -> SendingHost:
        made.append(SendingHost(db_url, push_service, **config))
        return made[-1]

    yield make
    for host in made:
        host.close()


@pytest.fixture
def sending(make_host: Callable[..., SendingHost]) -> SendingHost:
    """A SendingHost on each database, with the real Redis and the local push service."""
    return make_host()
