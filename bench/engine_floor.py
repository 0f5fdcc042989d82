"""How fast could any engine scan the engine_speed corpus? Floors, next to the bare pass.

Run from the repository root:  python bench/engine_floor.py [--rules PATH ...]

The speed target of the detection engine (DESIGN.md) is at least half the
speed of a bare Aho-Corasick pass over the same texts: the whole engine may
take twice that pass's time. This script measures, in one run and on
engine_speed's corpus, two pieces of work that any engine honouring the rule
language has to do, each on its own:

* the text normalisation the rule language promises (NFKC and case folding,
  invisible characters, look-alikes, decoding of embedded payloads), as
  ``detectors.normalise`` does it;
* one pass of the fastest multi-regex matcher available to a Python program
  here, RE2's ``Set`` (a lazily built DFA over every rule regex at once),
  over each original text, after a first pass that builds its DFA. It only
  says which regexes match somewhere: no positions, no validators, no
  second view of folded text. RE2 has no look-arounds or back-references,
  so those are dropped or widened (each regex becomes a superset of itself).

Each is printed as a share of the bare pass's time. If the two together take
more than twice that pass, no engine built from these parts can meet the
target on this corpus, however little else it does.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import re2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engine_speed import (  # noqa: E402
    bare_ac,
    best_of,
    event_text,
    keyword_phrases,
    make_events,
    normalise_all,
    rule_regexes,
)

from detectors import load_rules  # noqa: E402
from detectors.prefilter import hyperscan_expression  # noqa: E402

_LOOKAROUNDS = ("(?=", "(?!", "(?<=", "(?<!")


def _class_end(source: str, start: int) -> int:
    """Index just past the character class opening at ``start`` (a leading ``]`` is a member)."""
    index = start + 1
    if source.startswith("^", index):
        index += 1
    if source.startswith("]", index):
        index += 1
    while index < len(source) and source[index] != "]":
        index += 2 if source[index] == "\\" else 1
    return index + 1


def _group_end(source: str, start: int) -> int:
    """Index just past the group opening at ``start``."""
    depth = 0
    index = start
    while index < len(source):
        char = source[index]
        if char == "\\":
            index += 2
            continue
        if char == "[":
            index = _class_end(source, index)
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return len(source)


def re2_syntax(source: str) -> str:
    """A rule regex widened into RE2's syntax: look-arounds dropped, back-references
    widened to any text, atomic groups made plain, ``\\u``/``\\U`` escapes as ``\\x{..}``."""
    text = hyperscan_expression(source).decode("utf-8")
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            escaped = text[index : index + 2]
            out.append("(?s:.*?)" if escaped[1:].isdigit() else escaped)
            index += 2
        elif char == "[":
            end = _class_end(text, index)
            out.append(text[index:end])
            index = end
        elif text.startswith(_LOOKAROUNDS, index):
            index = _group_end(text, index)
        elif text.startswith("(?>", index):
            out.append("(?:")
            index += 3
        else:
            out.append(char)
            index += 1
    return "".join(out)


def re2_set(patterns: Sequence[Any]) -> tuple[Any, int]:
    """An unanchored RE2 set of the patterns RE2 accepts, and how many it refused."""
    options = re2.Options()
    options.max_mem = 1 << 30  # room for the DFA of every pattern at once
    matcher = re2.Set.SearchSet(options)
    refused = 0
    for pattern in patterns:  # rule regexes carry their flags inline
        try:
            matcher.Add(re2_syntax(pattern.pattern))
        except Exception:  # re2._re2.Error, not exported
            refused += 1
    matcher.Compile()
    return matcher, refused


def set_pass(matcher: Any, texts: Sequence[str]) -> Callable[[], int]:
    def run() -> int:
        hits = 0
        for text in texts:
            hits += len(matcher.Match(text) or ())
        return hits

    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", nargs="+", type=Path, default=[ROOT / "rules"])
    parser.add_argument("--events", type=int, default=3000, help="number of synthetic events")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (best kept)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    ruleset = load_rules(args.rules)
    texts = [event_text(e) for e in make_events(args.seed, args.events)]
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    patterns = rule_regexes(ruleset)
    print(f"corpus: {len(texts)} texts, {megabytes:.1f} MB (seed {args.seed})")

    ac_seconds = best_of(args.repeats, bare_ac(keyword_phrases(ruleset), texts))
    print(f"{'bare Aho-Corasick':24s} {megabytes / ac_seconds:7.1f} MB/s   share of its time 1.00")

    norm_seconds = best_of(args.repeats, partial(normalise_all, texts))
    norm_share = norm_seconds / ac_seconds
    print(f"{'normalisation alone':24s} {megabytes / norm_seconds:7.1f} MB/s   {norm_share:.2f}")

    matcher, refused = re2_set(patterns)
    run = set_pass(matcher, texts)
    started = time.perf_counter()
    run()
    warmup = time.perf_counter() - started
    set_seconds = best_of(args.repeats, run)
    set_share = set_seconds / ac_seconds
    print(
        f"{'RE2 set, one pass':24s} {megabytes / set_seconds:7.1f} MB/s   {set_share:.2f}"
        f"  ({len(patterns) - refused} of {len(patterns)} regexes; the first pass, which"
        f" builds the DFA, took {warmup:.1f} s)"
    )
    total = norm_share + set_share
    print(
        f"normalisation + one regex pass: {total:.2f} of the bare pass's time, so an engine"
        f" ratio of at most {1 / total:.2f} (the target is 0.5: a share of at most 2.00)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
