"""An audience of a million users uploaded as CSV through the push API, then sent to.

    python benchmarks/audience_scale.py [--members 1000000] [--no-send]

On PostgreSQL: ``--members`` subscriptions are generated in SQL; the CSV (``user_id,seat``
a line, so every member carries a var) is written to a file and POSTed to a web process
(the host app under werkzeug's server, in its own process) with an API key; then one
notification goes to the audience with ``{seat}`` in its body, and one default `flask
webpush worker` fans it out and sends it to the benchmarks' push sink. Prints the upload
time and rate, the fan-out time (from the call until the deliveries are all written), the
sending time, and the peak RSS of the web process and of the worker, each against its own
RSS when idle (sampled every 50 ms from /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
import sqlalchemy as sa
from harness import (
    ROOT,
    bench_app,
    key_pool,
    push_sink,
    rss_mb,
    start_workers,
    stop_workers,
    wait_done,
    wait_for_workers,
    write_result,
)

SUBSCRIPTIONS = """
INSERT INTO webpush_subscription (user_id, endpoint, endpoint_sha256, p256dh, auth,
    consent_version, created_at, last_seen_at, consecutive_failures, label)
SELECT 'member-' || g, :origin || '/push/' || g,
    encode(sha256(convert_to(:origin || '/push/' || g, 'UTF8')), 'hex'),
    :p256dh, :auth, '1', now(), now(), 0, 'bench'
FROM generate_series(1, :members) AS g
"""
SERVER = """
import sys
from hostapp import create_app
from werkzeug.serving import run_simple
run_simple("127.0.0.1", int(sys.argv[1]), create_app(), threaded=True)
"""


class Sampler:
    """The highest RSS of a process, read every 50 ms while it runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, rss_mb(pid, children=True), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid, children=True))
            time.sleep(0.05)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--no-send", action="store_true",
                        help="stop after the fan-out (the worker is stopped then)")
    args = parser.parse_args()
    from flask_webpush_targeted.push_api.keys import create_key

    with push_sink() as (origin, _), bench_app(origin, WEBPUSH_API_RATE_LIMIT=100_000) as app:
        webpush = app.extensions["webpush"]
        p256dh, auth = key_pool(1)[0]
        with app.app_context():
            webpush.db.session.execute(sa.text(SUBSCRIPTIONS), {
                "origin": origin, "p256dh": p256dh, "auth": auth, "members": args.members})
            _, key = create_key(webpush.db, webpush.models, "bench", ["send", "stats"])
            webpush.db.session.commit()
        folder = Path(tempfile.mkdtemp(prefix="audience-"))
        csv_file = folder / "members.csv"
        with csv_file.open("w", encoding="utf-8") as out:
            out.write("user_id,seat\n")
            for i in range(1, args.members + 1):
                out.write(f"member-{i},{i % 30 + 1}{'ABCDEF'[i % 6]}\n")
        env = {**os.environ, "WEBPUSH_TEST_APP": json.dumps(app.config["BENCH_SETTINGS"]),
               "PYTHONPATH": str(ROOT / "tests")}
        port = free_port()
        server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], env=env,
                                  cwd=ROOT / "tests", stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}/webpush/api/v1"
        headers = {"Authorization": f"Bearer {key}"}
        try:
            for _ in range(200):
                try:
                    requests.get(f"{base}/openapi.json", timeout=1)
                    break
                except requests.ConnectionError:
                    time.sleep(0.1)
            time.sleep(0.5)
            web_idle = rss_mb(server.pid, children=True)
            web = Sampler(server.pid)
            started = time.perf_counter()
            with csv_file.open("rb") as body:
                uploaded = requests.post(f"{base}/audiences?name=bench", data=body,
                                         headers={**headers, "Content-Type": "text/csv"},
                                         timeout=3600)
            upload_s = time.perf_counter() - started
            web_peak = web.stop()
            uploaded.raise_for_status()
            audience = uploaded.json()
            [worker] = start_workers(app, 1)
            wait_for_workers(app, 1)
            time.sleep(0.5)
            worker_idle = rss_mb(worker.pid, children=True)
            sampler = Sampler(worker.pid)
            called = time.perf_counter()
            sent = requests.post(f"{base}/notifications", headers=headers, timeout=60, json={
                "audience_id": audience["id"], "title": "Boarding soon",
                "body": "Your seat is {seat}", "ttl": 86_400})
            sent.raise_for_status()
            nid = sent.json()["id"]
            N = webpush.models.Notification
            with app.app_context(), webpush.db.engine.connect() as conn:
                query = sa.select(N.fanned_out_at).where(N.id == nid)
                while conn.execute(query).scalar() is None:
                    conn.rollback()
                    time.sleep(0.05)
            fanout_s = time.perf_counter() - called
            send_s = None
            if not args.no_send:
                send_s = wait_done(app, nid, timeout=7200) - called
            worker_peak = sampler.stop()
            stop_workers([worker])
            with app.app_context():
                figures = webpush.stats(nid)
        finally:
            server.terminate()
            server.wait(10)
            csv_file.unlink()
            folder.rmdir()
    result = {
        "members": args.members, "csv_bytes": sum(len(f"member-{i},{i % 30 + 1}A\n")
                                                  for i in range(1, args.members + 1)) + 13,
        "audience_size": audience["size"], "rejected": audience["rejected"],
        "upload_seconds": round(upload_s, 1),
        "upload_members_per_second": round(args.members / upload_s),
        "web_rss_idle_mb": round(web_idle), "web_rss_peak_mb": round(web_peak),
        "fanout_seconds": round(fanout_s, 1),
        "send_seconds": None if send_s is None else round(send_s, 1),
        "sent": figures["sent"], "deliveries": figures["deliveries"],
        "worker_rss_idle_mb": round(worker_idle), "worker_rss_peak_mb": round(worker_peak),
    }
    print(json.dumps(result, indent=2))
    write_result("audience_scale", result)


if __name__ == "__main__":
    main()
