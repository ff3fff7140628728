"""The event export of a million events: memory stays flat, whatever the log's length.

    python benchmarks/event_export.py [--events 1000000] [--runs 3]

On PostgreSQL: ``--events`` events generated in SQL, then, each in a process of its own:
``flask webpush export-events`` to /dev/null, and ``GET /webpush/api/v1/events?limit=N``
read as a stream through the app's test client (the view, its streaming and the JSON of
each line, without a network). Prints each one's peak RSS (``ru_maxrss`` of the child)
beside a baseline process that builds the same app and exports nothing, the events per
second, and the ratio of each peak to the baseline, medians of ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import sqlalchemy as sa
from harness import ROOT, bench_app, write_result

FILL = """
INSERT INTO webpush_event (type, created_at, notification_id, user_id, data)
SELECT (ARRAY['delivery.sent', 'delivery.displayed', 'delivery.clicked'])[1 + g % 3],
       now() - interval '1 hour', 1 + g / 100000, 'customer-' || (g % 50000),
       json_build_object('delivery_id', g, 'subscription_id', g % 50000, 'status_code', 201)
FROM generate_series(1, :count) AS g
"""

#: the API's reader: build the app, read GET events as a stream, print the lines read
API_READER = """
import json, os, sys
sys.path.insert(0, {tests!r})
from hostapp import create_app
from flask_webpush_targeted.push_api.keys import create_key
app = create_app()
webpush = app.extensions["webpush"]
count = 0
if sys.argv[1] == "api":
    with app.app_context():
        key = create_key(webpush.db, webpush.models, "bench", ("stats",))[1]
    response = app.test_client().get(
        "/webpush/api/v1/events", query_string={{"limit": sys.argv[2]}},
        headers={{"Authorization": "Bearer " + key}}, buffered=False)
    for chunk in response.response:
        count += chunk.count(b"\\n")
    response.close()
print(count)
"""


def measured(command: list[str], env: dict[str, str]) -> tuple[float, int, float]:
    """Run ``command``; (its peak RSS in MB, the lines it printed or wrote, seconds)."""
    started = time.perf_counter()
    reader = command[1] == "-c"
    with open(os.devnull, "w") as sink:
        # The reader prints its count; the CLI writes NDJSON (to /dev/null) and its count
        # to stderr ("N events."). Either is one short line: no pipe fills.
        proc = subprocess.Popen(command, env=env, cwd=ROOT / "tests",
                                stdout=subprocess.PIPE if reader else sink,
                                stderr=None if reader else subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage: its peak RSS
        seconds = time.perf_counter() - started
        stream = proc.stdout if reader else proc.stderr
        out = stream.read().decode() if stream else ""
    if status != 0:
        raise SystemExit(f"{command[:4]} failed ({status})")
    return usage.ru_maxrss / 1024, int(out.split()[0] if out.strip() else 0), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with bench_app("http://127.0.0.1:9") as app:
        settings = dict(app.config["BENCH_SETTINGS"])
        env = {**os.environ, "WEBPUSH_TEST_APP": json.dumps(settings),
               "PYTHONPATH": str(ROOT / "tests")}
        db = app.extensions["webpush"].db
        started = time.perf_counter()
        with app.app_context():
            db.session.execute(sa.text(FILL), {"count": args.events})
            db.session.commit()
            db.session.execute(sa.text("ANALYZE webpush_event"))
            db.session.commit()
        print(f"{args.events:,} events written in {time.perf_counter() - started:.1f} s")
        reader = API_READER.format(tests=str(ROOT / "tests"))
        cli = [sys.executable, "-m", "flask", "--app", "hostapp:create_app", "webpush",
               "export-events"]
        runs: dict[str, list[tuple[float, int, float]]] = {"baseline": [], "cli": [], "api": []}
        for _ in range(args.runs):
            runs["baseline"].append(measured([sys.executable, "-c", reader, "none"], env))
            runs["cli"].append(measured(cli, env))
            runs["api"].append(measured([sys.executable, "-c", reader, "api",
                                         str(args.events)], env))
        base = statistics.median(r[0] for r in runs["baseline"])
        summary: dict[str, Any] = {"events": args.events, "runs": args.runs,
                                   "baseline_rss_mb": round(base, 1)}
        print(f"baseline (the app built, nothing exported): peak RSS {base:.1f} MB")
        for name in ("cli", "api"):
            peak = statistics.median(r[0] for r in runs[name])
            rate = statistics.median(args.events / r[2] for r in runs[name])
            lines = runs[name][0][1]
            print(f"{name}: {lines:,} events, peak RSS {peak:.1f} MB ({peak / base:.2f}x the "
                  f"baseline), {rate:,.0f} events/s (medians of {args.runs})")
            summary[name] = {"peak_rss_mb": round(peak, 1),
                             "ratio_to_baseline": round(peak / base, 2),
                             "events_per_second": round(rate)}
        print(f"written to {write_result('event_export', summary)}")


if __name__ == "__main__":
    main()
