"""Shared set-up for the benchmarks: PostgreSQL schema, the real Redis, a push sink,
subscriptions in bulk, and `flask webpush worker` processes on the same config."""

from __future__ import annotations

import json
import os
import secrets
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from hostapp import VAPID_PRIVATE as VAPID_PRIVATE  # noqa: E402 - re-exported
from hostapp import VAPID_PUBLIC, make_host_app  # noqa: E402

from flask_webpush_targeted.testing.push_service import self_signed_certificate  # noqa: E402
from flask_webpush_targeted.transport.b64url import b64url_encode  # noqa: E402

POSTGRES_URL = os.environ.get("WEBPUSH_BENCH_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
RESULTS = ROOT / "benchmarks" / "results"
#: a 313-byte payload once the tracking token is in, as in the issue's figures
BODY = "Your order #48213 has shipped and will arrive tomorrow between 9:00 and 12:00. " * 2


def tls_files(folder: Path) -> tuple[Path, Path]:
    """A new self-signed certificate for 127.0.0.1 and its key, written in ``folder`` as
    cert.pem and key.pem. The certificate is its own CA: point a client at cert.pem
    (SSL_CERT_FILE for the worker's ``ssl.create_default_context()``, REQUESTS_CA_BUNDLE for
    pywebpush, NODE_EXTRA_CA_CERTS for Node) and it trusts the sink."""
    cert_pem, key_pem = self_signed_certificate("benchmark push sink")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert_pem)
    key_file.write_bytes(key_pem)
    return cert_file, key_file


@contextmanager
def push_sink(tls: tuple[Path, Path] | None = None
              ) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """The lean push service in its own process; yields its origin. With ``tls`` (a
    certificate and key, see ``tls_files``) it serves HTTPS."""
    extra = ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])] if tls else []
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "push_sink.py"), *extra],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline().split()[1])
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        proc.wait(5)


@contextmanager
def bench_app(origin: str, **config: Any) -> Iterator[Any]:
    """A host app on a fresh PostgreSQL schema and a fresh queue; dropped afterwards."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(POSTGRES_URL, pool_pre_ping=True)  # survives a PostgreSQL restart
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    settings = {
        # application_name: the run's PostgreSQL backends are told from others' (postgres_pids)
        "SQLALCHEMY_DATABASE_URI": f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
                                   f"&application_name={schema}",
        "WEBPUSH_QUEUE": f"bench-{schema}", "WEBPUSH_EXTRA_PUSH_SERVICES": [origin],
        "WEBPUSH_VAPID_PRIVATE_KEY": VAPID_PRIVATE, "WEBPUSH_VAPID_PUBLIC_KEY": VAPID_PUBLIC,
        **config,
    }
    app, db, webpush = make_host_app(settings["SQLALCHEMY_DATABASE_URI"],
                                     **{k: v for k, v in settings.items()
                                        if k != "SQLALCHEMY_DATABASE_URI"})
    app.config["BENCH_SETTINGS"] = settings
    with app.app_context():
        db.create_all()
    try:
        yield app
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


def postgres_pids(app: Any) -> set[int]:
    """The PostgreSQL processes that work for this run: the backends of its connections
    (by the application_name ``bench_app`` gives them) and the server's own background
    processes (checkpointer, WAL writer, ...), not the backends of anything else that
    shares the server, whose CPU would otherwise be counted as this run's."""
    from urllib.parse import parse_qs, urlsplit

    url = app.config["BENCH_SETTINGS"]["SQLALCHEMY_DATABASE_URI"]
    name = parse_qs(urlsplit(url).query)["application_name"][0]
    engine = sa.create_engine(POSTGRES_URL)
    try:
        with engine.connect() as conn:
            ours = {int(pid) for pid in conn.execute(sa.text(
                "SELECT pid FROM pg_stat_activity WHERE application_name = :name"
                " OR backend_type <> 'client backend'"), {"name": name}).scalars()}
    finally:
        engine.dispose()
    return ours


def key_pool(size: int = 64) -> list[tuple[str, str]]:
    """Browser-like (p256dh, auth) pairs; reused across subscriptions (the sink never decrypts)."""
    pool = []
    for _ in range(size):
        key = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        pool.append((b64url_encode(key), b64url_encode(secrets.token_bytes(16))))
    return pool


def add_subscriptions(app: Any, origin: str, count: int, per_user: int = 1,
                      first_user: int = 0) -> list[str]:
    """Insert ``count`` active subscriptions in bulk, for users numbered from
    ``first_user``; return the distinct user ids."""
    from flask_webpush_targeted.models import endpoint_hash, utcnow

    webpush = app.extensions["webpush"]
    pool = key_pool()
    now = utcnow()
    rows = []
    for i in range(count):
        endpoint = f"{origin}/push/{i}-{uuid.uuid4().hex[:8]}"
        p256dh, auth = pool[i % len(pool)]
        rows.append({"user_id": str(first_user + i // per_user), "endpoint": endpoint,
                     "endpoint_sha256": endpoint_hash(endpoint), "p256dh": p256dh,
                     "auth": auth, "consent_version": "1", "created_at": now,
                     "last_seen_at": now, "consecutive_failures": 0, "label": "bench"})
    with app.app_context():
        table = webpush.models.Subscription.__table__
        for start in range(0, len(rows), 5000):
            webpush.db.session.execute(table.insert(), rows[start:start + 5000])
        webpush.db.session.commit()
    return sorted({str(r["user_id"]) for r in rows}, key=int)


def start_workers(app: Any, count: int, *extra: str,
                  env: dict[str, str] | None = None) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` `flask webpush worker` processes on the app's settings (``extra``:
    the command's options; ``env``: more environment, e.g. SSL_CERT_FILE)."""
    env = {**os.environ, "WEBPUSH_TEST_APP": json.dumps(app.config["BENCH_SETTINGS"]),
           "PYTHONPATH": str(ROOT / "tests"), **(env or {})}
    cmd = [sys.executable, "-m", "flask", "--app", "hostapp:create_app", "webpush", "worker",
           *extra]
    return [subprocess.Popen(cmd, env=env, cwd=ROOT / "tests", stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL) for _ in range(count)]


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for w in workers:
        w.terminate()
    for w in workers:
        w.wait(10)


def rss_mb(pid: int, *, children: bool = False) -> float:
    """A process's RSS in MB, from /proc; ``children``: with its children's (a forking
    worker's work horse, RQ's scheduler) added."""
    total = 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split() if children else []
    except (FileNotFoundError, ProcessLookupError):  # ended between two reads
        return total
    return total + sum(rss_mb(int(kid), children=True) for kid in kids)


def wait_for_workers(app: Any, count: int, timeout: float = 60) -> None:
    """Wait until ``count`` workers listen on the app's queue (they start in about a second)."""
    from rq import Worker

    from flask_webpush_targeted.redis_queue import get_queue

    deadline = time.monotonic() + timeout
    with app.app_context():
        queue = get_queue()
    while len(Worker.all(queue=queue)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} workers registered")
        time.sleep(0.05)


def wait_done(app: Any, notification_id: int, timeout: float = 900) -> float:
    """Poll until the notification is done; return the monotonic time it was seen done.

    One plain connection and a 25 ms nap between polls: the measuring process must not
    take the CPU the workers and the database need on a small machine.
    """
    webpush = app.extensions["webpush"]
    table = webpush.models.Notification.__table__
    query = sa.select(table.c.status).where(table.c.id == notification_id)
    deadline = time.monotonic() + timeout
    with app.app_context(), webpush.db.engine.connect() as conn:
        while time.monotonic() < deadline:
            if conn.execute(query).scalar() == "done":
                return time.monotonic()
            conn.rollback()  # a new snapshot for the next poll
            time.sleep(0.025)
    raise TimeoutError(f"notification {notification_id} not done in {timeout}s")


def cpu_seconds(groups: dict[str, Callable[[int, str], bool]],
                with_children: frozenset[str] | set[str] = frozenset()) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the live processes of each group, and
    for the groups in ``with_children`` by the children they waited for (RQ's work horses).

    A group is a test on (pid, command name); read from /proc, so Linux only.
    """
    tick = os.sysconf("SC_CLK_TCK")
    used = dict.fromkeys(groups, 0.0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        for group, test in groups.items():
            if test(int(entry.name), name):
                used[group] += (int(fields[11]) + int(fields[12])) / tick
                if group in with_children:
                    used[group] += (int(fields[13]) + int(fields[14])) / tick
                break
    return used


def median_of(runs: int, measure: Callable[[], float]) -> tuple[float, list[float]]:
    """Run ``measure`` ``runs`` times; return the median and every figure."""
    figures = [measure() for _ in range(runs)]
    return statistics.median(figures), figures


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    return path
