"""Send throughput: the project's whole path vs a naive pywebpush loop, npm's web-push and
the encryption floor, over plain HTTP and over TLS.

    python benchmarks/send_throughput.py [--subscriptions 10000] [--runs 3] [--naive 2000]
        [--workers 1 2] [--transports http tls] [--fork]

Everything is measured in this run, on this machine, in rounds (each round measures every
path once, in turn), against the same push sinks: separate processes that verify VAPID and
do not decrypt, one on plain HTTP and one on HTTPS with a self-signed certificate made for
the run (the senders trust it: SSL_CERT_FILE for the workers, REQUESTS_CA_BUNDLE for
pywebpush, NODE_EXTRA_CA_CERTS for Node). The project's figure is end to end:
notify_users() returns, `flask webpush worker` (the default worker, jobs in its own
process; `--processes N` for N workers; with `--fork` also `--fork`, a work horse forked
per job) fans out to Delivery rows in PostgreSQL, claims batches, encrypts, POSTs and
records every result; the clock stops when the notification is done. npm's web-push
(64 requests in flight, keep-alive) runs when `node` and the module are found
(`--node-modules`, default /tmp/npm-webpush/node_modules: `npm install --prefix
/tmp/npm-webpush web-push`).
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import http_ece
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from harness import (
    BODY,
    ROOT,
    VAPID_PRIVATE,
    VAPID_PUBLIC,
    add_subscriptions,
    bench_app,
    cpu_seconds,
    postgres_pids,
    push_sink,
    start_workers,
    stop_workers,
    tls_files,
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


def floor_rate(subs: list[dict[str, str]], data: bytes, cpu: list[float] | None = None,
               count: int = 2000) -> float:
    """Messages/s for the cryptography alone (ephemeral key, ECDH, HKDF, AES-GCM), done
    with the primitives directly as the sender does: the cheapest way found. Appends its
    CPU µs per message to ``cpu`` (CPU time: what a busy machine's waits do not inflate)."""
    keys = [(s["p256dh"], s["auth"]) for s in subs]
    keys = (keys * (count // len(keys) + 1))[:max(count, len(keys))]
    start, cpu_start = time.perf_counter(), time.process_time()
    for p256dh, auth in keys:
        encrypt(data, p256dh, auth)
    if cpu is not None:
        cpu.append((time.process_time() - cpu_start) * 1e6 / len(keys))
    return len(keys) / (time.perf_counter() - start)


def http_ece_rate(subs: list[dict[str, str]], data: bytes) -> float:
    """Messages/s for the same through http_ece, pywebpush's encoder (for reference)."""
    keys = [(b64url_decode(s["p256dh"]), b64url_decode(s["auth"])) for s in subs]
    start = time.perf_counter()
    for dh, auth in keys:
        http_ece.encrypt(data, private_key=ec.generate_private_key(ec.SECP256R1()), dh=dh,
                         auth_secret=auth, version="aes128gcm")
    return len(keys) / (time.perf_counter() - start)


def naive_rate(subs: list[dict[str, str]], data: bytes) -> float:
    """Messages/s for the usual loop of pywebpush.webpush(), one call per message (each a
    new connection: over TLS a handshake per message)."""
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


def node_rate(subs: list[dict[str, str]], data: bytes, node_modules: Path, cafile: Path,
              cached: bool, cpu: list[float]) -> float:
    """Messages/s for npm's web-push, 64 requests in flight on keep-alive connections,
    signing VAPID per call or (``cached``) once; appends its CPU ms per 1,000 to ``cpu``."""
    with tempfile.TemporaryDirectory() as folder:
        job = Path(folder) / "job.json"
        job.write_text(json.dumps({
            "subscriptions": [{"endpoint": s["endpoint"],
                               "keys": {"p256dh": s["p256dh"], "auth": s["auth"]}} for s in subs],
            "payload_b64": base64.b64encode(data).decode(), "concurrency": 64, "cached": cached,
            "vapid": {"subject": "mailto:ops@shop.example", "public": VAPID_PUBLIC,
                      "private": VAPID_PRIVATE}}))
        done = subprocess.run(["node", str(ROOT / "benchmarks" / "webpush_node.js"), str(job)],
                              env={**os.environ, "NODE_PATH": str(node_modules),
                                   "NODE_EXTRA_CA_CERTS": str(cafile)},
                              capture_output=True, text=True, timeout=600, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["sent"] == len(subs), (figures, done.stderr[-2000:])
    cpu.append(figures["cpu_ms_per_1000"])
    return float(figures["rate"])


def project_rate(app: Any, user_ids: list[str], workers: int, count: int, sink_pids: set[int],
                 cpu: list[dict[str, float]], fork: bool = False,
                 env: dict[str, str] | None = None) -> float:
    """Messages/s through notify_users and one `flask webpush worker` command running
    ``workers`` processes (``--processes``), end to end; with ``fork`` the `--fork` worker,
    forking a work horse per job.

    Appends to ``cpu`` the CPU milliseconds per 1,000 messages of each process group.
    """
    extra = [*(["--fork"] if fork else []), *(["--processes", str(workers)] if workers > 1 else [])]
    procs = start_workers(app, 1, *extra, env=env)
    pids = {p.pid for p in procs}
    # The pool's children and the work horses descend from the command: counted while they
    # run (by their ancestry) and, once a horse ended, in its worker's children's time.
    groups = {"workers": lambda pid, name: _descends(pid, pids),
              "push sink": lambda pid, name: pid in sink_pids,
              "Redis": lambda pid, name: name.startswith("redis-server"),
              "this process": lambda pid, name: pid == os.getpid()}
    try:
        wait_for_workers(app, workers)
        webpush = app.extensions["webpush"]
        # PostgreSQL: this run's backends and the server's own processes only (the server
        # may be shared); a backend gone before the end is not counted (the --fork
        # worker's, a connection per work horse), one born meanwhile counts from zero.
        pg_before = _pid_cpu(postgres_pids(app))
        before = cpu_seconds(groups, with_children={"workers"})
        with app.app_context():
            start = time.monotonic()
            nid = webpush.notify_users(user_ids, title="Order shipped", body=BODY[:200],
                                       url="/orders/48213").id
        done = wait_done(app, nid)
        after = cpu_seconds(groups, with_children={"workers"})
        pg_after = _pid_cpu(postgres_pids(app) | set(pg_before))
        used = {g: (after[g] - before[g]) * 1e6 / count for g in groups}
        used["PostgreSQL"] = sum(t - pg_before.get(pid, 0.0)
                                 for pid, t in pg_after.items()) * 1e6 / count
        cpu.append(used)
        with app.app_context():
            stats = webpush.stats(nid)
        assert stats["sent"] == count, stats
        return count / (done - start)
    finally:
        stop_workers(procs)
        _wait_unregistered(app)


def _pid_cpu(pids: set[int]) -> dict[int, float]:
    """CPU seconds (user + system) of each live process of ``pids``."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        used[pid] = (int(fields[11]) + int(fields[12])) / tick
    return used


def _descends(pid: int, ancestors: set[int]) -> bool:
    for _ in range(3):  # the command, its pool's children, their work horses
        if pid in ancestors:
            return True
        pid = _parent(pid)
        if pid <= 1:
            return False
    return pid in ancestors


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _wait_unregistered(app: Any, timeout: float = 15) -> None:
    """Wait until the stopped workers left the queue's registry (the next path counts its own)."""
    from rq import Worker

    from flask_webpush_targeted.redis_queue import get_queue

    with app.app_context():
        queue = get_queue()
    deadline = time.monotonic() + timeout
    while Worker.all(queue=queue) and time.monotonic() < deadline:
        time.sleep(0.05)


def sample(app: Any, origin: str, limit: int) -> list[dict[str, str]]:
    """``limit`` of the stored subscriptions on ``origin``, as pywebpush takes them."""
    webpush = app.extensions["webpush"]
    S = webpush.models.Subscription
    with app.app_context():
        return [{"endpoint": s.endpoint, "p256dh": s.p256dh, "auth": s.auth}
                for s in webpush.db.session.scalars(
                    sa.select(S).where(S.endpoint.startswith(origin + "/")).limit(limit))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscriptions", type=int, default=10_000,
                        help="messages per project run (per transport)")
    parser.add_argument("--naive", type=int, default=2_000,
                        help="messages for the naive loop and the floor (they are slow)")
    parser.add_argument("--node", type=int, default=5_000, help="messages for npm's web-push")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker processes of the one command (`--processes`)")
    parser.add_argument("--transports", nargs="+", choices=["http", "tls"],
                        default=["http", "tls"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a WEBPUSH_* setting for the workers, e.g. WEBPUSH_BATCH_SIZE=200")
    parser.add_argument("--skip-baselines", action="store_true",
                        help="measure only the project's path (for tuning)")
    parser.add_argument("--fork", action="store_true",
                        help="also measure `flask webpush worker --fork` (a work horse forked "
                             "per job), one process")
    parser.add_argument("--node-modules", type=Path, default=Path(os.environ.get(
        "WEBPUSH_BENCH_NODE_MODULES", "/tmp/npm-webpush/node_modules")),
                        help="where npm installed web-push")
    args = parser.parse_args()
    settings = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    data = payload_bytes()
    node = (shutil.which("node") is not None and (args.node_modules / "web-push").is_dir()
            and "tls" in args.transports and not args.skip_baselines)
    folder = Path(tempfile.mkdtemp(prefix="send-throughput-"))
    cert, key = tls_files(folder)
    # pywebpush's requests, in this process, trust the sink's certificate (and only it).
    os.environ["REQUESTS_CA_BUNDLE"] = str(cert)
    tls_env = {"SSL_CERT_FILE": str(cert)}  # the workers' ssl.create_default_context()
    with push_sink() as (http_origin, http_sink), \
            push_sink((cert, key)) as (tls_origin, tls_sink), \
            bench_app(http_origin, WEBPUSH_EXTRA_PUSH_SERVICES=[http_origin, tls_origin],
                      **settings) as app:
        origins = {"http": http_origin, "tls": tls_origin}
        users = {t: add_subscriptions(app, origins[t], args.subscriptions,
                                      first_user=i * args.subscriptions)
                 for i, t in enumerate(("http", "tls"))}
        sink_pids = {http_sink.pid, tls_sink.pid}
        measures: dict[str, Callable[[], float]] = {}
        labels: dict[str, str] = {}
        floor_cpu: list[float] = []
        transports = [t for t in ("http", "tls") if t in args.transports]
        if not args.skip_baselines:
            subs = {t: sample(app, origins[t], args.naive) for t in transports}
            some = subs[transports[0]]
            measures["floor"] = lambda: floor_rate(some, data, floor_cpu)
            labels["floor"] = "encryption floor (1 core)"
            measures["http_ece"] = lambda: http_ece_rate(some, data)
            labels["http_ece"] = "  same through http_ece"
            for t in transports:
                measures[f"naive {t}"] = functools.partial(naive_rate, subs[t], data)
                labels[f"naive {t}"] = f"naive pywebpush loop, {t.upper()}"
        node_cpu: dict[str, list[float]] = {"node": [], "node cached": []}
        if node:
            node_subs = sample(app, tls_origin, args.node)
            for name, cached in (("node", False), ("node cached", True)):
                measures[name] = functools.partial(node_rate, node_subs, data, args.node_modules,
                                                   cert, cached, node_cpu[name])
                labels[name] = ("npm web-push, TLS, 64 in flight" if not cached
                                else "  same, one VAPID header")
        runs = [(t, "default", n) for t in transports for n in sorted(args.workers)]
        if args.fork:
            runs += [(t, "fork", 1) for t in transports]
        cpu: dict[str, list[dict[str, float]]] = {}
        for t, mode, n in runs:
            name = f"{mode} {t} {n}"
            cpu[name] = []
            measures[name] = functools.partial(
                project_rate, app, users[t], n, args.subscriptions, sink_pids, cpu[name],
                mode == "fork", tls_env if t == "tls" else None)
            labels[name] = (f"{'worker' if mode == 'default' else 'worker --fork'}, "
                            f"{t.upper()}, {n} process{'es' if n > 1 else ''}")
        # Rounds: each round measures every path once, in turn, so that the machine's speed
        # drifting over the minutes (as shared machines' does) weighs on all of them alike;
        # the ratios are taken within each round, then their median.
        rounds = [{name: measure() for name, measure in measures.items()}
                  for _ in range(args.runs)]
    shutil.rmtree(folder, ignore_errors=True)
    figures = {name: [r[name] for r in rounds] for name in measures}
    median = {name: statistics.median(values) for name, values in figures.items()}

    def ratio(top: str, bottom: str) -> float:
        if bottom not in median or top not in median:
            return float("nan")
        return statistics.median(r[top] / r[bottom] for r in rounds)

    print(f"settings {settings or 'defaults'}; payload {len(data)} bytes, "
          f"{args.subscriptions} messages per worker run, {args.naive} naive, "
          f"median of {args.runs} rounds, {os.cpu_count()} cores")
    print(f"{'path':<36}{'msgs/s':>8}{'vs naive':>10}{'vs floor':>10}   every round")
    for name in measures:
        t = "tls" if "tls" in name or name.startswith("node") else "http"
        print(f"{labels[name]:<36}{median[name]:>8.0f}{ratio(name, f'naive {t}'):>9.1f}x"
              f"{ratio(name, 'floor'):>9.0%}   {', '.join(f'{x:.0f}' for x in figures[name])}")
    print("(vs naive: the naive loop over the same transport; ratios: the median of each "
          "round's ratio)")
    if cpu:
        groups = list(next(iter(cpu.values()))[0])
        print("CPU µs per message (median of the rounds):")
        print(f"{'worker run':<36}" + "".join(f"{g:>13}" for g in groups))
        for name in cpu:
            print(f"{labels[name]:<36}" + "".join(
                f"{statistics.median(c[g] for c in cpu[name]):>13.0f}"
                for g in groups))
    if floor_cpu:
        floor_us = floor_cpu
        print(f"encryption floor: {statistics.median(floor_us):.0f} µs of CPU per message "
              f"({', '.join(f'{x:.0f}' for x in floor_us)})")
        for name in cpu:
            per = statistics.median(c["workers"] / floor
                                    for c, floor in zip(cpu[name], floor_us, strict=True))
            print(f"  {labels[name]}: worker CPU {per:.2f}x the floor's")
    for name in ("node", "node cached"):
        if node_cpu[name]:
            print(f"{labels[name].strip()}: {statistics.median(node_cpu[name]):.0f} µs CPU "
                  "per message (node)")
    one = min(args.workers)
    for t in transports:
        for n in sorted(args.workers)[1:]:
            top, bottom = f"default {t} {n}", f"default {t} {one}"
            per_msg = statistics.median(a["workers"] / b["workers"]
                                        for a, b in zip(cpu[top], cpu[bottom], strict=True))
            print(f"{t.upper()}: {n} processes / {one}: {ratio(top, bottom):.2f}x msgs/s, "
                  f"{per_msg:.2f}x worker CPU per message")
        if args.fork:
            print(f"{t.upper()}: default / --fork: "
                  f"{ratio(f'default {t} {one}', f'fork {t} 1'):.2f}x")
    for name in ("node", "node cached"):
        if name in median and f"default tls {one}" in median:
            print(f"TLS: worker, {one} process / {labels[name].strip()}: "
                  f"{ratio(f'default tls {one}', name):.2f}x")
    if len(transports) == 2:
        print(f"TLS / HTTP, default worker, {one} process: "
              f"{ratio(f'default tls {one}', f'default http {one}'):.2f}x")
    path = write_result("send_throughput", {
        "settings": settings, "payload_bytes": len(data), "subscriptions": args.subscriptions,
        "runs": args.runs, "rounds": rounds, "median": median, "labels": labels,
        "cpu_us_per_message": cpu, "node_cpu_us_per_message": node_cpu,
        "floor_cpu_us_per_message": floor_cpu,
    })
    print(f"written to {path}")


if __name__ == "__main__":
    main()
