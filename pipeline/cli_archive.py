"""``llmtrail archive cat|verify|query|prune|erase`` and ``llmtrail backtest``.

The investigator's and auditor's commands over the archive, on whichever backend the settings
name (local directory or S3). Handlers take ``(args, settings)`` and return the exit code:
0 fine, 1 problems found (verify) or nothing could be done, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import orjson
from botocore.exceptions import BotoCoreError, ClientError

from detectors.event import EventError, decode_event
from detectors.stateful import StatefulDetector
from pipeline import cli_rules, replay
from pipeline.archive.backend import Backend, LocalBackend
from pipeline.archive.catalog import load_catalog
from pipeline.archive.chain import Chain
from pipeline.archive.config import (
    key_ring,
    open_backend,
    open_chain,
    open_reader,
    open_store,
    signing_key,
)
from pipeline.archive.errors import ArchiveError
from pipeline.archive.lifecycle import (
    RetentionError,
    erase_user,
    load_legal_hold,
    parse_retention,
    prune,
)
from pipeline.archive.masking import Masker, masking_rules
from pipeline.archive.reader import Reader
from pipeline.archive.records import ArchivedRecord
from pipeline.archive.store import ArchiveStore
from pipeline.archive.traceindex import may_contain
from pipeline.archive.verify import verify
from pipeline.detection import build_engine
from pipeline.settings import Settings, SettingsError
from pipeline.users import enrich

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2
_AGO_RE = re.compile(r"(\d+)([mhd])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}
_DIFF_EXAMPLES = 20  # added/removed alerts listed by backtest --baseline


class UsageError(ValueError):
    """A command-line value that cannot be used; the message says which and why."""


def parse_time(text: str, *, now: datetime | None = None) -> int:
    """Milliseconds since the epoch from RFC 3339 / ISO 8601 (``2026-11-22``,
    ``2026-11-22T14:00Z``; UTC when no offset) or an age (``90m``, ``6h``, ``7d`` ago)."""
    ago = _AGO_RE.fullmatch(text.strip())
    if ago:
        moment = (now or datetime.now(UTC)) - timedelta(**{_UNITS[ago[2]]: int(ago[1])})
    else:
        try:
            moment = datetime.fromisoformat(text.strip().replace("z", "Z"))
        except ValueError:
            raise UsageError(f"{text!r} is not a time: use 2026-11-22, 2026-11-22T14:00Z or an "
                             "age such as 90m, 6h, 7d") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _range(args: argparse.Namespace) -> tuple[int | None, int | None]:
    start = parse_time(args.from_) if args.from_ else None
    end = parse_time(args.to) if args.to else None
    if start is not None and end is not None and end <= start:
        raise UsageError(f"--to {args.to} is not after --from {args.from_}")
    return start, end


def _masker(settings: Settings, err: TextIO) -> Masker | None:
    ruleset = cli_rules._load(list(settings.rules), err)
    if ruleset is None:
        return None
    return Masker(build_engine(masking_rules(ruleset), settings, ml=False))


# -- cat ----------------------------------------------------------------------------------------


def _trace_records(reader: Reader, chain: Chain, trace_id: str, *, topic: str | None,
                   from_ms: int | None, to_ms: int | None) -> list[ArchivedRecord]:
    """The events of one trace, read only from segments whose trace filter may hold it."""
    catalog = load_catalog(reader.backend, chain, topic=topic)
    sids = [s.sid for s in catalog.live(topic)
            if s.in_range(from_ms, to_ms) and may_contain(s.manifest.get("traces", ""), trace_id)]
    if isinstance(reader.backend, LocalBackend):  # open segments are not chained yet
        sids += [sid for sid in catalog.unchained() if sid.overlaps(from_ms, to_ms)]
    found: list[tuple[Any, ...]] = []
    for sid in sids:
        for record in reader.records(sid):
            try:
                event = orjson.loads(record.value)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict) and event.get("trace_id") == trace_id:
                found.append((_event_time(event), record.timestamp_ms, record.partition,
                              record.offset, record))
    found.sort(key=lambda item: item[:4])
    return [item[-1] for item in found]


def _event_time(event: dict[str, Any]) -> float:
    try:
        return datetime.fromisoformat(str(event.get("ts"))).timestamp()
    except ValueError:
        return float("inf")


def cat(settings: Settings, *, trace: str | None, topic: str | None, masked: bool,
        from_ms: int | None, to_ms: int | None, out: BinaryIO, err: TextIO) -> int:
    reader = open_reader(settings)
    masker = _masker(settings, err) if masked else None
    if masked and masker is None:
        return EXIT_USAGE
    records: Iterator[ArchivedRecord] | list[ArchivedRecord]
    if trace is not None:
        records = _trace_records(reader, open_chain(settings, reader.backend), trace,
                                 topic=topic, from_ms=from_ms, to_ms=to_ms)
    else:
        records = reader.iter(topic, from_ms=from_ms, to_ms=to_ms)
    count = 0
    for record in records:
        out.write(record.value if masker is None else masker.mask(record.value))
        out.write(b"\n")
        count += 1
    out.flush()
    what = f"events of trace {trace}" if trace is not None else "archived events"
    print(f"{count} {what}{' (masked view)' if masked else ''}", file=err)
    return EXIT_OK


# -- verify -------------------------------------------------------------------------------------


def _read_anchor(path: Path | None) -> dict[str, dict[str, Any]] | None:
    if path is None or not path.exists():
        return None
    try:
        anchor = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"--anchor {path}: not JSON ({exc})") from None
    if not isinstance(anchor, dict) or not all(isinstance(v, dict) for v in anchor.values()):
        raise UsageError(f"--anchor {path}: expected the JSON object verify writes there")
    return anchor


def verify_command(settings: Settings, *, from_ms: int | None, to_ms: int | None, out: TextIO,
                   err: TextIO, deep: bool = False, anchor: Path | None = None) -> int:
    backend = open_backend(settings)
    reader = Reader(backend, key_ring(settings, backend)) if deep else None
    report = verify(backend, signing_key=signing_key(settings), from_ms=from_ms, to_ms=to_ms,
                    deep=reader, anchor=_read_anchor(anchor))
    for problem in report.problems:
        print(f"BROKEN {problem}", file=out)
    for line in report.erasures:
        print(f"erasure: {line}", file=out)
    for line in report.prunes:
        print(f"pruned: {line}", file=out)
    for note in report.notes:
        print(f"note: {note}", file=err)
    if settings.archive_backend == "local":
        for kept in sorted(settings.archive_dir.rglob("*.seg.torn-*")):
            print(f"note: {kept} holds bytes cut off a segment's end at a restart: a write that "
                  "crashed, or damage to a block already acknowledged (docs/archive.md)", file=err)
    if report.ok and not report.partitions and not report.open_segments:
        print(f"note: nothing is archived at {settings.archive_location}: check the data directory "
              "or the bucket and prefix", file=err)
    summary = (f"{report.partitions} partitions, {report.entries} chain entries, "
               f"{report.segments} segments ({report.events} events) hashed"
               f"{' and decoded' if deep else ''}"
               f"{', signatures checked' if report.signed else ''}")
    if report.open_segments:
        summary += (f"; {report.open_segments} open segments ({report.open_events} events) not "
                    "sealed yet")
    if report.ok:
        print(f"OK: {summary}", file=out)
        if anchor is not None:
            anchor.write_bytes(orjson.dumps(report.heads, option=orjson.OPT_INDENT_2))
            print(f"anchor: chain heads written to {anchor}; keep it where the archive's "
                  "writers cannot change it", file=err)
        return EXIT_OK
    print(f"FAILED: {len(report.problems)} problems; {summary}", file=out)
    return EXIT_PROBLEMS


# -- query --------------------------------------------------------------------------------------


def query(settings: Settings, sql: str, *, masked: bool, from_ms: int | None, to_ms: int | None,
          output_format: str, out: TextIO, err: TextIO) -> int:
    import duckdb  # noqa: PLC0415 - only this command needs it

    from pipeline.archive.query import connect, load_events, run_query  # noqa: PLC0415

    masker = _masker(settings, err) if masked else None
    if masked and masker is None:
        return EXIT_USAGE
    reader = open_reader(settings)
    con = connect()
    started = time.perf_counter()
    rows, skipped = load_events(con, reader.iter(from_ms=from_ms, to_ms=to_ms),
                                transform=None if masker is None else masker.mask)
    loaded = time.perf_counter()
    try:
        names, result = run_query(con, sql)
    except duckdb.Error as exc:
        print(f"query error: {exc}", file=err)
        return EXIT_PROBLEMS
    finished = time.perf_counter()
    if output_format == "jsonl":
        for row in result:
            out.write(orjson.dumps(dict(zip(names, row, strict=True)),
                                   default=str).decode() + "\n")
    else:
        _print_table(names, result, out)
    print(f"{len(result)} rows; {rows} events loaded in {loaded - started:.2f}s"
          f"{f' ({skipped} non-JSON values skipped)' if skipped else ''}, query "
          f"{(finished - loaded) * 1000:.1f} ms", file=err)
    return EXIT_OK


def _print_table(names: Sequence[str], rows: Sequence[tuple[Any, ...]], out: TextIO) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]
    print(" | ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)), file=out)
    print("-+-".join("-" * w for w in widths), file=out)
    for row in cells:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)), file=out)


def _cell(value: Any) -> str:
    text = "NULL" if value is None else str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= 120 else text[:119] + "…"


# -- prune, erase -------------------------------------------------------------------------------


def _seal_local(settings: Settings, backend: Backend) -> None:
    """Seal a local archive's open segments, so that they are chained and can be rewritten."""
    if isinstance(backend, LocalBackend):
        store = open_store(settings)
        assert isinstance(store, ArchiveStore)
        try:
            store.seal_all()
        finally:
            store.close()


def prune_command(settings: Settings, *, days: int | None, hold_file: str | None,
                  dry_run: bool, out: TextIO, now_ms: int | None = None) -> int:
    if days is not None and days < 1:  # 0 would delete every sealed segment
        raise RetentionError(f"--days {days}: days must be >= 1")
    retention = {"*": days} if days is not None else parse_retention(settings.archive_retention)
    if not retention:
        raise RetentionError("no retention: set LLMTRAIL_ARCHIVE_RETENTION (e.g. 90 or "
                             "llm.events=90,*=365) or pass --days")
    hold = load_legal_hold(hold_file if hold_file is not None
                           else settings.archive_legal_hold_file)
    reader = open_reader(settings)
    result = prune(reader.backend, open_chain(settings, reader.backend), reader,
                   retention=retention, hold=hold, dry_run=dry_run, now_ms=now_ms)
    verb = "would delete" if dry_run else "deleted"
    print(f"{verb} {len(result.deleted)} segments ({result.events} events) past retention; "
          f"kept {len(result.held)} segments under legal hold", file=out)
    for state in result.held:
        print(f"  held: {reader.backend.describe(state.sid.relpath)}", file=out)
    return EXIT_OK


def erase_command(settings: Settings, *, user: str, reason: str, out: TextIO,
                  err: TextIO | None = None) -> int:
    if settings.fingerprint_salt == Settings.from_env({}).fingerprint_salt:
        print("llmtrail: warning: LLMTRAIL_FINGERPRINT_SALT is the default, so anyone who reads "
              "the chain can test a user id against the erasure's subject; set one per "
              "deployment", file=err or sys.stderr)
    hold = load_legal_hold(settings.archive_legal_hold_file)
    if user in hold.users:
        print(f"user {user} is on legal hold ({settings.archive_legal_hold_file}): nothing "
              "erased; lift the hold first", file=out)
        return EXIT_PROBLEMS
    backend = open_backend(settings)
    _seal_local(settings, backend)
    reader = Reader(backend, key_ring(settings, backend))
    result = erase_user(backend, open_chain(settings, backend), reader, reader.keys, user,
                        salt=settings.fingerprint_salt.reveal().encode(), reason=reason,
                        hold=hold)
    held = (f"; kept {result.held} events of the user in traces on legal hold "
            f"({settings.archive_legal_hold_file})" if result.held else "")
    if not result.removed:
        print(f"no archived events of user {user}{' outside traces on legal hold' if held else ''}"
              f"{held}", file=out)
        return EXIT_OK
    print(f"erased {result.removed} events of user {user} from {result.segments} segments "
          f"({result.deleted} deleted, the others rewritten); recorded in the chain as subject "
          f"{result.subject[:16]}{held}", file=out)
    return EXIT_OK


# -- backtest -----------------------------------------------------------------------------------


def backtest(settings: Settings, *, rules: Sequence[Path], baseline: Sequence[Path] | None,
             users_file: str | None, from_ms: int | None, to_ms: int | None,
             destination: str | None, engine_choice: str, err: TextIO,
             stateful: Sequence[Path] | None = None) -> int:
    """Run ``rules`` (and ``stateful`` rules) over the archived events with the worker's engine
    (and enrichment)."""
    ruleset = cli_rules._load(rules, err)
    base_rules = cli_rules._load(baseline, err) if baseline else None
    users = replay.load_users(users_file, err)
    stateful_rules = cli_rules._load_stateful(stateful, err) if stateful else None
    suppressions = cli_rules._load_suppressions(settings, err) if stateful else None
    if ruleset is None or (baseline and base_rules is None) or users is None or (
            stateful and (stateful_rules is None or suppressions is None)):
        return EXIT_PROBLEMS
    correlator = (replay.Correlator(StatefulDetector(stateful_rules, suppressions), users)
                  if stateful_rules is not None else None)
    engine = build_engine(ruleset, settings, engine_choice)
    base_engine = build_engine(base_rules, settings, engine_choice) if base_rules else None
    output: BinaryIO | None = None
    if destination is not None:
        output = sys.stdout.buffer if destination == "-" else open(destination, "wb")  # noqa: SIM115
    by_rule: Counter[str] = Counter()
    added: Counter[str] = Counter()
    removed: Counter[str] = Counter()
    examples: list[str] = []
    events = invalid = size = 0
    progress = cli_rules._Progress(err, None)
    started = time.perf_counter()
    try:
        for record in open_reader(settings).iter(from_ms=from_ms, to_ms=to_ms):
            size += len(record.value)
            try:
                event = enrich(decode_event(record.value, max_bytes=settings.max_event_bytes),
                               users)
            except EventError:
                invalid += 1
                continue
            events += 1
            findings = replay.detect(engine, event, correlator, by_rule, output)
            if base_engine is not None:
                new = Counter(f.rule_id for f in findings)
                old = Counter(f.rule_id for f in base_engine.scan(event))
                added.update(new - old)
                removed.update(old - new)
                where = f"event {event.get('event_id')} (trace {event.get('trace_id')})"
                examples += [f"  + {rule_id}  {where}" for rule_id in new - old]
                examples += [f"  - {rule_id}  {where}" for rule_id in old - new]
            progress.update(events=events, by_rule=by_rule, done_bytes=size)
        if correlator is not None:
            replay.emit(correlator.finish(), by_rule, output)
    finally:
        if output is not None and output is not sys.stdout.buffer:
            output.close()
    progress.clear()
    elapsed = max(time.perf_counter() - started, 1e-9)
    cli_rules._summary(events=events, invalid=invalid, by_rule=by_rule, elapsed=elapsed,
                       size=size, err=err, stateful=stateful_rules)
    cli_rules.stateful_report(stateful_rules, correlator, by_rule, err)
    if base_engine is not None:
        print(f"against the baseline: +{sum(added.values())} alerts added, "
              f"-{sum(removed.values())} removed", file=err)
        for rule_id in sorted(set(added) | set(removed)):
            print(f"  {'+' + str(added[rule_id]):>8} {'-' + str(removed[rule_id]):>8}  {rule_id}",
                  file=err)
        for line in examples[:_DIFF_EXAMPLES]:
            print(line, file=err)
        if len(examples) > _DIFF_EXAMPLES:
            print(f"  … and {len(examples) - _DIFF_EXAMPLES} more (write them all with --output "
                  "and compare)", file=err)
    return EXIT_OK


# -- argparse wiring ----------------------------------------------------------------------------


def _check_local_root(settings: Settings) -> None:
    """A local archive directory that does not exist is a wrong ``--data-dir``, not an empty
    archive: reading it would say "OK, 0 events"."""
    root = settings.archive_dir
    if settings.archive_backend != "local" or root.is_dir():
        return
    latest = settings.data_dir / "latest"
    hint = (f"`llmtrail up` and `demo` archive each run under DATA_DIR/runs/<time>/: use "
            f"--data-dir {latest}" if (latest / "archive").is_dir() else
            "point --data-dir (LLMTRAIL_DATA_DIR) at the workers' data directory")
    raise UsageError(f"no archive at {root}; {hint}")


def _guarded(run: Any) -> Any:
    """Turn the archive's, the storage's and the settings' errors into a message and an exit
    code."""

    def handler(args: argparse.Namespace, settings: Settings) -> int:
        try:
            _check_local_root(settings)
            code: int = run(args, settings)
        except (UsageError, SettingsError, RetentionError) as exc:
            print(f"llmtrail: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except ArchiveError as exc:
            print(f"llmtrail: archive error: {exc}", file=sys.stderr)
            return EXIT_PROBLEMS
        except (BotoCoreError, ClientError) as exc:  # the messages name no credentials
            print(f"llmtrail: cannot use the archive at {settings.archive_location}: {exc}",
                  file=sys.stderr)
            return EXIT_USAGE
        return code

    return handler


def _cmd_cat(args: argparse.Namespace, settings: Settings) -> int:
    start, end = _range(args)
    return cat(settings, trace=args.trace, topic=args.topic, masked=args.masked, from_ms=start,
               to_ms=end, out=sys.stdout.buffer, err=sys.stderr)


def _cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    start, end = _range(args)
    return verify_command(settings, from_ms=start, to_ms=end, out=sys.stdout, err=sys.stderr,
                          deep=args.deep, anchor=args.anchor)


def _cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    start, end = _range(args)
    return query(settings, args.sql, masked=args.masked, from_ms=start, to_ms=end,
                 output_format=args.format, out=sys.stdout, err=sys.stderr)


def _cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    return prune_command(settings, days=args.days, hold_file=args.hold, dry_run=args.dry_run,
                         out=sys.stdout)


def _cmd_erase(args: argparse.Namespace, settings: Settings) -> int:
    return erase_command(settings, user=args.user, reason=args.reason, out=sys.stdout,
                         err=sys.stderr)


def _cmd_backtest(args: argparse.Namespace, settings: Settings) -> int:
    start, end = _range(args)
    return backtest(settings, rules=args.rules, baseline=args.baseline, users_file=args.users,
                    from_ms=start, to_ms=end, destination=args.output,
                    engine_choice=args.engine, err=sys.stderr, stateful=args.stateful)


def _common(parser: argparse.ArgumentParser, *, time_range: bool = True) -> None:
    parser.add_argument("--data-dir", type=Path,
                        help="archive and state directory (LLMTRAIL_DATA_DIR; local backend)")
    if time_range:
        parser.add_argument("--from", dest="from_", metavar="TIME",
                            help="start (2026-11-22, 2026-11-22T14:00Z, or an age: 6h, 7d)")
        parser.add_argument("--to", metavar="TIME", help="end, exclusive (same forms)")


def _add(parent: Any, name: str, handler: Any, help_: str,
         description: str) -> argparse.ArgumentParser:
    command: argparse.ArgumentParser = parent.add_parser(name, help=help_,
                                                         description=description)
    command.set_defaults(handler=_guarded(handler))
    return command


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``archive cat|verify|query|prune|erase`` and ``backtest`` to the parser."""
    archive = subparsers.add_parser(
        "archive", help="The forensic archive of raw events (docs/archive.md).",
        description="The forensic archive of raw events, on the backend LLMTRAIL_ARCHIVE_BACKEND "
        "names (docs/archive.md).")
    commands = archive.add_subparsers(dest="archive_command", required=True, metavar="COMMAND")

    cat_parser = _add(commands, "cat", _cmd_cat, "Print archived raw events, one a line.",
                      "Print archived raw events byte for byte, one a line (decrypted when the "
                      "archive is encrypted). With --trace: one trace's events in order.")
    _common(cat_parser)
    cat_parser.add_argument("--trace", metavar="ID", help="only this trace, in event time order")
    cat_parser.add_argument("--topic", help="only this topic")
    cat_parser.add_argument("--masked", action="store_true",
                            help="analyst view: PII and secrets masked by the masking rules")

    verify_parser = _add(
        commands, "verify", _cmd_verify, "Check every hash, link and signature of the archive.",
        "Recompute the SHA-256 of every segment and walk each partition's manifest chain. "
        "Prints OK with counts, or every broken link with its segment and what is wrong "
        "(exit 1). Erasures and prunes recorded in the chain are listed.")
    _common(verify_parser)
    verify_parser.add_argument("--anchor", type=Path, metavar="FILE",
                               help="chain heads of an earlier verify: check that they are "
                               "still there (finds newest entries cut off), then, if all is "
                               "OK, write the current heads to FILE")
    verify_parser.add_argument("--deep", action="store_true",
                               help="also decode (and decrypt, with the key) every record of "
                               "every segment and compare the counts")

    query_parser = _add(
        commands, "query", _cmd_query, "SQL over the archived events (DuckDB).",
        "Run SQL over the table `events`: Event v1 fields as columns (user, model, prompt, "
        "response, tool and usage as structs, e.g. \"user\".id, tool.name), ts as a timestamp, "
        "plus topic, partition, \"offset\", kafka_ts and raw.")
    query_parser.add_argument("sql", help='e.g. "SELECT ts, tool.name FROM events WHERE '
                              "\\\"user\\\".id = 'u-1' AND kind = 'tool_call' ORDER BY ts\"")
    _common(query_parser)
    query_parser.add_argument("--masked", action="store_true",
                              help="analyst view: PII and secrets masked before loading")
    query_parser.add_argument("--format", choices=("table", "jsonl"), default="table")

    prune_parser = _add(
        commands, "prune", _cmd_prune, "Delete segments past retention (legal holds kept).",
        "Delete sealed segments whose newest event is older than the retention "
        "(LLMTRAIL_ARCHIVE_RETENTION or --days), except segments holding an event of a trace "
        "or user on legal hold. Each deletion is recorded in the chain.")
    _common(prune_parser, time_range=False)
    prune_parser.add_argument("--days", type=int, help="retention for every topic (overrides "
                              "LLMTRAIL_ARCHIVE_RETENTION)")
    prune_parser.add_argument("--hold", metavar="FILE", help="legal hold list (overrides "
                              "LLMTRAIL_ARCHIVE_LEGAL_HOLD_FILE): trace:<id> / user:<id> lines")
    prune_parser.add_argument("--dry-run", action="store_true", help="only say what would go")

    erase_parser = _add(
        commands, "erase", _cmd_erase, "Erase one user's events (right to erasure).",
        "Rewrite every segment holding events of the user without them (a segment left empty "
        "is deleted) and record the erasure in the chain, with an HMAC of the user id.")
    _common(erase_parser, time_range=False)
    erase_parser.add_argument("--user", required=True, metavar="ID", help="the user.id to erase")
    erase_parser.add_argument("--reason", default="right to erasure request",
                              help="why, recorded in the chain")

    backtest_parser = _add(
        subparsers, "backtest", _cmd_backtest, "Run rules over the archived events.",
        "Run a rule set over the archived events in a time range with the workers' engine, "
        "print hits per rule, optionally write the alerts; with --baseline, show the alerts "
        "the change adds and removes per rule.")
    backtest_parser.add_argument("--rules", nargs="+", type=Path, required=True, metavar="PATH",
                                 help="rule files or directories to test")
    _common(backtest_parser)
    backtest_parser.add_argument("--output", metavar="ALERTS.jsonl",
                                 help="write the alerts here (- = stdout)")
    backtest_parser.add_argument("--baseline", nargs="+", type=Path, metavar="PATH",
                                 help="the rules in force, to compare against")
    backtest_parser.add_argument("--stateful", nargs="+", type=Path, metavar="PATH",
                                 help="stateful rule files or directories (llmtrail.stateful/v1, "
                                 "e.g. rules/stateful) to run on the events and the findings of "
                                 "--rules, in event-time order and with the workers' alert "
                                 "hygiene and suppressions; not part of the --baseline diff")
    backtest_parser.add_argument("--users", metavar="USERS.jsonl",
                                 help="user-context records to enrich events with, like the "
                                 "workers do")
    cli_rules._engine_option(backtest_parser)
