"""Run the local stack: embedded broker, worker process(es) and HTTP ingest.

Used by ``llmtrail up``, ``llmtrail demo``, the integration tests and the
benchmarks. Every child dies with its parent, and :class:`Stack` stops them
in reverse order on exit (Ctrl-C and SIGTERM included).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from pipeline.app import READY_LINE
from pipeline.broker import EmbeddedBroker, die_with_parent, wait_for_port
from pipeline.kafka import ensure_topics, send_all
from pipeline.settings import Secret, Settings


class ChildError(RuntimeError):
    """A child process did not become ready."""


class ChildProcess:
    """``llmtrail <command>`` as a child process whose output is echoed with a prefix."""

    def __init__(self, settings: Settings, command: str, *, ready_line: str | None = None,
                 echo: Callable[[str], None] | None = None,
                 argv: Sequence[str] | None = None) -> None:
        self.settings = settings
        self.command = command
        self._argv = list(argv or [sys.executable, "-m", "pipeline.cli", command])
        self._ready_line = ready_line
        self._ready = threading.Event()
        self._echo = echo
        self.lines: list[str] = []
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> ChildProcess:
        env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(
            self._argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only calls prctl
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw_line in self._proc.stdout:
            line = raw_line.rstrip("\n")
            self.lines.append(line)
            if self._ready_line and self._ready_line in line:
                self._ready.set()
            if self._echo:
                self._echo(line)

    def wait_ready(self, timeout: float) -> None:
        """Block until the child printed its ready line; raise if it exits or times out."""
        step = 0.1
        waited = 0.0
        while not self._ready.wait(step):
            waited += step
            if self.returncode is not None:
                raise ChildError(f"llmtrail {self.command} exited with {self.returncode}:\n"
                                 + "\n".join(self.lines[-20:]))
            if waited >= timeout:
                raise ChildError(f"llmtrail {self.command} not ready after {timeout:.0f}s:\n"
                                 + "\n".join(self.lines[-20:]))

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def kill(self) -> None:
        """SIGKILL: the crash a worker must survive without losing anything."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(10)
            if self._reader is not None:
                self._reader.join(5)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def wait(self) -> int:
        assert self._proc is not None
        return self._proc.wait()


def start_worker(settings: Settings, *, echo: Callable[[str], None] | None = None,
                 timeout: float = 60.0) -> ChildProcess:
    """A worker process, returned once it has joined the group and loaded its rules."""
    worker = ChildProcess(settings, "worker", ready_line=READY_LINE, echo=echo).start()
    try:
        worker.wait_ready(timeout)
    except ChildError:
        worker.stop()
        raise
    return worker


def _echo_prefixed(prefix: str) -> Callable[[str], None]:
    def echo(line: str) -> None:
        print(f"{prefix} {line}", file=sys.stderr, flush=True)
    return echo


def new_run_dir(data_dir: Path) -> Path:
    """A fresh ``<data_dir>/runs/<UTC time>`` for one embedded-broker run, linked as ``latest``.

    The embedded broker forgets everything when it stops and numbers offsets
    from zero again, so each run archives into its own directory.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    run_dir = data_dir / "runs" / stamp
    run_dir.mkdir(parents=True)
    latest = data_dir / "latest"
    if latest.is_symlink() or not latest.exists():
        latest.unlink(missing_ok=True)
        latest.symlink_to(Path("runs") / stamp)
    return run_dir


def run_settings(requested: Settings, run_dir: Path, broker: str) -> Settings:
    """The settings of one embedded-broker run: its broker, its data dir and archive.

    The embedded broker numbers offsets from 0 again at every start, so a run
    must not archive where an earlier one did (its events would be taken for
    redeliveries): locally the run dir holds the archive, and with S3 the run
    gets its own prefix, ``<prefix>/runs/<run dir name>``.
    """
    settings = requested.replace(broker=broker, data_dir=run_dir)
    if settings.archive_backend != "s3":
        return settings
    prefix = "/".join(p for p in (settings.archive_s3_prefix.strip("/"), "runs", run_dir.name) if p)
    return settings.replace(archive_s3_prefix=prefix)


class Stack:
    """Embedded broker + topics + one worker + HTTP ingest, as a context manager."""

    def __init__(self, settings: Settings, *, broker_port: int | None = None,
                 with_ingest: bool = True, users: Sequence[Mapping[str, Any]] = ()) -> None:
        self._requested = settings
        self._users = users
        self._broker_port = broker_port
        self._with_ingest = with_ingest and settings.http_port != 0
        self.settings = settings
        self.broker: EmbeddedBroker | None = None
        self.worker: ChildProcess | None = None
        self.ingest: ChildProcess | None = None
        self.generated_api_key: str | None = None

    def __enter__(self) -> Stack:
        run_dir = new_run_dir(Path(self._requested.data_dir))
        try:
            self.broker = EmbeddedBroker(self._broker_port,
                                         log_file=run_dir / "broker.log").start()
            settings = run_settings(self._requested, run_dir, self.broker.url)
            if self._with_ingest and not settings.api_keys:
                self.generated_api_key = secrets.token_urlsafe(24)
                settings = settings.replace(api_keys=(Secret(self.generated_api_key),))
            self.settings = settings
            print(f"broker: {self.broker.url} (embedded Tansu, in-memory; for development)",
                  flush=True)
            print(f"archive: {settings.archive_location}", flush=True)
            asyncio.run(ensure_topics(settings))
            if self._users:
                users = [(str(u["id"]).encode(), orjson.dumps(u)) for u in self._users]
                asyncio.run(send_all(settings, settings.users_topic, users))
            self.worker = start_worker(settings, echo=_echo_prefixed("[worker]"))
            if self._with_ingest:
                self.ingest = ChildProcess(settings, "ingest",
                                           echo=_echo_prefixed("[ingest]")).start()
                if not wait_for_port(settings.http_host, settings.http_port, 30.0):
                    raise ChildError("HTTP ingest did not start:\n" + "\n".join(self.ingest.lines))
        except BaseException:
            self.close()
            raise
        return self

    def print_ready(self) -> None:
        s = self.settings
        print(f"events topic: {s.events_topic}; alerts topic: {s.alerts_topic}", flush=True)
        if self.ingest is not None:
            print(f"HTTP ingest: http://{s.http_host}:{s.http_port}/v1/events", flush=True)
            if self.generated_api_key:
                print(f"API key for this session (set LLMTRAIL_API_KEYS to choose one): "
                      f"{self.generated_api_key}", flush=True)
        print(f"ready: publish with `LLMTRAIL_BROKER={s.broker} llmtrail publish FILE`; "
              "Ctrl-C stops everything", flush=True)

    def wait(self) -> None:
        """Block until the worker exits (or Ctrl-C)."""
        assert self.worker is not None
        code = self.worker.wait()
        raise ChildError(f"worker exited with status {code}")

    def close(self) -> None:
        for child in (self.ingest, self.worker):
            if child is not None:
                child.stop()
        if self.broker is not None:
            self.broker.stop()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
