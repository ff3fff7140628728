"""Drive a real headless Firefox, offline, with Marionette (no geckodriver, no Selenium).

Firefox's push client is pointed at a push service of our own (see
``LocalPushService.websocket_url``), so subscribe -> encrypted push ->
service worker -> notification runs for real without internet.

Scripts run in Marionette's sandbox: reach page globals as
``window.wrappedJSObject``. In ``execute_async_script`` the callback that
returns the result is the last argument: ``arguments[arguments.length - 1]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

try:
    with warnings.catch_warnings():  # its dependencies (mozinfo, mozrunner) use deprecated APIs
        warnings.simplefilter("ignore", DeprecationWarning)
        from marionette_driver.marionette import Marionette
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "FirefoxSession needs marionette_driver: "
        "pip install 'flask-webpush-targeted[testing]'"
    ) from exc

__all__ = ["FirefoxNotFoundError", "FirefoxSession", "firefox_prefs"]

# Quiet, fast and offline: no updates, telemetry, first-run pages or background traffic.
# Marionette adds its own recommended preferences on top (and disables push: see below).
_QUIET_PREFS: dict[str, Any] = {
    "app.normandy.enabled": False,
    "app.shield.optoutstudies.enabled": False,
    "app.update.auto": False,
    "app.update.checkInstallTime": False,
    "app.update.disabledForTesting": True,
    "browser.aboutwelcome.enabled": False,
    "browser.discovery.enabled": False,
    "browser.newtabpage.enabled": False,
    "browser.region.network.url": "",
    "browser.region.update.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "browser.search.update": False,
    "browser.sessionstore.resume_from_crash": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.startup.page": 0,
    "browser.tabs.warnOnClose": False,
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "extensions.blocklist.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "extensions.update.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "services.settings.server": "data:,#remote-settings-dummy/v1",
    "startup.homepage_welcome_url": "about:blank",
    "startup.homepage_welcome_url.additional": "",
    "toolkit.startup.max_resumed_crashes": -1,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "toolkit.telemetry.server": "",
    "toolkit.telemetry.unified": False,
}


def firefox_prefs(push_server_url: str | None, *, debug: bool = False) -> dict[str, Any]:
    """The user.js preferences for an offline Firefox whose push service is ours."""
    prefs = dict(_QUIET_PREFS)
    prefs["permissions.default.desktop-notification"] = 1  # grant without a prompt
    prefs["alerts.useSystemBackend"] = False  # headless has no desktop notifier
    if push_server_url is not None:
        prefs["dom.push.serverURL"] = push_server_url
        prefs["dom.push.testing.allowInsecureServerURL"] = True  # ws:// on loopback
        prefs["dom.push.connection.enabled"] = True  # Marionette turns it off otherwise
        prefs["dom.push.retryBaseInterval"] = 1000  # reconnect after 1 s, not 5 s
    else:
        prefs["dom.push.connection.enabled"] = False
    if debug:
        prefs["dom.push.loglevel"] = "debug"
        prefs["devtools.console.stdout.chrome"] = True
        prefs["devtools.console.stdout.content"] = True
    return prefs


_GET_NOTIFICATIONS = """
const done = arguments[arguments.length - 1];
navigator.serviceWorker.getRegistration(arguments[0])
  .then((r) => r ? r.getNotifications() : [])
  .then((list) => done(list.map((n) => ({title: n.title, body: n.body, tag: n.tag,
                                          data: n.data === undefined ? null : n.data}))))
  .catch((e) => done(String(e)));
"""


def tail_of(path: Path, lines: int = 40) -> str:
    """The last lines of a log file (empty if it cannot be read), for error messages."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class FirefoxNotFoundError(RuntimeError):
    """The Firefox binary is not installed."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FirefoxSession:
    """A headless Firefox with its own profile, driven over Marionette."""

    def __init__(
        self,
        push_server_url: str | None,
        *,
        profile_dir: str | os.PathLike[str] | None = None,
        binary: str = "firefox-esr",
        prefs: Mapping[str, Any] | None = None,
        startup_timeout: float = 60.0,
        debug: bool = False,
    ) -> None:
        """Start Firefox and a Marionette session; `prefs` override the defaults."""
        executable = shutil.which(binary)
        if executable is None:
            raise FirefoxNotFoundError(
                f"{binary!r} was not found; install it with: apt-get install -y firefox-esr"
            )
        self._own_profile = profile_dir is None
        self.profile_dir = Path(profile_dir or tempfile.mkdtemp(prefix="webpush-firefox-"))
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        self.marionette_port = _free_port()
        all_prefs = {**firefox_prefs(push_server_url, debug=debug), **(prefs or {})}
        all_prefs["marionette.port"] = self.marionette_port
        with open(self.profile_dir / "user.js", "w", encoding="utf-8") as user_js:
            for name, value in all_prefs.items():
                user_js.write(f"user_pref({json.dumps(name)}, {json.dumps(value)});\n")
        self.log_path = self.profile_dir / "firefox.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in quit()
        self.process = subprocess.Popen(
            [executable, "--marionette", "--headless", "--no-remote",
             "-profile", str(self.profile_dir), "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "MOZ_HEADLESS": "1", "MOZ_CRASHREPORTER_DISABLE": "1"},
            start_new_session=True,  # its own process group, so quit() ends every child
        )
        self.client: Marionette | None = None
        try:
            self._wait_for_marionette(startup_timeout)
            self.client = Marionette(host="127.0.0.1", port=self.marionette_port)
            self.client.start_session(timeout=startup_timeout)
        except BaseException:
            self.quit()
            raise

    def _wait_for_marionette(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Firefox exited with {self.process.returncode}; log:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.marionette_port), timeout=0.5
            ):
                return
            time.sleep(0.05)
        raise TimeoutError(f"Marionette did not listen within {timeout}s; log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The end of Firefox's stdout/stderr, for error messages."""
        return tail_of(self.log_path, lines)

    @property
    def _marionette(self) -> Marionette:
        if self.client is None:
            raise RuntimeError("the Firefox session has ended")
        return self.client

    def navigate(self, url: str) -> None:
        """Load a URL in the current tab and wait for it."""
        self._marionette.navigate(url)

    def execute_script(self, js: str, args: Sequence[Any] = ()) -> Any:
        """Run JavaScript in the page's sandbox and return its result."""
        return self._marionette.execute_script(js, script_args=list(args))

    def execute_async_script(self, js: str, args: Sequence[Any] = (), timeout: float = 30.0) -> Any:
        """Run JavaScript that reports through its last argument, a callback."""
        return self._marionette.execute_async_script(
            js, script_args=list(args), script_timeout=int(timeout * 1000)
        )

    def notifications(self, scope: str = "/", timeout: float = 10.0) -> list[dict[str, Any]]:
        """What the service worker of ``scope`` shows now: ``registration.getNotifications()``.

        ``scope`` is resolved against the current page, which must be on the app's origin
        (e.g. ``"/webpush/"``, the extension's default). Each notification is a dict with
        ``title``, ``body``, ``tag`` and ``data``; an empty list when nothing is registered.
        """
        result = self.execute_async_script(_GET_NOTIFICATIONS, [scope], timeout=timeout)
        if isinstance(result, str):
            raise RuntimeError(f"getNotifications() failed: {result}")
        return list(result)

    def quit(self, timeout: float = 10.0) -> None:
        """End the session and Firefox with all its child processes."""
        client, self.client = self.client, None
        if client is not None and self.process.poll() is None:
            with contextlib.suppress(Exception):
                client._request_in_app_shutdown(["eForceQuit"])
            with contextlib.suppress(Exception):
                client.delete_session(send_request=False)
        if client is not None:
            client.cleanup_ran = True  # it did not start Firefox, so it must not clean up
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)
        # Children (content processes) normally follow the parent; make sure.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if not self._log.closed:
            self._log.close()
        if self._own_profile:
            shutil.rmtree(self.profile_dir, ignore_errors=True)

    def __enter__(self) -> FirefoxSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.quit()
