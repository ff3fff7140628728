"""Send throughput: the project's whole path vs a naive pywebpush loop vs the encryption floor.

    python benchmarks/send_throughput.py [--subscriptions 10000] [--runs 3] [--naive 2000] [--fork]

All three are measured in this run, on this machine, against the same push sink
(a separate process that verifies VAPID and does not decrypt). The project's
figure is end to end: notify_users() returns, a `flask webpush worker` process
fans out to Delivery rows in PostgreSQL, claims batches, encrypts, POSTs over
HTTP and records every result; the clock stops when the notification is done.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import http_ece
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from harness import (
    BODY,
    VAPID_PRIVATE,
    add_subscriptions,
    bench_app,
    cpu_seconds,
    push_sink,
    start_workers,
    stop_workers,
    wait_done,
    wait_for_workers,
    write_result,
)
from pywebpush import webpush as pywebpush_send

from flask_webpush_targeted.payload import encode_payload
from flask_webpush_targeted.tracking import make_token
from flask_webpush_targeted.transport.b64url import b64url_decode
from flask_webpush_targeted.transport.encryption import encrypt
from flask_webpush_targeted.transport.vapid import load_vapid_private_key


def payload_bytes() -> bytes:
    data = encode_payload({"title": "Order shipped", "body": BODY[:200], "url": "/orders/48213",
                           "tag": "webpush-1"}, make_token(1, time.time() + 86400, b"k" * 32))
    return data


def floor_rate(subs: list[dict[str, str]], data: bytes) -> float:
    """Messages/s for the cryptography alone (ephemeral key, ECDH, HKDF, AES-GCM), done
    with the primitives directly as the sender does: the cheapest way found."""
    keys = [(s["p256dh"], s["auth"]) for s in subs]
    start = time.perf_counter()
    for p256dh, auth in keys:
        encrypt(data, p256dh, auth)
    return len(keys) / (time.perf_counter() - start)


def http_ece_rate(subs: list[dict[str, str]], data: bytes) -> float:
    """Messages/s for the same through http_ece, pywebpush's encoder (for reference)."""
    keys = [(b64url_decode(s["p256dh"]), b64url_decode(s["auth"])) for s in subs]
    start = time.perf_counter()
    for dh, auth in keys:
        http_ece.encrypt(data, private_key=ec.generate_private_key(ec.SECP256R1()), dh=dh,
                         auth_secret=auth, version="aes128gcm")
    return len(keys) / (time.perf_counter() - start)


def naive_rate(subs: list[dict[str, str]], data: bytes, origin: str) -> float:
    """Messages/s for the usual loop of pywebpush.webpush(), one call per message."""
    key = load_vapid_private_key(VAPID_PRIVATE)
    pem = Path(tempfile.mkdtemp()) / "vapid.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    start = time.perf_counter()
    for s in subs:
        pywebpush_send({"endpoint": s["endpoint"], "keys": {"p256dh": s["p256dh"],
                                                            "auth": s["auth"]}},
                       data=data, vapid_private_key=str(pem),
                       vapid_claims={"sub": "mailto:ops@shop.example"}, ttl=3600)
    return len(subs) / (time.perf_counter() - start)


def project_rate(app: object, user_ids: list[str], workers: int, count: int, sink_pid: int,
                 cpu: list[dict[str, float]], fork: bool = False) -> float:
    """Messages/s through notify_users and `workers` worker processes, end to end
    (``--simple`` ones, or with ``fork`` the default ones, forking a work horse per job).

    Appends to ``cpu`` the CPU milliseconds per 1,000 messages of each process group.
    """
    procs = start_workers(app, workers, *([] if fork else ["--simple"]))
    pids = {p.pid for p in procs}
    # A work horse is a child of its worker: counted while it runs (by its parent's pid)
    # and, once it ended, in its worker's children's time.
    groups = {"workers": lambda pid, name: pid in pids or _parent(pid) in pids,
              "push sink": lambda pid, name: pid == sink_pid,
              "PostgreSQL": lambda pid, name: name.startswith("postgres"),
              "Redis": lambda pid, name: name.startswith("redis-server"),
              "this process": lambda pid, name: pid == os.getpid()}
    try:
        wait_for_workers(app, workers)
        webpush = app.extensions["webpush"]  # type: ignore[attr-defined]
        before = cpu_seconds(groups, with_children={"workers"})
        with app.app_context():  # type: ignore[attr-defined]
            start = time.monotonic()
            nid = webpush.notify_users(user_ids, title="Order shipped", body=BODY[:200],
                                       url="/orders/48213").id
        done = wait_done(app, nid)
        after = cpu_seconds(groups, with_children={"workers"})
        cpu.append({g: (after[g] - before[g]) * 1e6 / count for g in groups})
        with app.app_context():  # type: ignore[attr-defined]
            stats = webpush.stats(nid)
        assert stats["sent"] == count, stats
        return count / (done - start)
    finally:
        stop_workers(procs)


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat[stat.rindex(")") + 2:].split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--naive", type=int, default=2_000,
                        help="messages for the naive loop and the floor (they are slow)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a WEBPUSH_* setting for the workers, e.g. WEBPUSH_BATCH_SIZE=200")
    parser.add_argument("--skip-baselines", action="store_true",
                        help="measure only the project's path (for tuning)")
    parser.add_argument("--fork", action="store_true",
                        help="run the default `flask webpush worker` (a work horse forked per "
                             "job) instead of `--simple`")
    args = parser.parse_args()
    settings = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    data = payload_bytes()
    with push_sink() as (origin, sink), bench_app(origin, **settings) as app:
        user_ids = add_subscriptions(app, origin, args.subscriptions)
        webpush = app.extensions["webpush"]
        with app.app_context():
            subs = [{"endpoint": s.endpoint, "p256dh": s.p256dh, "auth": s.auth}
                    for s in webpush.db.session.scalars(
                        sa.select(webpush.models.Subscription).limit(args.naive))]
        # Rounds: each round measures every path once, in turn, so that the machine's speed
        # drifting over the minutes (as shared machines' does) weighs on all of them alike;
        # the ratios are taken within each round, then their median.
        measures: dict[str, Callable[[], float]] = {}
        if not args.skip_baselines:
            measures["floor"] = lambda: floor_rate(subs, data)
            measures["http_ece"] = lambda: http_ece_rate(subs, data)
            measures["naive"] = lambda: naive_rate(subs, data, origin)
        cpu: dict[int, list[dict[str, float]]] = {n: [] for n in args.workers}
        for n in args.workers:
            measures[f"project {n}"] = functools.partial(
                project_rate, app, user_ids, n, args.subscriptions, sink.pid, cpu[n],
                args.fork)
        rounds = [{name: measure() for name, measure in measures.items()}
                  for _ in range(args.runs)]
    figures = {name: [r[name] for r in rounds] for name in measures}
    median = {name: statistics.median(values) for name, values in figures.items()}

    def ratio(top: str, bottom: str) -> float:
        if bottom not in median:
            return float("nan")
        return statistics.median(r[top] / r[bottom] for r in rounds)

    project = {n: median[f"project {n}"] for n in args.workers}
    one = min(args.workers)
    rows = [("encryption floor (1 core)", "floor"), ("  same through http_ece", "http_ece"),
            ("naive pywebpush loop", "naive")] * (not args.skip_baselines) + [
        (f"project, {n} worker{'s' if n > 1 else ''}", f"project {n}") for n in sorted(project)]
    print(f"settings {settings or 'defaults'}, "
          f"{'forking' if args.fork else '--simple'} workers")
    print(f"payload {len(data)} bytes, {args.subscriptions} subscriptions, "
          f"median of {args.runs} runs, {os.cpu_count()} cores")
    print(f"{'path':<28}{'msgs/s':>10}{'vs naive':>10}{'vs floor':>10}   every round")
    for label, name in rows:
        print(f"{label:<28}{median[name]:>10.0f}{ratio(name, 'naive'):>9.1f}x"
              f"{ratio(name, 'floor'):>9.0%}   {', '.join(f'{x:.0f}' for x in figures[name])}")
    print("(ratios: the median of each round's ratio)")
    groups = list(cpu[one][0])
    print("CPU ms per 1,000 messages (median):")
    print(f"{'workers':<10}" + "".join(f"{g:>14}" for g in groups))
    for n in sorted(cpu):
        print(f"{n:<10}" + "".join(f"{statistics.median(c[g] for c in cpu[n]):>14.0f}"
                                   for g in groups))
    for n in sorted(project)[1:]:
        print(f"scaling {n} workers / {one} worker: {ratio(f'project {n}', f'project {one}'):.2f}x"
              " (median of the rounds)")
    path = write_result("send_throughput", {
        "settings": settings, "fork": args.fork, "payload_bytes": len(data),
        "subscriptions": args.subscriptions,
        "runs": args.runs, "rounds": rounds,
        "median": median,
        "project": {str(n): {"median": project[n], "runs": figures[f"project {n}"],
                             "cpu_ms_per_1000": cpu[n]} for n in project},
    })
    print(f"written to {path}")


if __name__ == "__main__":
    main()
