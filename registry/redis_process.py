"""A private `redis-server` on a loopback port: the demo's registry, the load tests' Redis and the
test fixtures' servers all start here, so they differ only in the options they pass.

    server = RedisProcess(workdir=Path("/tmp/r"), appendonly=True, appendfsync="always")
    server.start()            # returns once PING answers; raises with the log tail otherwise
    client = redis.Redis.from_url(server.url)
    server.freeze(); server.thaw(); server.kill(); server.stop()

The server runs in its own process group (`start_new_session`), so a stopped demo or an
interrupted test run never takes it down by accident and a pid file is enough to stop it later.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import redis

from adapters.ports import free_port

LOG_TAIL_BYTES = 3000


class RedisNotInstalled(RuntimeError):
    """No `redis-server` on PATH (the Makefile's sysdeps target installs it)."""


@dataclass
class RedisProcess:
    """One redis-server process owned by its starter; stopped by pid, frozen with SIGSTOP."""

    workdir: Path
    port: int = 0  # 0: a free loopback port, picked at start
    appendonly: bool = True
    appendfsync: Literal["always", "everysec", "no"] = "everysec"
    databases: int = 16
    maxmemory_policy: str | None = None
    launcher: Sequence[str] = ()  # a command prefix, e.g. ("taskset", "-c", "1")
    log_name: str = "redis.log"
    extra_args: tuple[str, ...] = ()  # e.g. --replicaof, --min-replicas-to-write
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.workdir / self.log_name

    def command(self, exe: str) -> list[str]:
        args = [
            *self.launcher, exe, "--bind", "127.0.0.1", "--port", str(self.port),
            "--dir", str(self.workdir.resolve()), "--save", "", "--protected-mode", "yes",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync, "--databases", str(self.databases),
        ]  # fmt: skip
        if self.maxmemory_policy is not None:
            args += ["--maxmemory-policy", self.maxmemory_policy]
        return [*args, *self.extra_args]

    def start(self, timeout: float = 10.0) -> None:
        """Launch and wait (bounded) until PING answers."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise RedisNotInstalled("redis-server is not installed (`make sysdeps` installs it)")
        if self.port == 0:
            self.port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603
                self.command(exe), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited with {self.proc.returncode}: {self.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"redis-server did not answer PING: {self.log_tail()}")
                time.sleep(0.02)  # poll interval of a bounded readiness wait
        finally:
            client.close()

    def log_tail(self) -> str:
        try:
            return self.log_path.read_bytes()[-LOG_TAIL_BYTES:].decode("utf-8", "replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL, as a crash would; returns once the process is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (after SIGCONT, in case it is frozen); SIGKILL after `grace` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.thaw()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
