"""A worker's memory while it sends 10,000 and then 200,000 deliveries.

    python benchmarks/worker_memory.py [--sizes 10000 200000]

Peak RSS of one `flask webpush worker --simple` process, sampled every 50 ms from
/proc, against the same process's RSS when idle (the baseline). Nothing loads a
whole audience into memory, so the peak should not grow with the audience.
"""

from __future__ import annotations

import argparse
import threading
import time

from harness import (
    add_subscriptions,
    bench_app,
    push_sink,
    rss_mb,
    start_workers,
    stop_workers,
    wait_done,
    wait_for_workers,
    write_result,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 200_000])
    args = parser.parse_args()
    results = {}
    with push_sink() as (origin, _):
        for size in args.sizes:
            with bench_app(origin) as app:
                users = add_subscriptions(app, origin, size)
                [worker] = start_workers(app, 1, "--simple")
                try:
                    wait_for_workers(app, 1)
                    time.sleep(0.5)
                    idle = rss_mb(worker.pid)
                    peak = [idle]
                    stop = threading.Event()

                    def sample(pid: int = worker.pid, stop: threading.Event = stop,
                               peak: list[float] = peak) -> None:
                        while not stop.is_set():
                            peak.append(rss_mb(pid))
                            time.sleep(0.05)

                    sampler = threading.Thread(target=sample)
                    sampler.start()
                    webpush = app.extensions["webpush"]
                    with app.app_context():
                        start = time.monotonic()
                        nid = webpush.notify_users(users, title="Memory", body="x" * 200).id
                    done = wait_done(app, nid)
                    stop.set()
                    sampler.join()
                finally:
                    stop_workers([worker])
                results[str(size)] = {"idle_mb": idle, "peak_mb": max(peak),
                                      "seconds": done - start}
    print(f"{'deliveries':>10}{'idle RSS':>12}{'peak RSS':>12}{'time':>10}")
    for size, r in results.items():
        print(f"{size:>10}{r['idle_mb']:>9.0f} MB{r['peak_mb']:>9.0f} MB{r['seconds']:>9.1f}s")
    print(f"written to {write_result('worker_memory', results)}")


if __name__ == "__main__":
    main()
