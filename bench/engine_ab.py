"""The detection engine of a git revision against the working tree's, in one process.

Run from the repository root:  python bench/engine_ab.py --base REV [--ml] [--repeats 4]

The revision's ``detectors`` package is extracted with ``git archive`` into a
temporary directory under another package name and imported beside the
working tree's. Both engines load the working tree's rules/ and scan, in
turns, engine_speed's corpus (large texts) and 20,000 events of the
pipeline's synthetic stream (short ones, in batches of 200 as a worker takes
them), recompiled before each run so that neither reuses what it kept of
recurring texts. For each, it prints the best process time per event of
each engine and whether their findings (rule, field, severity, evidence
spans) are identical, with the first events that differ.

Alternating runs in one process is what makes a few per cent visible on a
shared machine, where the speed of whole runs drifts far more.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import io
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from itertools import islice
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engine_speed import make_events  # noqa: E402

import detectors  # noqa: E402
from pipeline.synth import generate_events  # noqa: E402

BASE_PACKAGE = "detectors_base"
_IMPORTS = re.compile(r"\b(from|import) detectors\b")

Findings = list[list[tuple[Any, ...]]]


def extract(revision: str, into: Path) -> ModuleType:
    """The revision's ``detectors`` package, importable as ``detectors_base``."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision, "detectors"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    package = into / BASE_PACKAGE
    (into / "detectors").rename(package)
    for source in package.rglob("*.py"):
        source.write_text(_IMPORTS.sub(rf"\1 {BASE_PACKAGE}", source.read_text()))
    sys.path.insert(0, str(into))
    return importlib.import_module(BASE_PACKAGE)


def engine_of(package: ModuleType, ml: bool) -> tuple[Any, Any]:
    ruleset = package.load_rules([ROOT / "rules"])
    classifier = importlib.import_module(f"{package.__name__}.ml").Classifier.load() if ml else None
    engine = package.Engine(ruleset, classifier=classifier)
    engine.warm()
    return engine, ruleset


def scan_in_batches(engine: Any, events: Sequence[dict[str, Any]], size: int) -> Findings:
    out: Findings = []
    for start in range(0, len(events), size):
        for findings in engine.scan_batch(events[start : start + size]):
            out.append(
                [
                    (f.rule_id, f.field, f.severity, tuple((e.start, e.end) for e in f.evidence))
                    for f in findings
                ]
            )
    return out


def compare(
    name: str,
    events: Sequence[dict[str, Any]],
    engines: dict[str, tuple[Any, Any]],
    repeats: int,
    batch: int,
) -> None:
    best = dict.fromkeys(engines, float("inf"))
    found: dict[str, Findings] = {}
    for _ in range(repeats):
        for label, (engine, ruleset) in engines.items():
            engine.swap(ruleset)
            gc.collect()
            started = time.process_time()
            found[label] = scan_in_batches(engine, events, batch)
            best[label] = min(best[label], time.process_time() - started)
    per_event = {label: seconds * 1e6 / len(events) for label, seconds in best.items()}
    differing = [
        i for i, (a, b) in enumerate(zip(found["base"], found["new"], strict=True)) if a != b
    ]
    verdict = "identical findings" if not differing else f"{len(differing)} events differ"
    print(
        f"{name:28s} base {per_event['base']:8.1f} us/event   new {per_event['new']:8.1f}   "
        f"new/base {best['new'] / best['base']:.3f}   {verdict} "
        f"({sum(map(len, found['new']))} findings)"
    )
    for index in differing[:5]:
        print(f"  event {index}: base {found['base'][index]}\n  {'':9s}new  {found['new'][index]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--ml", action="store_true", help="both engines with the classifier")
    parser.add_argument("--repeats", type=int, default=4, help="runs per engine (best kept)")
    parser.add_argument("--events", type=int, default=20000, help="synthetic events")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="llmtrail-ab-") as tmp:
        base = extract(args.base, Path(tmp))
        engines = {"base": engine_of(base, args.ml), "new": engine_of(detectors, args.ml)}
        streams: list[tuple[str, Callable[[], list[dict[str, Any]]], int]] = [
            ("engine_speed corpus", lambda: make_events(7, 3000), 3000),
            ("synthetic stream", lambda: list(islice(generate_events(3), args.events)), 200),
        ]
        print(f"base {args.base} vs working tree; classifier {'on' if args.ml else 'off'}")
        for name, events, batch in streams:
            compare(name, events(), engines, args.repeats, batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
