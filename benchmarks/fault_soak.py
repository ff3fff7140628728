"""Fault soak: many deliveries through several workers while everything around them fails.

    python benchmarks/fault_soak.py [--deliveries 100000] [--seed 1]

Everything runs on services of the soak's own, started here and removed at the end
(never the shared PostgreSQL or Redis): a PostgreSQL cluster (initdb into a
temporary directory), a Redis with its append-only file fsynced at every write,
and a push service (benchmarks/fault_soak_sink.py) that answers at random with
429 and a random Retry-After, 5xx, no answer past the read timeout, a reset
connection or a slow 201, and 404/410 for a few subscriptions for good. Three
`flask webpush worker --simple` processes send a few notifications over the run;
one of them runs in a network namespace of its own, joined by a veth pair. During
the run the soak kills workers with SIGKILL at random moments (preferring busy
ones) and starts replacements, kills and restarts Redis, restarts PostgreSQL, and
cuts the namespace's link mid-batch for longer than the claim timeout.

Then it waits until every delivery is final (or until the last notification's
validity plus a stated bound has passed) and compares the rows with what the push
service answered: LOST is a delivery not final, recorded sent but never accepted
by the service, or accepted but recorded otherwise; SENT TWICE is an endpoint the
service accepted more than once. The time each delivery became final is taken by a
trigger the soak adds to its own database. Exit status 1 when anything is lost.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from contextlib import ExitStack, suppress
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fault_soak_sink
import harness
import sqlalchemy as sa
from fault_soak_services import Namespace, Postgres, Redis, Workers, job_ids, sink

from flask_webpush_targeted.exceptions import QueueUnavailable
from flask_webpush_targeted.statuses import FINAL as FINAL_STATUSES

TRIGGER = """
CREATE TABLE soak_final (delivery_id bigint NOT NULL, status varchar(10) NOT NULL,
                         at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION soak_final_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO soak_final (delivery_id, status) VALUES (NEW.id, NEW.status); RETURN NULL; END
$$;
CREATE TRIGGER soak_final AFTER UPDATE OF status ON webpush_delivery FOR EACH ROW
WHEN (NEW.status IN ('sent', 'failed', 'gone', 'expired', 'skipped')
      AND OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION soak_final_row();
"""


class Soak:
    """One run: the services, the timeline of faults, and the tally."""

    def __init__(self, args: argparse.Namespace, stack: ExitStack) -> None:
        self.args = args
        self.stack = stack
        self.rng = random.Random(args.seed)
        self.t0 = time.monotonic()
        self.faults: Counter[str] = Counter()
        self.notes: list[str] = []
        self.notifications: list[int] = []
        self.ns: Namespace | None = None
        self.ns_pid: int | None = None
        self.stopped_pid: int | None = None  # the fallback "cut": a SIGSTOPped worker
        self.redis_jobs: set[str] = set()
        self.redis_lost_jobs: set[str] = set()
        self.link_down = False
        self.cut_armed: float | None = None
        self.started_at = time.monotonic()
        self.to_restart: list[str] = []
        #: (wall-clock time, what): each fault as it happened, to attribute resends to
        self.fault_log: list[tuple[float, str]] = []
        self.cut_window: tuple[float, float] | None = None
        self.next_restart = 0.0

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {text}", flush=True)

    # -- set-up ---------------------------------------------------------------------------------

    def setup(self) -> None:
        args = self.args
        tmp = Path(tempfile.mkdtemp(prefix="webpush-soak-"))
        tmp.chmod(0o755)  # the cluster's owner (postgres, when run as root) must reach it
        self.tmp = tmp
        self.stack.callback(self.remove_tmp)
        (tmp / "logs").mkdir()
        why_not = None if args.no_netns else Namespace.available()
        if args.no_netns:
            why_not = "--no-netns given"
        if why_not is None:
            self.ns = Namespace(f"wpsoak{os.getpid() % 100000}", args.subnet)
            self.stack.callback(self.ns.delete)
            self.ns.create()
            host = self.ns.host_addr
            self.say(f"network namespace {self.ns.name}: veth {self.ns.host_if} "
                     f"{self.ns.host_addr}/30 <-> {self.ns.ns_if} {self.ns.ns_addr}/30")
        else:
            host = "127.0.0.1"
            self.say(f"NO NETWORK NAMESPACE ({why_not}): the link cut is simulated by "
                     "SIGSTOPping one worker for longer than the claim timeout, then SIGCONT")
            self.notes.append(f"network namespace unavailable ({why_not}); the cut was a "
                              "SIGSTOP/SIGCONT of one worker (simulates a partition)")
        hosts = ["127.0.0.1"] if host == "127.0.0.1" else ["127.0.0.1", host]
        self.pg = Postgres(tmp / "pg", hosts)
        self.pg.init()
        self.stack.callback(self.pg.stop)
        self.pg.start()
        self.redis = Redis(tmp / "redis", hosts)
        self.stack.callback(self.redis.stop)
        self.redis.start()
        self.say(f"own PostgreSQL on port {self.pg.port}, own Redis on port {self.redis.port} "
                 f"(AOF, fsync always), listening on {', '.join(hosts)}")
        rates = {"p429": args.p429, "p5xx": args.p5xx, "ptimeout": args.ptimeout,
                 "preset": args.preset, "pslow": args.pslow, "gone": args.gone,
                 "max-retry-after": args.max_retry_after}
        self.origins, self.sink_proc = self.stack.enter_context(sink(
            host, args.origins, args.read_timeout, args.time_limit + 60, args.seed, rates))
        self.say(f"fault sink: {len(self.origins)} origins on {host}, rates {rates}")
        harness.POSTGRES_URL = self.pg.url  # bench_app's schema goes to the soak's own cluster
        config = {
            "WEBPUSH_EXTRA_PUSH_SERVICES": self.origins, "WEBPUSH_REDIS_URL": self.redis.url,
            "WEBPUSH_CLAIM_TIMEOUT": args.claim_timeout,
            "WEBPUSH_RECOVER_INTERVAL": args.recover_interval,
            "WEBPUSH_READ_TIMEOUT": args.read_timeout, "WEBPUSH_CONNECT_TIMEOUT": 2.0,
            "WEBPUSH_RETRY_BASE_DELAY": args.retry_base, "WEBPUSH_RETRY_MAX_DELAY": args.retry_max,
            **{k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)},
        }
        self.stack.push(dead_drop_connection)
        self.app = self.stack.enter_context(harness.bench_app(self.origins[0], **config))
        self.config = self.app.config
        per_origin = -(-args.deliveries // len(self.origins))
        users: list[str] = []
        for origin in self.origins:  # user i gets one device at each origin
            users = harness.add_subscriptions(self.app, origin, per_origin)
        self.deliveries = per_origin * len(self.origins)
        self.users = users
        self.engine = sa.create_engine(self.config["SQLALCHEMY_DATABASE_URI"], pool_pre_ping=True)
        self.stack.callback(self.engine.dispose)
        with self.engine.begin() as conn:
            conn.exec_driver_sql(TRIGGER)
        settings = self.config["BENCH_SETTINGS"]
        self.workers = Workers(settings, tmp / "logs", ["--simple", *args.worker_args])
        self.stack.callback(self.workers.stop_all)
        self.stack.callback(self.resume_stopped)
        self.ns_settings = settings
        if self.ns is not None:
            # The worker in the namespace reaches the services at the veth's host address.
            text = json.dumps(settings).replace(f"127.0.0.1:{self.pg.port}",
                                                f"{host}:{self.pg.port}")
            self.ns_settings = json.loads(text.replace(f"127.0.0.1:{self.redis.port}",
                                                       f"{host}:{self.redis.port}"))
        for _ in range(args.workers - 1):
            self.workers.start("host")
        self.ns_pid = self.start_ns_worker()
        harness.wait_for_workers(self.app, args.workers)
        self.say(f"{self.deliveries} subscriptions ({len(users)} users x {len(self.origins)} "
                 f"devices); {args.workers} workers up, one "
                 f"{'in the namespace' if self.ns else 'to be SIGSTOPped'} (pid {self.ns_pid})")

    def start_ns_worker(self) -> int:
        where = "netns" if self.ns else "stoppable"
        return self.workers.start(where, self.ns, self.ns_settings).pid

    def remove_tmp(self) -> None:
        if self.args.keep_logs:
            dest = Path(self.args.keep_logs)
            dest.mkdir(parents=True, exist_ok=True)
            for log in [*(self.tmp / "logs").iterdir(), self.tmp / "pg" / "postgres.log",
                        self.tmp / "redis" / "redis.log"]:
                if log.exists():
                    shutil.copy(log, dest / log.name)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- faults ---------------------------------------------------------------------------------

    def rq_workers(self) -> dict[int, tuple[str, str | None]]:
        """pid -> (state, current job id) of the workers registered in Redis."""
        from rq import Worker

        client = self.redis.client()
        return {w.pid: (w.get_state(), w.get_current_job_id())
                for w in Worker.all(connection=client) if w.pid}

    def kill_one(self) -> None:
        candidates = [pid for pid, (_p, where) in self.workers.procs.items()
                      if where == "host"]
        if not candidates:
            return
        try:
            states = self.rq_workers()
        except Exception:  # Redis down now: any worker will do
            states = {}
        busy = [pid for pid in candidates if states.get(pid, ("",))[0] == "busy"]
        pid = self.rng.choice(busy or candidates)
        state, job = states.get(pid, ("unknown", None))
        self.workers.kill(pid)
        self.fault_log.append((time.time(), f"SIGKILL of worker {pid} ({state})"))
        self.faults["worker SIGKILLs"] += 1
        self.faults["  of them busy (mid-batch)"] += state == "busy"
        new = self.workers.start("host").pid
        self.say(f"SIGKILL worker {pid} ({state}{', job ' + job if job else ''}); "
                 f"replacement {new}")

    def now(self) -> float:
        return time.monotonic() - self.t0

    def redis_down(self) -> list[tuple[float, str, Any]]:
        client = self.redis.client()
        self.redis_jobs = job_ids(client, self.config["WEBPUSH_QUEUE"])
        self.redis.kill()
        self.fault_log.append((time.time(), "Redis SIGKILL"))
        self.faults["Redis SIGKILLs + restarts"] += 1
        self.say(f"Redis SIGKILLed with {len(self.redis_jobs)} jobs queued, scheduled or "
                 f"started; down for {self.args.redis_down}s")
        return [(self.now() + self.args.redis_down, "redis up", self.redis_up)]

    def redis_up(self) -> None:
        self.redis.start()
        client = self.redis.client()
        self.redis_lost_jobs = {j for j in self.redis_jobs if not client.exists(f"rq:job:{j}")}
        self.say(f"Redis restarted: {len(self.redis_jobs) - len(self.redis_lost_jobs)} of "
                 f"{len(self.redis_jobs)} jobs survived"
                 + (f"; lost {sorted(self.redis_lost_jobs)[:5]}" if self.redis_lost_jobs else ""))

    def pg_restart(self) -> None:
        self.fault_log.append((time.time(), f"PostgreSQL restart -m {self.args.pg_mode}"))
        took = self.pg.restart(self.args.pg_mode)
        self.faults[f"PostgreSQL restarts (-m {self.args.pg_mode})"] += 1
        self.say(f"PostgreSQL restarted (-m {self.args.pg_mode}) in {took:.1f}s")

    def arm_cut(self) -> None:
        self.cut_armed = self.now()

    def try_cut(self) -> list[tuple[float, str, Any]]:
        """Cut once the worker is busy (mid-batch), or after 15 s armed whatever it does."""
        pid = self.ns_pid
        if self.cut_armed is None or pid is None:
            return []
        try:
            state = self.rq_workers().get(pid, ("unregistered", None))[0]
        except Exception:  # Redis down: try again on the next tick
            state = "unknown"
        if state != "busy" and self.now() - self.cut_armed < 15:
            return []
        self.cut_armed = None
        self.cut_window = (time.time(), time.time() + self.args.cut_seconds)
        self.fault_log.append((time.time(), f"link cut ({state})"))
        if self.ns is not None:
            self.ns.link(up=False)
            self.link_down = True
            self.faults["network link cuts"] += 1
            self.say(f"link of namespace {self.ns.name} DOWN (worker {pid} {state}) "
                     f"for {self.args.cut_seconds}s")
        else:
            os.killpg(pid, signal.SIGSTOP)
            self.stopped_pid = pid
            self.faults["partitions simulated by SIGSTOP"] += 1
            self.say(f"worker {pid} ({state}) SIGSTOPped for {self.args.cut_seconds}s "
                     "(simulates a cut link)")
        self.faults["  cut while the worker was busy"] += state == "busy"
        return [(self.now() + self.args.cut_seconds, "uncut", self.uncut)]

    def uncut(self) -> None:
        if self.cut_window is not None:
            self.cut_window = (self.cut_window[0], time.time())
        if self.ns is not None and self.link_down:
            self.ns.link(up=True)
            self.link_down = False
            self.say(f"link of namespace {self.ns.name} UP")
        else:
            self.resume_stopped()

    def resume_stopped(self) -> None:
        if self.stopped_pid is not None:
            with suppress(ProcessLookupError):
                os.killpg(self.stopped_pid, signal.SIGCONT)
            self.say(f"worker {self.stopped_pid} SIGCONT")
            self.stopped_pid = None

    def notify(self, index: int, users: list[str]) -> None:
        webpush = self.app.extensions["webpush"]
        N = webpush.models.Notification
        note = ""
        with self.app.app_context():
            for attempt in range(5):  # this process is the host: it retries a lost connection
                try:
                    n = webpush.notify_users(users, title=f"Soak {index}",
                                             body=harness.BODY[:120], url="/orders/1",
                                             ttl=self.args.ttl, idempotency_key=f"soak-{index}")
                    break
                except QueueUnavailable:  # stored; recover() enqueues it once Redis is back
                    n = webpush.db.session.scalar(sa.select(N).where(
                        N.idempotency_key == f"soak-{index}"))
                    note = " (Redis down: stored, left to recover)"
                    break
                except sa.exc.OperationalError:  # PostgreSQL restarting
                    webpush.db.session.rollback()
                    note = f" (after {attempt + 1} database errors)"
                    time.sleep(1)
            else:
                raise RuntimeError(f"notification {index} could not be stored")
            self.notifications.append(n.id)
        self.say(f"notification {n.id}: {len(users)} users x {len(self.origins)} devices{note}")

    # -- the run --------------------------------------------------------------------------------

    def timeline(self) -> list[tuple[float, str, Any]]:
        """(seconds from the start, label, action), sorted; an action may return more."""
        a, d, rng = self.args, self.args.duration, self.rng
        k = a.notifications
        groups = [self.users[i::k] for i in range(k)]
        events: list[tuple[float, str, Any]] = [
            (i * d / k, "notify", lambda i=i: self.notify(i + 1, groups[i])) for i in range(k)]
        events += [(rng.uniform(0.05, 0.95) * d, "kill", self.kill_one) for _ in range(a.kills)]
        if a.redis_restarts:
            events.append((rng.uniform(0.3, 0.5) * d, "redis down", self.redis_down))
        for _ in range(a.pg_restarts):
            events.append((rng.uniform(0.55, 0.75) * d, "pg restart", self.pg_restart))
        if a.cuts:  # armed as the second notification goes out, so the worker has work
            events.append(((1 if k > 1 else 0) * d / k + 0.2, "arm cut", self.arm_cut))
        return sorted(events, key=lambda e: e[0])

    def supervise(self) -> None:
        """Restart a worker that exited by itself (a finding: say so), one a second at most:
        a worker started while Redis is down exits at once, and would otherwise spin."""
        for where, code in self.workers.reap():
            self.faults["workers exited unexpectedly"] += 1
            self.say(f"a {where} worker exited by itself (code {code})")
            self.to_restart.append(where)
        if self.to_restart and time.monotonic() >= self.next_restart:
            where = self.to_restart.pop(0)
            if where == "host":
                new = self.workers.start("host").pid
            else:
                new = self.ns_pid = self.start_ns_worker()
            self.next_restart = time.monotonic() + 1
            self.say(f"restarted the {where} worker as {new}")

    def open_count(self) -> tuple[int, Counter[str]] | None:
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(sa.text(
                    "SELECT status, count(*) FROM webpush_delivery GROUP BY status")).all()
        except sa.exc.OperationalError:  # PostgreSQL restarting
            return None
        by = Counter({s: c for s, c in rows})
        return sum(by.values()) - sum(by[s] for s in FINAL_STATUSES), by

    def run(self) -> None:
        a = self.args
        events = self.timeline()
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        last_progress = 0.0
        self.say(f"traffic window {a.duration:.0f}s: {a.notifications} notifications, "
                 f"{a.kills} kills, {a.redis_restarts} Redis restart, {a.pg_restarts} PostgreSQL "
                 f"restart, {a.cuts} link cut of {a.cut_seconds}s")
        hard_stop = self.t0 + a.time_limit
        while (events or self.cut_armed is not None) and time.monotonic() < hard_stop:
            now = self.now()
            while events and events[0][0] <= now:
                _at, _label, action = events.pop(0)
                events = sorted([*events, *(action() or [])], key=lambda e: e[0])
            events = sorted([*events, *self.try_cut()], key=lambda e: e[0])
            self.supervise()
            if now - last_progress >= 10:
                last_progress = now
                self.progress()
            time.sleep(0.1)
        self.last_due = time.monotonic()
        bound = a.claim_timeout + 2 * a.recover_interval + a.retry_max + 30
        self.bound = bound
        deadline = min(self.last_due + a.ttl + bound, hard_stop)
        self.say(f"faults over; waiting until every delivery is final, at most until the last "
                 f"notification's validity ({a.ttl}s) + {bound}s (claim timeout + 2 recover "
                 f"intervals + largest retry delay + 30s)")
        while time.monotonic() < deadline:
            self.supervise()
            counted = self.open_count()
            if counted is not None and counted[0] == 0 and counted[1].total():
                break
            if time.monotonic() - self.t0 - last_progress >= 10:
                last_progress = time.monotonic() - self.t0
                self.progress()
            time.sleep(1)
        self.finished = time.monotonic()
        self.progress()

    def progress(self) -> None:
        counted = self.open_count()
        if counted is None:
            self.say("progress: database unavailable")
            return
        open_rows, by = counted
        self.say(f"progress: {sum(by.values())} deliveries, {open_rows} not final, "
                 + ", ".join(f"{s} {c}" for s, c in sorted(by.items())))

    # -- the tally ------------------------------------------------------------------------------

    def report(self) -> int:
        a = self.args
        # The sink's own address (127.0.0.1 or the veth's): an http URL built here.
        with urllib.request.urlopen(f"{self.origins[0]}/report", timeout=30) as answer:  # noqa: S310
            sink_report = json.loads(answer.read())
        accepted: dict[str, int] = sink_report["accepted"]
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text("""
                SELECT d.id, d.notification_id, d.status, d.attempts, s.endpoint, n.created_at,
                       d.status_code, d.reason,
                       f.first_at, f.sent_records, f.finals
                FROM webpush_delivery d
                JOIN webpush_notification n ON n.id = d.notification_id
                LEFT JOIN webpush_subscription s ON s.id = d.subscription_id
                LEFT JOIN (SELECT delivery_id, min(at) AS first_at, count(*) AS finals,
                                  count(*) FILTER (WHERE status = 'sent') AS sent_records
                           FROM soak_final GROUP BY delivery_id) f ON f.delivery_id = d.id
                """)).all()
        by_status: Counter[str] = Counter()
        lost: Counter[str] = Counter()
        twice, extra, worst_times = 0, 0, 0
        finalised_twice = 0
        lateness: list[tuple[float, int, str]] = []
        requests: dict[str, int] = sink_report.get("requests", {})
        #: (status, code, reason) of the unsent -> [count, requests the service received]
        unsent: dict[tuple[str, Any, str], list[int]] = {}
        seen_keys = set()
        for r in rows:
            by_status[r.status] += 1
            parts = urlsplit(r.endpoint)
            key = f"{parts.port}{parts.path}"
            seen_keys.add(key)
            times = accepted.get(key, 0)
            if r.status not in FINAL_STATUSES:
                lost[f"not final ({r.status})"] += 1
            elif r.status == "sent" and times == 0:
                lost["recorded sent, never accepted by the push service"] += 1
            elif r.status != "sent" and times > 0:
                lost[f"accepted by the push service, recorded {r.status}"] += 1
            if r.status in ("failed", "expired", "skipped"):
                entry = unsent.setdefault((r.status, r.status_code, r.reason or ""), [0, 0])
                entry[0] += 1
                entry[1] += requests.get(key, 0)
            if times > 1:
                twice += 1
                extra += times - 1
                worst_times = max(worst_times, times)
            if (r.finals or 0) > 1:
                finalised_twice += 1
            if r.first_at is not None:
                lateness.append(((r.first_at - r.created_at).total_seconds(), r.id, r.status))
        stray = sum(v for k, v in accepted.items() if k not in seen_keys)
        causes = self.attribute(sink_report.get("twice", {}))
        interruptions = (self.faults["worker SIGKILLs"] + self.faults["network link cuts"]
                         + self.faults["partitions simulated by SIGSTOP"]
                         + a.workers * (self.faults["Redis SIGKILLs + restarts"]
                                        + sum(v for k, v in self.faults.items()
                                              if k.startswith("PostgreSQL"))))
        concurrency = self.config["WEBPUSH_SEND_CONCURRENCY"]
        twice_bound = concurrency * interruptions
        counters_ok = self.check_counters(rows)

        total_lost = sum(lost.values())
        ran = self.finished - self.started_at
        print()
        print("=" * 72)
        print(f"fault soak: {' '.join(sys.argv[1:]) or '(defaults)'}")
        print(f"ran {ran / 60:.1f} min ({self.finished - self.t0:.0f}s from the first "
              f"notification, {len(rows) / (self.finished - self.t0):.0f} deliveries/s), "
              f"{os.cpu_count()} cores, seed {a.seed}")
        print(f"deliveries        {len(rows)} in {len(self.notifications)} notifications "
              f"(expected {self.deliveries})")
        print(f"delivered (sent)  {by_status['sent']}")
        print("final by status   " + ", ".join(f"{s} {by_status[s]}"
                                               for s in (*FINAL_STATUSES, "pending", "sending")
                                               if by_status[s]))
        for (status, code, reason), (count, asked) in sorted(unsent.items(),
                                                              key=lambda u: -u[1][0]):
            print(f"    {count:>8}  {status} ({code}, {reason[:60]}): the push service received "
                  f"{asked / count:.1f} requests for each")
        print(f"LOST              {total_lost}" + "".join(f"\n    {c:>8}  {k}"
                                                        for k, c in lost.most_common()))
        print(f"SENT TWICE        {twice} deliveries accepted more than once ({extra} extra "
              f"sends, at most {worst_times or 1} times one delivery); documented bound "
              f"{concurrency} x {interruptions} interrupted batches = {twice_bound}: "
              f"{'within' if extra <= twice_bound else 'EXCEEDED'}")
        for cause, (keys, sends) in sorted(causes.items(), key=lambda c: -c[1][1]):
            print(f"    {sends:>8}  extra sends of {keys} deliveries, first accepted before "
                  f"{cause}")
        if finalised_twice:
            print(f"finalised twice   {finalised_twice} rows changed from one final status "
                  "to another")
        if stray:
            print(f"stray 2xx         {stray} accepted for endpoints with no delivery row")
        if lateness:
            late = sorted(lateness)
            worst = late[-1]
            print(f"worst lateness    {worst[0]:.1f}s (delivery {worst[1]}, {worst[2]}) from due "
                  f"to final; median {statistics.median(x[0] for x in late):.1f}s, "
                  f"p99 {late[int(len(late) * 0.99) - 1][0]:.1f}s; "
                  f"{sum(x[0] > self.bound for x in late)} later than {self.bound}s (time queued "
                  "behind earlier notifications included)")
        print(f"counters = rows   {'yes' if counters_ok else 'NO (see above)'}")
        print("faults            " + ", ".join(f"{k.strip()} {v}" for k, v in self.faults.items()
                                               if not k.startswith(" ")))
        for k, v in self.faults.items():
            if k.startswith(" "):
                print(f"                  {k.strip()}: {v}")
        if self.redis_jobs:
            print(f"Redis restart     {len(self.redis_jobs) - len(self.redis_lost_jobs)} of "
                  f"{len(self.redis_jobs)} jobs survived it")
        print("push service      " + ", ".join(f"{k} {v}" for k, v in
                                               sorted(sink_report["faults"].items())))
        for note in self.notes:
            print(f"note              {note}")
        print("=" * 72)
        failed = total_lost > 0 or extra > twice_bound or bool(self.redis_lost_jobs)
        return 1 if failed else 0

    def attribute(self, twice: dict[str, list[float]]) -> dict[str, list[int]]:
        """Extra sends per fault: a delivery first accepted while the link was cut (or in the
        5 s after) goes to the cut; any other to the first fault after its first acceptance,
        the one that kept its answer from being recorded."""
        causes: dict[str, list[int]] = {}
        for times in twice.values():
            first = min(times)
            if self.cut_window and self.cut_window[0] - 5 <= first <= self.cut_window[1] + 5:
                cause = next(label for _t, label in self.fault_log if label.startswith("link"))
            else:
                cause = next((f"{label} at {t - self.wall0:.1f}s" for t, label in self.fault_log
                              if t >= first), "no fault after it (a late answer?)")
            entry = causes.setdefault(cause, [0, 0])
            entry[0] += 1
            entry[1] += len(times) - 1
        return causes

    def check_counters(self, rows: Any) -> bool:
        """stats() of each notification against its rows; print any difference."""
        webpush = self.app.extensions["webpush"]
        ok = True
        per: dict[int, Counter[str]] = {}
        for r in rows:
            per.setdefault(r.notification_id, Counter())[r.status] += 1
        with self.app.app_context():
            for nid in self.notifications:
                stats = webpush.stats(nid)
                for status in FINAL_STATUSES:
                    if stats.get(status, 0) != per.get(nid, Counter())[status]:
                        ok = False
                        print(f"counters: notification {nid} {status} stats() "
                              f"{stats.get(status)} rows {per.get(nid, Counter())[status]}")
        return ok


def dead_drop_connection(kind: Any, exc: BaseException | None, _tb: Any) -> bool:
    """Ignore bench_app's DROP SCHEMA failing on a pooled connection that the PostgreSQL
    restart closed: the whole cluster is removed next anyway."""
    return isinstance(exc, sa.exc.OperationalError) and "DROP SCHEMA" in str(exc.statement)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--deliveries", type=int, default=100_000)
    p.add_argument("--notifications", type=int, default=5)
    p.add_argument("--origins", type=int, default=4, help="push-service origins (ports)")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--duration", type=float, default=None,
                   help="traffic window in seconds (default deliveries / 350, at least 60: about "
                        "what 3 workers send under these faults on 2 cores)")
    p.add_argument("--kills", type=int, default=6)
    p.add_argument("--redis-restarts", type=int, default=1, choices=(0, 1))
    p.add_argument("--redis-down", type=float, default=5.0, help="seconds Redis stays down")
    p.add_argument("--pg-restarts", type=int, default=1)
    p.add_argument("--pg-mode", default="immediate", choices=("smart", "fast", "immediate"))
    p.add_argument("--cuts", type=int, default=1, choices=(0, 1))
    p.add_argument("--cut-seconds", type=float, default=None,
                   help="how long the link stays cut (default claim timeout + 10)")
    p.add_argument("--no-netns", action="store_true", help="cut by SIGSTOP, not a namespace")
    p.add_argument("--subnet", default="10.247.83", help="first three octets of the /30")
    p.add_argument("--ttl", type=int, default=600, help="validity of each notification, s")
    p.add_argument("--claim-timeout", type=int, default=20)
    p.add_argument("--recover-interval", type=int, default=5)
    p.add_argument("--read-timeout", type=float, default=2.0)
    p.add_argument("--retry-base", type=float, default=1.0)
    p.add_argument("--retry-max", type=float, default=10.0)
    fault_soak_sink.add_fault_options(p)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="another WEBPUSH_* setting (JSON value), e.g. WEBPUSH_BATCH_SIZE=500")
    p.add_argument("--worker-args", nargs="*", default=[])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--time-limit", type=float, default=1800,
                   help="hard stop in seconds after the first notification, whatever happens")
    p.add_argument("--keep-logs", metavar="DIR", help="copy worker, Redis, PostgreSQL logs here")
    args = p.parse_args()
    if args.duration is None:
        args.duration = max(60.0, args.deliveries / 350)
    if args.cut_seconds is None:
        args.cut_seconds = args.claim_timeout + 10
    return args


def main() -> int:
    args = parse_args()

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # Explicitly: a shell starting the soak in the background may have set SIGINT to ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    print(f"fault soak started {datetime.now().isoformat(timespec='seconds')}", flush=True)
    with ExitStack() as stack:
        soak = Soak(args, stack)
        try:
            soak.setup()
            soak.run()
            code = soak.report()
        except KeyboardInterrupt:
            print("interrupted: cleaning up", flush=True)
            code = 130
        soak.say("cleaning up: workers, push service, Redis, PostgreSQL, namespace, temp dir")
    return code


if __name__ == "__main__":
    sys.exit(main())
