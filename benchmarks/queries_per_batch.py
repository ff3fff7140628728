"""SQL statements a worker runs per batch, counted, for several batch sizes.

    python benchmarks/queries_per_batch.py [--deliveries 2000]

A real RQ worker (in this process, so the statements can be counted with a
SQLAlchemy event) sends to the push sink; the count covers fan-out, claims,
results and completion. The baseline a per-row design would have: at least one
statement per delivery.
"""

from __future__ import annotations

import argparse

import sqlalchemy as sa
from harness import add_subscriptions, bench_app, push_sink, write_result

from flask_webpush_targeted.worker import make_worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=2_000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[50, 100, 250, 500])
    args = parser.parse_args()
    results = {}
    with push_sink() as (origin, _):
        for size in args.batch_sizes:
            with bench_app(origin, WEBPUSH_BATCH_SIZE=size) as app:
                users = add_subscriptions(app, origin, args.deliveries)
                webpush = app.extensions["webpush"]
                counted = {"n": 0}
                with app.app_context():
                    engine = webpush.db.engine

                    def count(*_: object, counted: dict[str, int] = counted) -> None:
                        counted["n"] += 1

                    sa.event.listen(engine, "before_cursor_execute", count)
                    nid = webpush.notify_users(users, title="Count", body="x").id
                    counted["n"] = 0
                make_worker(app, simple=True).work(burst=True)
                with app.app_context():
                    sent = webpush.stats(nid)["sent"]
                    sa.event.remove(engine, "before_cursor_execute", count)
                batches = -(-args.deliveries // size)
                results[str(size)] = {"statements": counted["n"], "batches": batches,
                                      "per_batch": counted["n"] / batches,
                                      "per_delivery": counted["n"] / sent}
    print(f"{args.deliveries} deliveries")
    print(f"{'batch size':>10}{'statements':>12}{'per batch':>11}{'per delivery':>14}")
    for size, r in results.items():
        print(f"{size:>10}{r['statements']:>12}{r['per_batch']:>11.1f}"
              f"{r['per_delivery']:>14.3f}")
    print("a per-row design: >= 1 statement per delivery")
    print(f"written to {write_result('queries_per_batch', results)}")


if __name__ == "__main__":
    main()
