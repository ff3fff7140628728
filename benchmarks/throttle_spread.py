"""How ``rate_per_minute`` spreads a notification's sends across worker processes.

    python benchmarks/throttle_spread.py [--deliveries 300] [--rate 60] [--workers 2]

Sends one notification of ``--deliveries`` users at ``--rate`` a minute through
``--workers`` default `flask webpush worker` processes (PostgreSQL, Redis, the package's
local push service, which decrypts and timestamps every message), then the same audience
unthrottled as the baseline of the same run. Prints the time from the first message to
the last, the most messages in any 60-second window, and the expected spread
(deliveries / rate minutes).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from harness import (
    bench_app,
    start_workers,
    stop_workers,
    wait_done,
    wait_for_workers,
    write_result,
)

from flask_webpush_targeted.subscriptions import SubscribeRequest, SubscriptionInfo
from flask_webpush_targeted.testing import LocalPushService


def subscribe_all(app: Any, service: LocalPushService, count: int) -> list[str]:
    """One real subscription of the local service per user; return the user ids."""
    webpush = app.extensions["webpush"]
    users = [str(i) for i in range(count)]
    with app.app_context():
        for user in users:
            sub = service.new_subscription()
            info = SubscriptionInfo(sub["endpoint"], sub["keys"]["p256dh"], sub["keys"]["auth"])
            webpush.store.subscribe(user, SubscribeRequest(info, "1", None), None)
    return users


def spread(app: Any, service: LocalPushService, users: list[str],
           rate: int | None) -> dict[str, Any]:
    """Send one notification to ``users`` and read when the service received each message."""
    service.clear()
    webpush = app.extensions["webpush"]
    started = time.monotonic()
    with app.app_context():
        nid = int(webpush.notify_users(users, title="Weekend sale", body="20% off",
                                       rate_per_minute=rate).id)
    done = wait_done(app, nid, timeout=3600)
    times = sorted(p.received_at for p in service.received if p.ok)
    window = max(sum(t <= u < t + 60 for u in times) for t in times) if times else 0
    return {"rate_per_minute": rate, "messages": len(times),
            "first_to_last_s": round(times[-1] - times[0], 1) if times else None,
            "call_to_done_s": round(done - started, 1), "most_in_any_minute": window}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=300)
    parser.add_argument("--rate", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    service = LocalPushService().start()
    try:
        with bench_app(service.origin, WEBPUSH_BATCH_SIZE=1000) as app:
            users = subscribe_all(app, service, args.deliveries)
            workers = start_workers(app, args.workers)
            try:
                wait_for_workers(app, args.workers)
                baseline = spread(app, service, users, None)
                throttled = spread(app, service, users, args.rate)
            finally:
                stop_workers(workers)
    finally:
        service.stop()
    expected = 60 * args.deliveries / args.rate
    print(f"{args.deliveries} deliveries, {args.workers} default workers")
    print(f"{'path':<24}{'messages':>9}{'first->last s':>15}{'most in a minute':>18}")
    for name, row in (("unthrottled (baseline)", baseline), (f"{args.rate} a minute", throttled)):
        print(f"{name:<24}{row['messages']:>9}{row['first_to_last_s']!s:>15}"
              f"{row['most_in_any_minute']:>18}")
    print(f"expected spread at {args.rate} a minute: {expected - 60 / args.rate:.0f} s "
          f"(first slot to last); throttled / expected: "
          f"{throttled['first_to_last_s'] / (expected - 60 / args.rate):.2f}")
    write_result("throttle_spread", {"args": vars(args), "baseline": baseline,
                                     "throttled": throttled})


if __name__ == "__main__":
    main()
