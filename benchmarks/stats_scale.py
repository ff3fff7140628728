"""Admin pages and stats() for a notification with 1,000,000 deliveries on PostgreSQL.

    python benchmarks/stats_scale.py [--deliveries 1000000] [--runs 5]

Rows are generated in SQL (generate_series), with realistic mixes of statuses
and events. Each figure is the median of several requests through Flask's test
client as an administrator; the baseline is the same request for a notification
with 1,000 deliveries in the same database.
"""

from __future__ import annotations

import argparse
import functools
import time
from typing import Any

import sqlalchemy as sa
from harness import bench_app, median_of, write_result
from hostapp import USERS  # noqa: F401  (the admin is user "9")

FILL = """
INSERT INTO webpush_subscription (user_id, endpoint, endpoint_sha256, p256dh, auth, label,
    consent_version, created_at, last_seen_at, consecutive_failures)
SELECT 'u' || g, 'https://fcm.googleapis.com/fcm/send/' || g, md5('e' || g) || md5('f' || g),
    'BAAA', 'AAAA', (ARRAY['Chrome on Android','Firefox on Linux','Safari on iPhone'])[1 + g % 3],
    '1', now(), now(), 0
FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS g;
INSERT INTO webpush_delivery (notification_id, subscription_id, user_id, status, status_code,
    attempts, created_at, sent_at, displayed_at, clicked_at)
SELECT :nid, s.id, s.user_id,
    CASE WHEN s.id % 20 = 0 THEN 'gone' WHEN s.id % 33 = 0 THEN 'failed' ELSE 'sent' END,
    CASE WHEN s.id % 20 = 0 THEN 410 WHEN s.id % 33 = 0 THEN 500 ELSE 201 END, 1,
    now() - interval '2 hours', now() - (s.id % 7200) * interval '1 second',
    CASE WHEN s.id % 3 = 0 THEN now() - (s.id % 7000) * interval '1 second' END,
    CASE WHEN s.id % 17 = 0 THEN now() - (s.id % 6000) * interval '1 second' END
FROM webpush_subscription s WHERE s.id BETWEEN CAST(:first AS bigint) AND CAST(:last AS bigint);
"""


COUNTERS = """
INSERT INTO webpush_stat (notification_id, dimension, key, deliveries, sent, failed, gone,
    expired, skipped, displayed, clicked, closed)
SELECT :nid, 'total', '', count(*), count(*) FILTER (WHERE status = 'sent'),
    count(*) FILTER (WHERE status = 'failed'), count(*) FILTER (WHERE status = 'gone'), 0, 0,
    count(displayed_at), count(clicked_at), 0
FROM webpush_delivery WHERE notification_id = :nid
UNION ALL
SELECT :nid, 'platform', (ARRAY['Chrome mobile','Firefox desktop','Safari mobile'])[1 + s.id % 3],
    count(*), count(*) FILTER (WHERE d.status = 'sent'), 0, 0,
    0, 0, count(d.displayed_at), count(d.clicked_at), 0
FROM webpush_delivery d JOIN webpush_subscription s ON s.id = d.subscription_id
WHERE d.notification_id = :nid GROUP BY 3
UNION ALL
SELECT :nid, 'minute', to_char(date_trunc('minute', sent_at AT TIME ZONE 'UTC'),
    'YYYY-MM-DD"T"HH24:MI:SS'), 0, count(*), 0, 0, 0, 0, 0, 0, 0
FROM webpush_delivery WHERE notification_id = :nid AND sent_at IS NOT NULL GROUP BY 3
UNION ALL
SELECT :nid, 'reason', coalesce(status_code::text, '') || '|' || coalesce(reason, ''), 0, 0,
    count(*) FILTER (WHERE status = 'failed'), count(*) FILTER (WHERE status = 'gone'), 0, 0,
    0, 0, 0
FROM webpush_delivery WHERE notification_id = :nid AND status IN ('failed', 'gone')
GROUP BY 3
"""


def fill(app: Any, nid: int, first: int, last: int) -> None:
    webpush = app.extensions["webpush"]
    with app.app_context():
        for statement in FILL.strip().split(";\n"):
            webpush.db.session.execute(sa.text(statement),
                                       {"nid": nid, "first": first, "last": last})
        webpush.db.session.commit()
        # The counters the workers and events would have bumped, computed once here.
        webpush.db.session.execute(sa.text(COUNTERS), {"nid": nid})
        webpush.db.session.commit()
        webpush.db.session.execute(sa.text("ANALYZE"))
        webpush.db.session.commit()


def make_notification(app: Any, users: int) -> int:
    webpush = app.extensions["webpush"]
    with app.app_context():
        n = webpush.models.Notification(
            status="done", payload={"title": f"{users} deliveries", "body": "", "url": "/"},
            targeting={"user_ids": [], "devices": "all"}, ttl=86400, urgency="normal")
        webpush.db.session.add(n)
        webpush.db.session.commit()
        return int(n.id)


def timed_get(client: Any, url: str) -> float:
    start = time.perf_counter()
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with bench_app("http://127.0.0.1:9") as app:
        webpush = app.extensions["webpush"]
        webpush.stats_access(lambda user: user.is_admin)
        small, big = make_notification(app, 1000), make_notification(app, args.deliveries)
        started = time.perf_counter()
        fill(app, small, 1, 1000)
        fill(app, big, 1001, 1000 + args.deliveries)
        print(f"generated {args.deliveries + 1000} rows in {time.perf_counter() - started:.0f}s")
        client = app.test_client()
        client.get("/login/9")
        pages = {
            "list page": "/webpush/admin/notifications",
            "notification page": "/webpush/admin/notifications/{nid}",
            "notification JSON": "/webpush/admin/notifications/{nid}.json",
            "deliveries JSON page": "/webpush/admin/notifications/{nid}/deliveries.json",
        }
        results: dict[str, dict[str, Any]] = {}
        for name, url in pages.items():
            base, _ = median_of(args.runs, functools.partial(
                timed_get, client, url.format(nid=small)))
            value, runs = median_of(args.runs, functools.partial(
                timed_get, client, url.format(nid=big)))
            results[name] = {"median_s": value, "runs": runs, "baseline_1000_s": base}
        with app.app_context():
            base, _ = median_of(args.runs, lambda: _timed(lambda: webpush.stats(small)))
            value, runs = median_of(args.runs, lambda: _timed(lambda: webpush.stats(big)))
        results["webpush.stats()"] = {"median_s": value, "runs": runs, "baseline_1000_s": base}
    print(f"{'request':<24}{args.deliveries:>12,} deliveries{'1,000 deliveries':>20}{'ratio':>8}")
    for name, r in results.items():
        print(f"{name:<24}{r['median_s'] * 1000:>17.0f} ms{r['baseline_1000_s'] * 1000:>17.0f} ms"
              f"{r['median_s'] / r['baseline_1000_s']:>8.1f}x")
    print(f"written to {write_result('stats_scale', results)}")


def _timed(call: Any) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
