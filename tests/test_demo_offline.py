"""``python -m example_app --offline`` runs the whole journey with no internet: its local
push service, admitted in the shop and in its worker, and the Firefox profile it writes
take a real Firefox from opt-in to a displayed notification; stopping the demo ends
its worker and its push service."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from browser import customer_id, firefox_log_in, firefox_opt_in, wait_until
from conftest import REDIS_URL
from hostapp import VAPID_PRIVATE, VAPID_PUBLIC
from test_demo_shutdown import alive, children_named, free_port

from flask_webpush_targeted.testing import FirefoxSession

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
USER_PREF = re.compile(r'^user_pref\((".*?"), (.*)\);$')


class Demo:
    """``python -m example_app --offline`` in its own process group, its output kept."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "example_app", "--offline", *args], env=env, cwd=ROOT,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines[-40:])

    def line_after(self, heading: str) -> str | None:
        """The line printed after ``heading``, once it is there."""
        lines = list(self.lines)
        for i, line in enumerate(lines[:-1]):
            if line.startswith(heading):
                return lines[i + 1]
        return None


def read_prefs(user_js: Path) -> dict[str, Any]:
    """The preferences of a user.js file."""
    prefs = {}
    for line in user_js.read_text(encoding="utf-8").splitlines():
        match = USER_PREF.match(line)
        assert match, line
        prefs[json.loads(match[1])] = json.loads(match[2])
    return prefs


def refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def demo_environment(tmp_path: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """The demo's environment on free ports, its database in tmp_path, a queue of its own;
    and the same settings as create_app config, for the test's side of the shop."""
    ports = {"PORT": free_port(), "PUSH_PORT": free_port(), "PUSH_WS_PORT": free_port()}
    config = {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'shop.db'}",
              "SECRET_KEY": "demo-offline", "WEBPUSH_REDIS_URL": REDIS_URL,
              "WEBPUSH_QUEUE": f"demo-offline-{uuid.uuid4().hex[:8]}",
              "WEBPUSH_VAPID_PRIVATE_KEY": VAPID_PRIVATE, "WEBPUSH_VAPID_PUBLIC_KEY": VAPID_PUBLIC}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "HOST": "127.0.0.1",
           "WEBPUSH_DEMO_FIREFOX_PROFILE": str(tmp_path / "firefox-profile"),
           "DATABASE_URL": config["SQLALCHEMY_DATABASE_URI"],
           **{k: v for k, v in config.items() if k.startswith("WEBPUSH_") or k == "SECRET_KEY"}}
    env.pop("WEBPUSH_EXTRA_PUSH_SERVICES", None)  # the demo admits its push service itself
    return env, config


def test_offline_demo_takes_a_real_firefox_from_opt_in_to_a_shown_notification(
        tmp_path: Path) -> None:
    env, config = demo_environment(tmp_path)
    port, push_port, ws_port = (int(env[k]) for k in ("PORT", "PUSH_PORT", "PUSH_WS_PORT"))
    profile = Path(env["WEBPUSH_DEMO_FIREFOX_PROFILE"])
    demo = Demo(env)
    try:
        # 1. What the demo prints: the exact Firefox command, with the profile it wrote.
        command = wait_until(lambda: demo.line_after("Open the shop in Firefox with:"),
                             "the demo printed no Firefox command", 60, details=demo.output)
        shop_url = f"http://127.0.0.1:{port}/"
        assert shlex.split(command) == ["firefox-esr", "--profile", str(profile),
                                        "--no-remote", shop_url]
        prefs = read_prefs(profile / "user.js")
        assert prefs["dom.push.serverURL"] == f"ws://127.0.0.1:{ws_port}/"
        assert prefs["dom.push.connection.enabled"] is True
        assert prefs["dom.push.testing.allowInsecureServerURL"] is True
        assert "marionette.port" not in prefs  # a profile for a person, not for a driver
        wait_until(lambda: not refuses(port), "the shop did not serve", 60, details=demo.output)
        wait_until(lambda: children_named(demo.process.pid, "webpush worker"), "no worker", 30)
        [worker] = children_named(demo.process.pid, "webpush worker")

        # 2. A real Firefox on that profile (headless here) logs in and opts in.
        shop = SimpleNamespace(url=shop_url.rstrip("/"), app=None)
        with FirefoxSession(prefs["dom.push.serverURL"], profile_dir=profile) as firefox:
            firefox_log_in(firefox, shop, "alice@example.com", "alice-pass")
            firefox_opt_in(firefox)

            # 3. The shop's code sends, against the demo's database and queue; the demo's
            # worker delivers through the demo's push service.
            from example_app import create_app

            shop.app = create_app({**config, "WEBPUSH_EXTRA_PUSH_SERVICES":
                                   [f"http://127.0.0.1:{push_port}"]})
            webpush = shop.app.extensions["webpush"]
            alice = customer_id(shop, "alice@example.com")
            with shop.app.app_context():
                [endpoint] = webpush.db.session.scalars(
                    sa.select(webpush.models.Subscription.endpoint)
                    .where(webpush.models.Subscription.user_id == alice)).all()
                assert endpoint.startswith(f"http://127.0.0.1:{push_port}/push/")
                nid = webpush.notify_user(alice, title="Your order has shipped",
                                          body="It arrives tomorrow.", url="/account",
                                          category="orders").id

            def displayed() -> Any:
                with shop.app.app_context():
                    return webpush.stats(nid)["displayed"]

            wait_until(displayed, "the service worker's displayed beacon never arrived", 20,
                       details=demo.output)
            shown = firefox.notifications("/webpush/")
            assert any(n["title"] == "Your order has shipped"
                       and n["body"] == "It arrives tomorrow." for n in shown), shown

        # 4. SIGTERM stops the demo and everything it started.
        demo.process.send_signal(signal.SIGTERM)
        assert demo.process.wait(timeout=30) == 128 + signal.SIGTERM
        wait_until(lambda: not alive(worker), "the worker outlived the demo", 20)
        assert refuses(port) and refuses(push_port) and refuses(ws_port)
    finally:
        if demo.process.poll() is None:
            os.killpg(demo.process.pid, signal.SIGKILL)
            demo.process.wait()
        for pid in children_named(demo.process.pid, "webpush worker"):
            os.kill(pid, signal.SIGKILL)


def test_open_firefox_launches_firefox_on_a_new_profile_and_ctrl_c_closes_it(
        tmp_path: Path) -> None:
    env, _ = demo_environment(tmp_path)
    env["MOZ_HEADLESS"] = "1"  # the windowed command, without a display
    profile = env["WEBPUSH_DEMO_FIREFOX_PROFILE"]
    # An earlier run's profile: its push state would point at a push service now gone.
    Path(profile).mkdir()
    (Path(profile) / "webpush-demo-profile.txt").write_text("earlier run")
    (Path(profile) / "earlier-state.sqlite").write_text("stale")
    demo = Demo(env, "--open-firefox")
    try:
        def firefox() -> list[int]:
            return children_named(demo.process.pid, f"--profile {profile} --no-remote")

        [browser] = wait_until(firefox, "the demo did not open Firefox", 60,
                               details=demo.output)
        assert not (Path(profile) / "earlier-state.sqlite").exists()
        wait_until(lambda: children_named(demo.process.pid, "webpush worker"), "no worker", 30)
        [worker] = children_named(demo.process.pid, "webpush worker")
        assert alive(browser)
        os.killpg(demo.process.pid, signal.SIGINT)  # a terminal's Ctrl+C
        demo.process.wait(timeout=30)
        wait_until(lambda: not alive(browser), "Firefox outlived the demo", 20)
        wait_until(lambda: not alive(worker), "the worker outlived the demo", 20)
        assert refuses(int(env["PUSH_PORT"])) and refuses(int(env["PUSH_WS_PORT"]))
    finally:
        if demo.process.poll() is None:
            os.killpg(demo.process.pid, signal.SIGKILL)
            demo.process.wait()
        for pid in firefox() + children_named(demo.process.pid, "webpush worker"):
            os.kill(pid, signal.SIGKILL)
