"""forget_user when the person is in the targeting of notifications of a million users.

    python benchmarks/forget_user_scale.py [--big 5] [--audience 1000000] [--small 5000]

On PostgreSQL: ``--big`` notifications each targeting ``--audience`` users (the erased
one among them, fanned out, with a few thousand users without devices), and ``--small``
notifications of a few users each, a tenth of them naming the erased user. The lists are
generated in SQL. Prints the time forget_user takes, how many notifications it rewrote,
and the most memory the Python process gained meanwhile (what loading the lists would
cost is shown beside it: the size of one list as Python objects).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import tracemalloc

import sqlalchemy as sa
from harness import bench_app, write_result

BIG = """
INSERT INTO webpush_notification (status, payload, targeting, users_without_devices,
    target_count, without_count, ttl, urgency, created_at, fanned_out_at, finished_at)
SELECT 'done', '{"title": "Winter sale"}',
    json_build_object('user_ids', (SELECT json_agg('customer-' || g)
                                   FROM generate_series(1, :audience) AS g),
                      'devices', 'all'),
    (SELECT json_agg('customer-' || g) FROM generate_series(1, :audience, 250) AS g),
    :audience, :audience / 250, 3600, 'normal', now(), now(), now()
FROM generate_series(1, :big)
"""
SMALL = """
INSERT INTO webpush_notification (status, payload, targeting, target_count, ttl, urgency,
    created_at)
SELECT 'queued', '{"title": "Your order"}',
    json_build_object('user_ids', json_build_array('customer-' || (i * 7919 % :audience + 1),
                                                   CASE WHEN i % 10 = 0 THEN 'customer-1'
                                                        ELSE 'customer-2' END),
                      'devices', 'all'), 2, 3600, 'normal', now()
FROM generate_series(1, :small) AS i
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--big", type=int, default=5)
    parser.add_argument("--audience", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=5000)
    args = parser.parse_args()
    with bench_app("http://127.0.0.1:9") as app:
        webpush = app.extensions["webpush"]
        db, N = webpush.db, webpush.models.Notification
        with app.app_context():
            params = {"audience": args.audience, "big": args.big, "small": args.small}
            db.session.execute(sa.text(BIG), params)
            db.session.execute(sa.text(SMALL), params)
            db.session.commit()
            size = db.session.scalar(sa.text(
                "SELECT pg_size_pretty(pg_total_relation_size('webpush_notification'))"))
            one_list = db.session.scalar(sa.text(
                "SELECT length(CAST(targeting AS text)) FROM webpush_notification "
                "ORDER BY id LIMIT 1"))
            db.session.remove()
        # the erased user is customer-1: in every big list, in the lists without devices
        # (1 is in range(1, audience, 250)) and in a tenth of the small ones
        with app.app_context():
            tracemalloc.start()
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            started = time.perf_counter()
            webpush.forget_user("customer-1")
            seconds = time.perf_counter() - started
            python_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
            left = db.session.scalar(sa.select(sa.func.count()).select_from(N).where(
                sa.func.strpos(sa.cast(N.targeting, sa.Text), '"customer-1"') > 0))
            # what a Python loop over the notifications would have held for one big list
            started_load = time.perf_counter()
            ids = db.session.scalars(sa.select(N.targeting).order_by(N.id).limit(1)).one()
            load_seconds = time.perf_counter() - started_load
            list_bytes = sys.getsizeof(ids["user_ids"]) + sum(
                sys.getsizeof(u) for u in ids["user_ids"])
    result = {
        "big_notifications": args.big, "audience": args.audience,
        "small_notifications": args.small, "table_size": size,
        "one_targeting_json_bytes": one_list, "forget_user_seconds": round(seconds, 3),
        "python_peak_traced_bytes": python_peak, "max_rss_growth_kib": rss_growth,
        "left_naming_the_user": left,
        "one_list_loaded_seconds": round(load_seconds, 3),
        "one_list_as_python_bytes": list_bytes,
    }
    print(json.dumps(result, indent=2))
    write_result("forget_user_scale", result)


if __name__ == "__main__":
    main()
