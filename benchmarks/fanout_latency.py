"""How long notify_users() takes to return, for 1k / 10k / 100k targets.

    python benchmarks/fanout_latency.py [--runs 3]

The call validates, stores one Notification and enqueues one job; the fan-out
to deliveries happens in workers. Measured with 1 and 3 subscriptions per user
to show the call does not depend on how many devices people have. Baseline in
the same run: the time to INSERT one row into the same database.
"""

from __future__ import annotations

import argparse
import functools
import time
from typing import Any

import sqlalchemy as sa
from harness import add_subscriptions, bench_app, median_of, push_sink, write_result


def call_time(app: object, user_ids: list[str]) -> float:
    webpush = app.extensions["webpush"]  # type: ignore[attr-defined]
    with app.app_context():  # type: ignore[attr-defined]
        start = time.perf_counter()
        webpush.notify_users(user_ids, title="Sale starts at noon", body="20% off",
                             url="/sale")
        return time.perf_counter() - start


def insert_time(app: object) -> float:
    webpush = app.extensions["webpush"]  # type: ignore[attr-defined]
    table = webpush.models.Consent.__table__
    with app.app_context():  # type: ignore[attr-defined]
        start = time.perf_counter()
        webpush.db.session.execute(table.insert().values(
            user_id="x", action="granted", notifications=True, link_to_account=True,
            created_at=sa.func.now()))
        webpush.db.session.commit()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    with push_sink() as (origin, _):
        for per_user in (1, 3):
            with bench_app(origin) as app:
                add_subscriptions(app, origin, max(args.sizes) * per_user, per_user=per_user)
                baseline, _ = median_of(args.runs, functools.partial(insert_time, app))
                for size in args.sizes:
                    ids = [str(i) for i in range(size)]
                    median, runs = median_of(args.runs, functools.partial(call_time, app, ids))
                    results[f"{size} users x {per_user} devices"] = {
                        "median_s": median, "runs": runs, "vs_one_insert": median / baseline}
    print(f"{'targets':<28}{'notify_users()':>16}{'vs 1 INSERT':>14}")
    for name, r in results.items():
        print(f"{name:<28}{r['median_s'] * 1000:>13.1f} ms{r['vs_one_insert']:>13.0f}x")
    print(f"written to {write_result('fanout_latency', results)}")


if __name__ == "__main__":
    main()
