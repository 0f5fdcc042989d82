"""``llmtrail rules lint``, ``llmtrail rules test`` and ``llmtrail scan``.

The rule author's loop, all offline: check rule files, run their examples,
and run the engine over a JSON-lines file of Event v1 records. Handlers take
``(args, settings)`` and return the exit code (0 fine, 1 problems found).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, TextIO

from detectors import RuleSet, RuleSetError, load_rules, run_examples
from detectors.event import EventError, decode_event
from detectors.prefilter import SHARED
from detectors.stateful import (
    StatefulDetector,
    StatefulRuleSet,
    Suppressions,
    load_stateful_rules,
    run_scenarios,
)
from pipeline import replay
from pipeline.detection import build_engine
from pipeline.lines import read_lines
from pipeline.settings import Settings
from pipeline.stateful import suppression_list
from pipeline.users import enrich

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2
_INVALID_LISTED = 20  # invalid lines scan lists one by one; the rest are only counted
_PROGRESS_EVERY = 0.5  # seconds between progress lines on a terminal
_STATEFUL_RE = re.compile(rb"^schema:\s*['\"]?llmtrail\.stateful/", re.MULTILINE)


def _paths(args: argparse.Namespace, settings: Settings) -> list[Path]:
    given: list[Path] = args.paths or []
    return given or [*settings.rules, *settings.stateful_rules]


def _is_stateful(file: Path) -> bool:
    try:
        return _STATEFUL_RE.search(file.read_bytes()[:4096]) is not None
    except OSError:
        return False


def split_paths(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """Single-event and stateful rule paths: files by their schema; a directory whose rule
    files are all stateful is stateful; a directory's ``stateful/`` subdirectory is stateful."""
    single: list[Path] = []
    stateful: dict[Path, Path] = {}
    for path in paths:
        if path.is_dir():
            files = [p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()]
            if files and all(_is_stateful(f) for f in files):
                stateful.setdefault(path.resolve(), path)
            else:
                single.append(path)
            if (path / "stateful").is_dir():
                stateful.setdefault((path / "stateful").resolve(), path / "stateful")
        elif path.is_file() and _is_stateful(path):
            stateful.setdefault(path.resolve(), path)
        else:
            single.append(path)
    return single, list(stateful.values())


def _report(exc: RuleSetError, err: TextIO) -> None:
    for error in exc.errors:
        print(error, file=err)
    count = len(exc.errors)
    print(f"{count} error{'s' if count != 1 else ''}", file=err)


def _load_stateful(paths: Sequence[Path], err: TextIO) -> StatefulRuleSet | None:
    try:
        return load_stateful_rules(paths)
    except RuleSetError as exc:
        _report(exc, err)
        return None


def _load(paths: Sequence[Path], err: TextIO) -> RuleSet | None:
    try:
        return load_rules(paths)
    except RuleSetError as exc:
        _report(exc, err)
        return None


def _load_suppressions(settings: Settings, err: TextIO) -> Suppressions | None:
    """The suppression list LLMTRAIL_SUPPRESSIONS names (empty without one), as a worker
    applies it; None, with its problems printed, if it does not load."""
    try:
        return suppression_list(settings)
    except RuleSetError as exc:
        _report(exc, err)
        return None


def lint(paths: Sequence[Path], out: TextIO, err: TextIO) -> int:
    single, stateful_paths = split_paths(paths)
    code = EXIT_OK
    if single or not stateful_paths:
        ruleset = _load(single, err)
        if ruleset is None:
            code = EXIT_PROBLEMS
        else:
            files = len(ruleset.sources)
            print(
                f"{len(ruleset.rules)} rules in {files} file{'s' if files != 1 else ''}: OK",
                file=out,
            )
    if stateful_paths:
        stateful = _load_stateful(stateful_paths, err)
        if stateful is None:
            return EXIT_PROBLEMS
        files = len(stateful.sources)
        print(f"{len(stateful.rules)} stateful rules in {files} file{'s' if files != 1 else ''}: "
              "OK", file=out)
    return code


def test(
    paths: Sequence[Path], settings: Settings, engine_choice: str, out: TextIO, err: TextIO
) -> int:
    """Single-event examples, then stateful scenarios (whose events the single-event rules
    given, else LLMTRAIL_RULES, scan first, as in the worker)."""
    single, stateful_paths = split_paths(paths)
    ruleset = _load(single or list(settings.rules), err)
    if ruleset is None:
        return EXIT_PROBLEMS
    engine = build_engine(ruleset, settings, engine_choice, include_disabled=True)
    failed = 0
    if single or not stateful_paths:
        failures = run_examples(ruleset, engine)
        for failure in failures:
            print(failure, file=err)
        total = sum(len(rule.examples) for rule in ruleset.rules)
        print(f"{total - len(failures)} examples passed, {len(failures)} failed", file=out)
        failed += len(failures)
    if stateful_paths:
        stateful = _load_stateful(stateful_paths, err)
        if stateful is None:
            return EXIT_PROBLEMS
        scenario_failures = run_scenarios(stateful, engine)
        for scenario_failure in scenario_failures:
            print(scenario_failure, file=err)
        total = sum(len(rule.examples) for rule in stateful.rules)
        print(f"{total - len(scenario_failures)} stateful scenarios passed, "
              f"{len(scenario_failures)} failed", file=out)
        failed += len(scenario_failures)
    return EXIT_PROBLEMS if failed else EXIT_OK


class _Progress:
    """One line on a terminal, redrawn at most every ``_PROGRESS_EVERY`` seconds: a bar of the
    input read (when its size is known), events, alerts and events/s."""

    WIDTH = 24

    def __init__(self, err: TextIO, total_bytes: int | None) -> None:
        self._err = err
        self._total = total_bytes
        self._on = err.isatty()
        self._started = self._last = time.perf_counter()

    def update(self, *, events: int, by_rule: Counter[str], done_bytes: int) -> None:
        now = time.perf_counter()
        if not self._on or now - self._last < _PROGRESS_EVERY:
            return
        self._last = now
        bar = ""
        if self._total:
            share = min(done_bytes / self._total, 1.0)
            filled = round(share * self.WIDTH)
            bar = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {share:4.0%} "
        self._err.write(f"\r{bar}{events:,} events, {sum(by_rule.values()):,} alerts, "
                        f"{events / (now - self._started):,.0f}/s ")
        self._err.flush()

    def clear(self) -> None:
        if self._on:
            self._err.write("\r" + " " * 80 + "\r")


def _input_size(source: str) -> int | None:
    """The size of a regular input file (the progress bar's 100 %); None for stdin or a pipe."""
    if source == "-":
        return None
    path = Path(source)
    return path.stat().st_size if path.is_file() else None


def scan(
    *,
    source: str,
    destination: str,
    paths: Sequence[Path],
    settings: Settings,
    engine_choice: str,
    err: TextIO,
    stateful: Sequence[Path] | None = None,
    stateful_from: str = "--stateful",
    users_file: str | None = None,
) -> int:
    """The rules, and the ``stateful`` rules when given (named by ``stateful_from``), over a
    file of events as a worker runs them (events enriched with ``users_file``'s records);
    alerts to ``destination``."""
    ruleset = _load(paths, err)
    stateful_rules = _load_stateful(stateful, err) if stateful else None
    if stateful and stateful_rules is None:
        print(f"(the stateful rules of {stateful_from}; --no-stateful scans without them)",
              file=err)
    suppressions = _load_suppressions(settings, err) if stateful else None
    users = replay.load_users(users_file, err)
    if ruleset is None or users is None or (
            stateful and (stateful_rules is None or suppressions is None)):
        return EXIT_PROBLEMS
    correlator = (replay.Correlator(StatefulDetector(stateful_rules, suppressions), users)
                  if stateful_rules is not None else None)
    engine = build_engine(ruleset, settings, engine_choice)
    progress = _Progress(err, _input_size(source))
    events = invalid = size = 0
    by_rule: Counter[str] = Counter()
    started = time.perf_counter()
    output: BinaryIO = sys.stdout.buffer if destination == "-" else open(destination, "wb")  # noqa: SIM115
    try:
        for number, raw in read_lines(source):
            size += len(raw) + 1
            try:
                event = enrich(decode_event(raw, max_bytes=settings.max_event_bytes), users)
            except EventError as exc:
                invalid += 1
                if invalid <= _INVALID_LISTED:
                    print(f"{source}:{number}: invalid event: {exc.reason}", file=err)
                continue
            events += 1
            replay.detect(engine, event, correlator, by_rule, output)
            progress.update(events=events, by_rule=by_rule, done_bytes=size)
        if correlator is not None:
            replay.emit(correlator.finish(), by_rule, output)
    finally:
        if output is not sys.stdout.buffer:
            output.close()
    elapsed = max(time.perf_counter() - started, 1e-9)
    progress.clear()
    if invalid > _INVALID_LISTED:
        print(f"{source}: {invalid - _INVALID_LISTED} more invalid lines not listed", file=err)
    _summary(events=events, invalid=invalid, by_rule=by_rule, elapsed=elapsed, size=size, err=err,
             stateful=stateful_rules)
    stateful_report(stateful_rules, correlator, by_rule, err)
    return EXIT_OK


def stateful_report(rules: StatefulRuleSet | None, correlator: replay.Correlator | None,
                    by_rule: Counter[str], err: TextIO) -> None:
    """After the summary: what the stateful rules raised and kept, and the events they may
    have missed for coming too far out of time order."""
    if rules is None or correlator is None:
        return
    ids = {rule.id for rule in rules.rules if rule.enabled}
    line = (f"stateful: {len(ids)} rules, {sum(by_rule[i] for i in ids)} alerts, "
            f"{correlator.states:,} state keys at the end")
    if correlator.suppressed:
        line += f"; {correlator.suppressed:,} single-event alerts suppressed"
    if correlator.late:
        were = "events were" if correlator.late != 1 else "event was"
        line += (f"; {correlator.late:,} {were} more than {correlator.reorder:,} events out of "
                 "time order, folded late (sequences and baselines may miss such events: sort "
                 "the file by ts)")
    print(line, file=err)


def _summary(
    *, events: int, invalid: int, by_rule: Counter[str], elapsed: float, size: int, err: TextIO,
    stateful: StatefulRuleSet | None = None,
) -> None:
    stateful_ids = {rule.id for rule in stateful.rules} if stateful is not None else set()
    print(
        f"{events} events, {invalid} invalid lines, {sum(by_rule.values())} alerts "
        f"in {elapsed:.2f}s ({events / elapsed:,.0f} events/s, "
        f"{size / elapsed / 1e6:.1f} MB/s)",
        file=err,
    )
    for rule_id, count in sorted(by_rule.items(), key=lambda item: (-item[1], item[0])):
        print(f"  {count:8d}  {rule_id}{'  (stateful)' if rule_id in stateful_ids else ''}",
              file=err)


# -- argparse wiring --------------------------------------------------------------------


def warm(paths: Sequence[Path], settings: Settings, out: TextIO, err: TextIO) -> int:
    """Build the engine's Hyperscan databases for these rules and cache them on disk."""
    ruleset = _load(split_paths(paths)[0], err)
    if ruleset is None:
        return EXIT_PROBLEMS
    if not settings.engine_hyperscan:
        print("Hyperscan is off (LLMTRAIL_ENGINE_HYPERSCAN=false): nothing to build", file=out)
        return EXIT_OK
    started = time.perf_counter()
    engine = build_engine(ruleset, settings, ml=False)
    print(f"compiling prefilters for {len(ruleset.rules)} rules (cached under "
          f"{SHARED.cache_dir}) ...", file=err, flush=True)
    engine.warm()
    print(f"ready in {time.perf_counter() - started:.1f} s", file=out)
    return EXIT_OK


def _cmd_warm(args: argparse.Namespace, settings: Settings) -> int:
    return warm(_paths(args, settings), settings, sys.stdout, sys.stderr)


def _cmd_lint(args: argparse.Namespace, settings: Settings) -> int:
    return lint(_paths(args, settings), sys.stdout, sys.stderr)


def _cmd_test(args: argparse.Namespace, settings: Settings) -> int:
    return test(_paths(args, settings), settings, args.engine, sys.stdout, sys.stderr)


def _cmd_scan(args: argparse.Namespace, settings: Settings) -> int:
    paths: list[Path] = args.rules or list(settings.rules)
    try:
        return scan(
            source=args.input,
            destination=args.output,
            paths=paths,
            settings=settings,
            engine_choice=args.engine,
            err=sys.stderr,
            stateful=scan_stateful_paths(args, settings),
            stateful_from="--stateful" if args.stateful else "LLMTRAIL_STATEFUL_RULES",
            users_file=args.users,
        )
    except OSError as exc:
        print(f"llmtrail scan: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return EXIT_USAGE


def scan_stateful_paths(args: argparse.Namespace, settings: Settings) -> list[Path] | None:
    """The stateful rules ``scan`` runs: --stateful's, none with --no-stateful, else the
    worker's (LLMTRAIL_STATEFUL_RULES, unless LLMTRAIL_STATEFUL is false)."""
    if args.no_stateful:
        return None
    if args.stateful:
        return list(args.stateful)
    return list(settings.stateful_rules) if settings.stateful else None


def _engine_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=("auto", "hyperscan", "python"),
        default="auto",
        help="regex prefilter: Hyperscan when installed (auto), forced, or pure Python",
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rules lint``, ``rules test`` and ``scan`` to the ``llmtrail`` parser."""
    rules = subparsers.add_parser(
        "rules",
        help="Check detection rules and run their examples.",
        description="Check detection rules (llmtrail.rules/v1, docs/rules.md) and run their "
        "examples.",
    )
    rule_commands = rules.add_subparsers(dest="rules_command", required=True, metavar="COMMAND")
    paths_help = ("rule files or directories (*.yaml, *.yml; stateful ones by their schema, and "
                  "a directory's stateful/); default: LLMTRAIL_RULES and LLMTRAIL_STATEFUL_RULES")

    lint_parser = rule_commands.add_parser(
        "lint",
        help="Validate rule files; print every problem as file:line:col: rule-id: message.",
        description="Validate rule files strictly (schema version, unknown and duplicate keys, "
        "types, enums, regexes including catastrophic backtracking, list and macro references, "
        "examples). Prints every problem, then a summary; exits 1 if there is any problem.",
    )
    lint_parser.add_argument("paths", nargs="*", type=Path, metavar="PATH", help=paths_help)
    lint_parser.set_defaults(handler=_cmd_lint)

    test_parser = rule_commands.add_parser(
        "test",
        help="Run every rule's match/no_match examples and every stateful rule's scenarios.",
        description="Run every rule's examples (disabled rules included): a match example must "
        "fire its rule, a no_match example must not; then every stateful rule's scenarios "
        "(docs/stateful.md): a fire scenario must raise its rule, a no_fire scenario must not. "
        "Prints failures and a summary; exits 1 if any example or scenario fails.",
    )
    test_parser.add_argument("paths", nargs="*", type=Path, metavar="PATH", help=paths_help)
    _engine_option(test_parser)
    test_parser.set_defaults(handler=_cmd_test)

    warm_parser = rule_commands.add_parser(
        "warm",
        help="Compile the rules' Hyperscan databases into the on-disk cache.",
        description="Build the literal and per-regex Hyperscan databases the engine uses for "
        "these rules and store them in the cache ($XDG_CACHE_HOME/llmtrail/hyperscan, else "
        "~/.cache/llmtrail/hyperscan). Workers build missing ones in the background anyway; "
        "run this when building an image or before a rollout so they start warm.",
    )
    warm_parser.add_argument("paths", nargs="*", type=Path, metavar="PATH", help=paths_help)
    warm_parser.set_defaults(handler=_cmd_warm)

    scan_parser = subparsers.add_parser(
        "scan",
        help="Run the detection rules, stateful ones included, offline over a JSON-lines file.",
        description="Run the rules over Event v1 JSON lines (no broker) and write one Alert v1 "
        "JSON line per finding. As in a worker, the stateful rules (LLMTRAIL_STATEFUL_RULES, "
        "default rules/stateful/) run too, on the events and their findings, and write "
        "correlation/anomaly alerts: --stateful PATH... names others, --no-stateful (or "
        "LLMTRAIL_STATEFUL=false) runs none. Events are folded in event-time order as long as "
        f"none is more than {replay.Correlator.REORDER:,} events out of place (the summary "
        "counts those that are); at "
        "the end of the input every dedup window closes and its roll-up alert is written. "
        "Alert hygiene (dedup, rate limits on event time) and LLMTRAIL_SUPPRESSIONS apply as "
        "in a worker: to the stateful rules' alerts and to the single-event alerts a hygiene "
        "policy covers (the shipped ones: rf-* and pii-* per user); --no-stateful writes every "
        "single-event alert. Invalid lines are reported with their line number (the first "
        f"{_INVALID_LISTED}) and skipped. Prints a progress bar on a terminal, then a summary: "
        "events, invalid lines, alerts by rule (stateful ones marked), events/s and MB/s. "
        "Exits 0 unless rules or the users file do not load (1) or a file cannot be opened (2).",
    )
    scan_parser.add_argument(
        "--input",
        required=True,
        metavar="EVENTS.jsonl",
        help="events, one JSON per line (- = stdin)",
    )
    scan_parser.add_argument(
        "--output", required=True, metavar="ALERTS.jsonl", help="where alerts go (- = stdout)"
    )
    scan_parser.add_argument(
        "--rules", nargs="+", type=Path, metavar="PATH",
        help="single-event rule files or directories (*.yaml, *.yml); default: LLMTRAIL_RULES",
    )
    stateful = scan_parser.add_mutually_exclusive_group()
    stateful.add_argument(
        "--stateful", nargs="+", type=Path, metavar="PATH",
        help="stateful rule files or directories (llmtrail.stateful/v1, e.g. rules/stateful) to "
        "run on the events and the findings of --rules, as backtest --stateful does; default: "
        "LLMTRAIL_STATEFUL_RULES when LLMTRAIL_STATEFUL is true (as the worker)",
    )
    stateful.add_argument(
        "--no-stateful", action="store_true", help="run the single-event rules only"
    )
    scan_parser.add_argument(
        "--users", metavar="USERS.jsonl",
        help="user-context records to enrich events with, like the workers do (role, timezone, "
        "work_hours and usual_geo feed rules and the off-hours / new-geo profiles)",
    )
    _engine_option(scan_parser)
    scan_parser.set_defaults(handler=_cmd_scan)
