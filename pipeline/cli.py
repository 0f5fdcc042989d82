"""The ``llmtrail`` command line.

Exit codes: 0 success; 1 the command ran but found problems (rejected lines,
rule errors, failed examples); 2 bad usage or configuration; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from pipeline import cli_archive, cli_rules
from pipeline.lines import read_lines
from pipeline.settings import SEVERITIES, Settings, SettingsError

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

Handler = Callable[[argparse.Namespace, Settings], int]


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None) is not None:
        overrides["data_dir"] = args.data_dir
    if getattr(args, "broker", None):
        overrides["broker"] = args.broker
    return Settings.from_env(**overrides)


# -- worker, up, demo ---------------------------------------------------------------------

def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.app import run_worker  # noqa: PLC0415 - keeps `llmtrail --help` fast

    run_worker(settings)
    return EXIT_OK


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.stack import Stack  # noqa: PLC0415

    if args.http_port is not None:
        settings = settings.replace(http_port=args.http_port)
    with Stack(settings, broker_port=args.broker_port) as stack:
        stack.print_ready()
        stack.wait()
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.demo import run_demo  # noqa: PLC0415

    return run_demo(settings, rate=args.rate, events=args.events, seed=args.seed,
                    broker_port=args.broker_port)


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.ingest import run_ingest  # noqa: PLC0415

    asyncio.run(run_ingest(settings))
    return EXIT_OK


# -- publish, users load ------------------------------------------------------------------

def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    from detectors.event import EventError, decode_event  # noqa: PLC0415
    from pipeline.kafka import send_all  # noqa: PLC0415

    rejected = 0

    def valid_events() -> Iterator[tuple[bytes | None, bytes]]:
        nonlocal rejected
        for number, raw in read_lines(args.file):
            try:
                event = decode_event(raw, max_bytes=settings.max_event_bytes)
            except EventError as exc:
                print(f"{args.file}:{number}: rejected: {exc.reason}", file=sys.stderr)
                rejected += 1
                continue
            yield str(event["trace_id"]).encode(), raw

    sent = asyncio.run(send_all(settings, settings.events_topic, valid_events()))
    print(f"published {sent} events to {settings.events_topic}; rejected {rejected} lines")
    return EXIT_PROBLEMS if rejected else EXIT_OK


def cmd_users_load(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.kafka import ensure_topics, send_all  # noqa: PLC0415
    from pipeline.users import UserRecordError, validate_user  # noqa: PLC0415

    rejected = 0

    def valid_users() -> Iterator[tuple[bytes | None, bytes]]:
        nonlocal rejected
        for number, raw in read_lines(args.file):
            try:
                record = validate_user(orjson.loads(raw))
            except (orjson.JSONDecodeError, UserRecordError) as exc:
                print(f"{args.file}:{number}: rejected: {exc}", file=sys.stderr)
                rejected += 1
                continue
            yield record["id"].encode(), raw

    asyncio.run(ensure_topics(settings))
    sent = asyncio.run(send_all(settings, settings.users_topic, valid_users()))
    print(f"loaded {sent} users into {settings.users_topic}; rejected {rejected} lines")
    return EXIT_PROBLEMS if rejected else EXIT_OK


# -- alerts -------------------------------------------------------------------------------

def severity_at_least(alert: dict[str, Any], minimum: str) -> bool:
    severity = alert.get("severity")
    rank = SEVERITIES.index(severity) if severity in SEVERITIES else -1
    return rank >= SEVERITIES.index(minimum)


def cmd_alerts(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.kafka import make_reader  # noqa: PLC0415

    async def follow() -> int:
        reader = make_reader(settings, settings.alerts_topic, from_beginning=args.from_beginning)
        await reader.start()
        printed = 0
        started = last = time.monotonic()
        try:
            while True:
                batches = await reader.getmany(timeout_ms=200)
                now = time.monotonic()
                for records in batches.values():
                    for record in records:
                        last = now
                        alert = orjson.loads(record.value)
                        if severity_at_least(alert, args.min_severity):
                            sys.stdout.write(record.value.decode() + "\n")
                            printed += 1
                sys.stdout.flush()
                if args.follow:
                    if args.timeout is not None and now - started >= args.timeout:
                        break
                elif now - last >= (args.timeout if args.timeout is not None else 2.0):
                    break
        finally:
            await reader.stop()
        return printed

    printed = asyncio.run(follow())
    print(f"{printed} alerts", file=sys.stderr)
    return EXIT_OK


def cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    for env, value, doc in settings.describe():
        shown = "****" if "KEY" in env or "SALT" in env else value
        print(f"{env}={shown}\n    {doc}")
    return EXIT_OK


# -- parser -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmtrail",
        description="Stream-processing detection pipeline for LLM security telemetry. "
        "Settings come from LLMTRAIL_* environment variables (see `llmtrail settings`).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help_: str, parent: Any = sub) -> argparse.ArgumentParser:
        command: argparse.ArgumentParser = parent.add_parser(name, help=help_, description=help_)
        command.set_defaults(handler=handler)
        return command

    def data_dir_option(command: argparse.ArgumentParser) -> None:
        command.add_argument("--data-dir", type=Path,
                             help="archive and state directory (LLMTRAIL_DATA_DIR)")

    up = add("up", cmd_up, "Run the embedded broker, one worker and HTTP ingest in the foreground.")
    data_dir_option(up)
    up.add_argument("--broker-port", type=int, help="embedded broker port (default: a free one)")
    up.add_argument("--http-port", type=int,
                    help="HTTP ingest port (0 disables; LLMTRAIL_HTTP_PORT)")

    add("worker", cmd_worker, "Run one worker against LLMTRAIL_BROKER; run N to scale out.")

    demo = add("demo", cmd_demo, "Embedded broker + worker + a realistic synthetic stream; "
               "prints alerts as they arrive.")
    data_dir_option(demo)
    demo.add_argument("--rate", type=float, default=200.0,
                      help="events per second (default 200; the embedded broker keeps everything "
                      "in memory, so it is rate-limited on purpose)")
    demo.add_argument("--events", type=int, default=3000, help="events to publish (default 3000)")
    demo.add_argument("--seed", type=int, default=7, help="seed of the synthetic stream")
    demo.add_argument("--broker-port", type=int, help="embedded broker port (default: a free one)")

    add("ingest", cmd_ingest, "Run only the HTTP ingest endpoint against LLMTRAIL_BROKER.")

    publish = add("publish", cmd_publish,
                  "Publish Event v1 JSON lines; invalid lines are reported and not sent.")
    publish.add_argument("file", help="a .jsonl file, or - for standard input")

    users = sub.add_parser("users", help="User-context records.").add_subparsers(
        dest="users_command", required=True, metavar="COMMAND")
    users_load = add("load", cmd_users_load, "Publish user-context JSON lines to the users topic.",
                     users)
    users_load.add_argument("file", help="a .jsonl file of user records, or - for standard input")

    alerts = add("alerts", cmd_alerts, "Print alerts from the alerts topic as JSON lines.")
    alerts.add_argument("--follow", action="store_true", help="keep printing new alerts")
    alerts.add_argument("--min-severity", choices=SEVERITIES, default="info",
                        help="only alerts at or above this severity")
    alerts.add_argument("--from-beginning", action="store_true",
                        help="start at the oldest alert (default: only new ones)")
    alerts.add_argument("--timeout", type=float,
                        help="with --follow: stop after this many seconds; without: stop after "
                        "this many seconds with no new alert (default 2)")

    add("settings", cmd_settings, "Show every setting, its environment variable and value.")
    cli_rules.register(sub)
    cli_archive.register(sub)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings_from(args)
    except SettingsError as exc:
        print(f"llmtrail: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    handler: Handler = args.handler
    try:
        return handler(args, settings)
    except SettingsError as exc:  # found while a command builds what it needs (e.g. the engine)
        print(f"llmtrail: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `llmtrail archive cat | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit flush
        return EXIT_OK


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(run())


if __name__ == "__main__":
    main()
