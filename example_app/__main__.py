"""``python -m example_app``: create the database, seed it, start a worker, serve the shop."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from pathlib import Path

from . import create_app, db
from .models import seed


def start_worker(redis_url: str) -> subprocess.Popen[bytes]:
    """A `flask webpush worker` process on the same queue, so back-office sends go out."""
    env = {**os.environ, "WEBPUSH_REDIS_URL": redis_url}
    worker = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "example_app", "webpush", "worker", "--simple"],
        env=env, cwd=Path(__file__).resolve().parent.parent)
    atexit.register(worker.terminate)
    return worker


def main() -> None:
    """Run the demo on embedded defaults (SQLite file, embedded Redis, one worker)."""
    app = create_app()
    with app.app_context():
        db.create_all()
        seed()
    if os.environ.get("WEBPUSH_DEMO_WORKER", "1") != "0":
        start_worker(app.config["WEBPUSH_REDIS_URL"])
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "5000"))
    print(f"Example shop on http://{host}:{port}/  (accounts are listed on the login page)")
    app.run(host=host, port=port, debug=False, use_reloader=False)


if __name__ == "__main__":
    main()
