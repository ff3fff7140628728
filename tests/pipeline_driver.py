"""Runs a host's RQ jobs in the test's own process, on an injected clock.

RQ's worker and scheduler run on the wall clock; a test of the pipeline's states moves
time forward instead of sleeping. This driver does the part of RQ the pipeline relies on:
ready jobs in queue order, scheduled jobs once the clock reaches their time. The jobs,
their arguments and Redis are RQ's own; only the loop that picks them is this one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask
from rq.job import Job

from flask_webpush_targeted.clock import ManualClock
from flask_webpush_targeted.redis_queue import get_queue


class InProcessQueue:
    """Pop and run the app's jobs; ``around`` wraps each run (e.g. to inject a failure)."""

    def __init__(self, app: Flask, clock: ManualClock) -> None:
        self.app = app
        self.clock = clock
        self.ran: list[tuple[str, tuple[Any, ...]]] = []

    def ready_count(self) -> int:
        with self.app.app_context():
            return len(get_queue())

    def scheduled(self) -> list[tuple[float, str, tuple[Any, ...]]]:
        """(time, function name, arguments) of every scheduled job, earliest first."""
        with self.app.app_context():
            queue = get_queue()
            registry = queue.scheduled_job_registry
            found = []
            for job_id in registry.get_job_ids():
                job = Job.fetch(job_id, connection=queue.connection)
                at = registry.get_scheduled_time(job_id).timestamp()
                found.append((at, job.func_name.rsplit(".", 1)[-1], tuple(job.args)))
            return sorted(found)

    def release_due(self) -> int:
        """Move the scheduled jobs whose time the clock has reached to the queue."""
        with self.app.app_context():
            queue = get_queue()
            registry = queue.scheduled_job_registry
            due = registry.get_jobs_to_schedule(int(self.clock.now.timestamp()))
            for job_id in due:
                registry.remove(job_id)
                queue.connection.rpush(queue.key, job_id)
            return len(due)

    def run_one(self, around: Callable[[Callable[[], Any]], Any] | None = None) -> bool:
        """Run the first ready job (after releasing due ones); False when none is ready."""
        self.release_due()
        with self.app.app_context():
            queue = get_queue()
            job_id = queue.connection.lpop(queue.key)
            if job_id is None:
                return False
            job = Job.fetch(job_id.decode(), connection=queue.connection)
            name = job.func_name.rsplit(".", 1)[-1]
            self.ran.append((name, tuple(job.args)))
            func, args, kwargs = job.func, job.args, job.kwargs
            job.delete()
        with self.app.app_context():
            run = lambda: func(*args, **kwargs)  # noqa: E731
            if around is None:
                run()
            else:
                around(run)
        return True

    def run_all(self, limit: int = 10_000) -> int:
        """Run ready jobs until none is ready (jobs they enqueue included); return how many."""
        count = 0
        while count < limit and self.run_one():
            count += 1
        return count
