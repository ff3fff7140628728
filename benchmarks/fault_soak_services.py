"""The fault soak's own services: a PostgreSQL cluster, a Redis with AOF, a network
namespace for one worker, and the worker processes; each one started, broken and
removed by the soak (benchmarks/fault_soak.py), never a shared instance."""

from __future__ import annotations

import glob
import ipaddress
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, cast

import redis

ROOT = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def run(cmd: list[str], *, user: str | None = None, timeout: float = 120,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, as ``user`` when given (via runuser), with a bound on its time."""
    if user is not None and os.geteuid() == 0:
        cmd = ["runuser", "-u", user, "--", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return done


def wait_until(test: Any, timeout: float, what: str, step: float = 0.1) -> None:
    """Poll ``test()`` until it is true; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(Exception):  # not up yet
            if test():
                return
        time.sleep(step)
    raise TimeoutError(f"{what} not ready in {timeout}s")


class Postgres:
    """A cluster of its own in ``base``: initdb, start, restart, stop."""

    def __init__(self, base: Path, hosts: list[str]) -> None:
        binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        self.bin = Path(binaries[-1]).parent if binaries else Path(shutil.which("initdb") or
                                                                   "initdb").parent
        # PostgreSQL refuses to run as root: the cluster belongs to the postgres user then.
        self.user = "postgres" if os.geteuid() == 0 else None
        self.dir = base / "pgdata"
        self.log = base / "postgres.log"
        self.hosts = hosts
        self.port = free_port()
        base.mkdir(parents=True, exist_ok=True)
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(base, entry.pw_uid, entry.pw_gid)
        self.started = False

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        run([str(self.bin / "initdb"), "-D", str(self.dir), "-U", "postgres", "-A", "trust",
             "--no-sync", "-E", "UTF8"], user=self.user)
        with open(self.dir / "pg_hba.conf", "a") as hba:
            for host in self.hosts:
                if host != "127.0.0.1":  # the namespace's /30: only its worker comes from there
                    hba.write(f"host all all {ipaddress.ip_interface(host + '/30').network}"
                              " trust\n")

    def _options(self) -> str:
        return (f"-p {self.port} -c listen_addresses='{','.join(self.hosts)}' "
                f"-k {self.dir} -c max_connections=200")

    def start(self) -> None:
        run([str(self.bin / "pg_ctl"), "-D", str(self.dir), "-l", str(self.log), "-w",
             "-t", "60", "-o", self._options(), "start"], user=self.user)
        self.started = True

    def restart(self, mode: str) -> float:
        """``pg_ctl restart -m mode``; return the seconds it was down (about)."""
        start = time.monotonic()
        run([str(self.bin / "pg_ctl"), "-D", str(self.dir), "-l", str(self.log), "-w",
             "-t", "60", "-m", mode, "-o", self._options(), "restart"], user=self.user)
        return time.monotonic() - start

    def stop(self) -> None:
        if self.started:
            run([str(self.bin / "pg_ctl"), "-D", str(self.dir), "-m", "immediate", "-w",
                 "-t", "30", "stop"], user=self.user, check=False)
            self.started = False


class Redis:
    """A redis-server of its own, append-only file fsynced at every write, in ``base``."""

    def __init__(self, base: Path, hosts: list[str]) -> None:
        self.dir = base
        self.hosts = hosts
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        base.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, socket_connect_timeout=2)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", *self.hosts,
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir),
             "--save", "", "--logfile", str(self.dir / "redis.log"), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.client().ping(), 20, "redis-server")

    def kill(self) -> None:
        """SIGKILL: only what the append-only file holds survives."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
            self.proc = None


def job_ids(client: redis.Redis, queue: str) -> set[str]:
    """The RQ jobs (whose hash exists) waiting, scheduled or started on ``queue``."""
    ids = {i.decode() for i in cast(list[bytes], client.lrange(f"rq:queue:{queue}", 0, -1))}
    for registry in ("scheduled", "wip", "deferred"):
        # the started registry ("wip") holds "<job id>:<execution id>"
        members = cast(list[bytes], client.zrange(f"rq:{registry}:{queue}", 0, -1))
        ids |= {i.decode().split(":")[0] for i in members}
    ordered = sorted(ids)
    exists = client.pipeline()
    for job_id in ordered:
        exists.exists(f"rq:job:{job_id}")
    return {job_id for job_id, found in zip(ordered, exists.execute(), strict=True) if found}


class Namespace:
    """A network namespace joined to this one by a veth pair on a /30 of its own.

    The worker inside reaches only this pair's host address, where the soak's own
    PostgreSQL, Redis and push service listen; cutting the link is ``ip link set down``
    on the namespace's end.
    """

    def __init__(self, name: str, subnet: str = "10.247.83") -> None:
        self.name = name
        self.host_if, self.ns_if = f"{name[:8]}-h", f"{name[:8]}-n"
        self.host_addr, self.ns_addr = f"{subnet}.1", f"{subnet}.2"
        self.created = False

    @staticmethod
    def available() -> str | None:
        """None when namespaces can be made here; otherwise why not."""
        if os.geteuid() != 0:
            return "not root"
        if shutil.which("ip") is None:
            return "no ip command"
        probe = f"wpsoak-probe-{os.getpid()}"
        made = run(["ip", "netns", "add", probe], check=False)
        if made.returncode != 0:
            return made.stderr.strip() or "ip netns add failed"
        run(["ip", "netns", "del", probe], check=False)
        return None

    def create(self) -> None:
        in_ns = ["ip", "netns", "exec", self.name]
        self.created = True
        for cmd in (["ip", "netns", "add", self.name],
                    ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name",
                     self.ns_if],
                    ["ip", "link", "set", self.ns_if, "netns", self.name],
                    ["ip", "addr", "add", f"{self.host_addr}/30", "dev", self.host_if],
                    ["ip", "link", "set", self.host_if, "up"],
                    [*in_ns, "ip", "addr", "add", f"{self.ns_addr}/30", "dev", self.ns_if],
                    [*in_ns, "ip", "link", "set", self.ns_if, "up"],
                    [*in_ns, "ip", "link", "set", "lo", "up"]):
            run(cmd)

    def link(self, up: bool) -> None:
        run(["ip", "netns", "exec", self.name, "ip", "link", "set", self.ns_if,
             "up" if up else "down"])

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def delete(self) -> None:
        if self.created:
            run(["ip", "link", "del", self.host_if], check=False)
            run(["ip", "netns", "del", self.name], check=False)
            self.created = False


class Workers:
    """`flask webpush worker` processes, each in a session of its own so that a kill takes
    a work horse with it; killed and replaced on demand, restarted when one exits."""

    def __init__(self, settings: dict[str, Any], logs: Path, extra: list[str]) -> None:
        self.settings = settings
        self.logs = logs
        self.extra = extra
        self.procs: dict[int, tuple[subprocess.Popen[bytes], str]] = {}  # pid -> (proc, where)
        self.exited: list[tuple[int, int | None, str]] = []  # unexpected: pid, code, where
        self.started = 0

    def start(self, where: str = "host", namespace: Namespace | None = None,
              settings: dict[str, Any] | None = None) -> subprocess.Popen[bytes]:
        env = {**os.environ, "WEBPUSH_TEST_APP": json.dumps(settings or self.settings),
               "PYTHONPATH": str(ROOT / "tests")}
        cmd = [sys.executable, "-m", "flask", "--app", "hostapp:create_app", "webpush",
               "worker", *self.extra]
        if namespace is not None:
            cmd = [*namespace.prefix(), *cmd]  # ip netns exec execs: the pid stays the worker's
        self.started += 1
        with open(self.logs / f"worker-{self.started}-{where}.log", "wb") as log:
            proc = subprocess.Popen(cmd, env=env, cwd=ROOT / "tests", stdout=log, stderr=log,
                                    start_new_session=True)
        self.procs[proc.pid] = (proc, where)
        return proc

    def kill(self, pid: int) -> None:
        """SIGKILL the worker and anything it forked."""
        proc, _where = self.procs.pop(pid)
        with_signal(pid, signal.SIGKILL)
        proc.wait(10)

    def reap(self) -> list[tuple[str, int | None]]:
        """Forget workers that exited on their own; return where each ran and its code."""
        gone = []
        for pid, (proc, where) in list(self.procs.items()):
            if proc.poll() is not None:
                del self.procs[pid]
                self.exited.append((pid, proc.returncode, where))
                gone.append((where, proc.returncode))
        return gone

    def stop_all(self) -> None:
        for pid in list(self.procs):
            with_signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for pid, (proc, _where) in list(self.procs.items()):
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with_signal(pid, signal.SIGKILL)
                proc.wait(5)
        self.procs.clear()


def with_signal(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group of a worker this soak started."""
    with suppress(ProcessLookupError):
        os.killpg(pid, sig)


@contextmanager
def sink(host: str, origins: int, read_timeout: float, lifetime: float, seed: int,
         rates: dict[str, float]) -> Iterator[tuple[list[str], subprocess.Popen[str]]]:
    """The misbehaving push service (fault_soak_sink.py) in its own process."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "fault_soak_sink.py"), "--host", host,
           "--origins", str(origins), "--read-timeout", str(read_timeout),
           "--lifetime", str(lifetime), "--seed", str(seed),
           *(x for k, v in rates.items() for x in (f"--{k}", str(v)))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                            cwd=ROOT / "benchmarks", start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    try:
        if not line or line[0] != "listening":
            raise RuntimeError("the fault sink did not start")
        yield [f"http://{host}:{port}" for port in line[1:]], proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
