"""Multi-pattern matching: one Aho-Corasick automaton plus a regex prefilter.

All keyword phrases of all rules go into one ``ahocorasick.Automaton`` run
over the keyword view of each text. Regexes are never run blindly: a regex is
a *candidate* for a text only if

* the literals it requires were found by the same Aho-Corasick pass: the
  loader derives from each regex's parse tree sets of literals such that every
  match holds one literal of each set (``ignore\\s+previous`` requires
  "ignore previous" as the keyword view spells it), and a regex runs only if
  every set had a hit; or, for regexes without such literals,
* Hyperscan (when available) reports it may match: those regexes go into one
  database compiled in prefilter mode with ``HS_FLAG_SINGLEMATCH``, which says
  *which* of them can match; or (fallback, and for regexes Hyperscan cannot
  compile) a short required literal occurs in the text, or the regex has no
  required literal at all and simply runs.

Regexes with a literal anchor stay out of the Hyperscan database on purpose:
the shared automaton already prefilters them for free, and Hyperscan's
compile time grows steeply with large bounded repeats under Unicode mode
(minutes for this repo's packs), which would stall rule reloads.

Either way the final spans come from the ``regex`` package, so both paths give
the same findings; Hyperscan only decides what to skip.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import ahocorasick

from detectors.model import KeywordLeaf, Pattern
from detectors.normalise import Source

_hs: Any
try:  # Hyperscan is optional: x86-64 wheels only
    import hyperscan as _hs
except ImportError:  # pragma: no cover - depends on the platform
    _hs = None

MAX_SPANS_PER_KEYWORD = 16
# Patterns with a finite repeat bound above this compile too slowly in Hyperscan.
HYPERSCAN_MAX_REPEAT = 32

MAX_STARTS = 64  # anchored regex attempts per pattern and text before a full run
MAX_LITERAL_ENDS = 64  # positions kept per gate literal (for windowed regex runs)

# (phrase length, needs word boundary on the left, on the right, keyword leaf
#  ids, (pattern id, gate set index) pairs, ids of patterns that start with it,
#  the phrase itself)
AcValue = tuple[int, bool, bool, tuple[int, ...], tuple[tuple[int, int], ...], tuple[int, ...], str]


@dataclass(slots=True)
class KeywordScan:
    """What one automaton pass over a keyword view found."""

    spans: dict[int, list[tuple[int, int]]]  # keyword leaf id -> spans in the view
    gated: set[int]  # patterns whose literal gate passed
    starts: dict[int, list[int]]  # anchored pattern id -> where its start literals are
    overflow: set[int]  # anchored patterns with too many starts: run them in full
    literal_ends: dict[str, list[int]]  # gate literal -> last index of each occurrence


def _seen(literal: str, text: str, memo: dict[str, bool]) -> bool:
    found = memo.get(literal)
    if found is None:
        found = memo[literal] = literal in text
    return found


def hyperscan_available() -> bool:
    return _hs is not None


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _compile_hyperscan(
    patterns: Sequence[Pattern], ids: Sequence[int]
) -> tuple[Any, frozenset[int]]:
    """A prefilter database of the given patterns that Hyperscan accepts, and their ids."""
    assert _hs is not None
    flags = _hs.HS_FLAG_UTF8 | _hs.HS_FLAG_UCP | _hs.HS_FLAG_SINGLEMATCH | _hs.HS_FLAG_PREFILTER

    def build(chosen: Sequence[int]) -> Any:
        db = _hs.Database()
        db.compile(
            expressions=[patterns[i].source.encode("utf-8") for i in chosen],
            ids=list(chosen),
            elements=len(chosen),
            flags=[flags] * len(chosen),
        )
        return db

    accepted = []
    for i in ids:
        try:
            build([i])
        except _hs.error:  # syntax Hyperscan does not know: that pattern stays out
            continue
        accepted.append(i)
    if not accepted:
        return None, frozenset()
    return build(accepted), frozenset(accepted)


class Matcher:
    """Keyword and regex-candidate search shared by every rule of a program."""

    def __init__(
        self,
        keyword_leaves: Sequence[KeywordLeaf],
        patterns: Sequence[Pattern],
        *,
        use_hyperscan: bool,
    ) -> None:
        self.patterns = tuple(patterns)
        if use_hyperscan and _hs is None:
            raise ImportError("hyperscan is not installed: pip install 'hyperscan>=0.7'")
        self._db: Any = None
        self.hyperscan_ids: frozenset[int] = frozenset()
        if use_hyperscan:
            unanchored = [
                i
                for i, p in enumerate(self.patterns)
                if p.gate.kind != "ac"
                and p.largest_repeat is not None
                and p.largest_repeat <= HYPERSCAN_MAX_REPEAT
            ]
            self._db, self.hyperscan_ids = _compile_hyperscan(self.patterns, unanchored)
        self._local = threading.local()
        self.full_masks: dict[int, int] = {}
        self.checks = {i: p.gate.checks for i, p in enumerate(self.patterns) if p.gate.checks}
        self.run_gates = {
            i: (p.gate.run_table, p.gate.run_length)
            for i, p in enumerate(self.patterns)
            if p.gate.run_length
        }
        self.automaton = self._build_automaton(keyword_leaves)

    @property
    def uses_hyperscan(self) -> bool:
        return self._db is not None

    def _build_automaton(self, keyword_leaves: Sequence[KeywordLeaf]) -> Any:
        keywords: dict[str, list[int]] = {}
        literals: dict[str, list[tuple[int, int]]] = {}
        starts: dict[str, list[int]] = {}
        for leaf_id, leaf in enumerate(keyword_leaves):
            for phrase in leaf.phrases:
                keywords.setdefault(phrase, []).append(leaf_id)
        for pattern_id, pattern in enumerate(self.patterns):
            if pattern.gate.kind != "ac" or pattern_id in self.hyperscan_ids:
                continue
            self.full_masks[pattern_id] = (1 << len(pattern.gate.sets)) - 1
            for set_index, alternatives in enumerate(pattern.gate.sets):
                for literal in alternatives:
                    literals.setdefault(literal, []).append((pattern_id, set_index))
            for literal in pattern.gate.starts:
                starts.setdefault(literal, []).append(pattern_id)
        automaton = ahocorasick.Automaton()
        for key in keywords.keys() | literals.keys() | starts.keys():
            kw_ids = tuple(keywords.get(key, ()))
            value: AcValue = (
                len(key),
                bool(kw_ids) and _is_word(key[0]),
                bool(kw_ids) and _is_word(key[-1]),
                kw_ids,
                tuple(literals.get(key, ())),
                tuple(starts.get(key, ())),
                key,
            )
            automaton.add_word(key, value)
        if len(automaton):
            automaton.make_automaton()
        return automaton

    def keywords(self, text: str) -> KeywordScan:
        """One automaton pass: keyword spans (word-bounded), passed gates, start positions."""
        result = KeywordScan({}, set(), {}, set(), {})
        if not len(self.automaton):
            return result
        spans = result.spans
        starts = result.starts
        ends = result.literal_ends
        masks: dict[int, int] = {}
        size = len(text)
        for last, value in self.automaton.iter(text):
            length, left, right, kw_ids, gate_refs, start_ids, key = value
            if gate_refs:
                found_ends = ends.get(key)
                if found_ends is None:
                    ends[key] = [last]
                    for pattern_id, set_index in gate_refs:
                        masks[pattern_id] = masks.get(pattern_id, 0) | (1 << set_index)
                elif len(found_ends) <= MAX_LITERAL_ENDS:
                    found_ends.append(last)
            start = last - length + 1
            for pattern_id in start_ids:
                positions = starts.setdefault(pattern_id, [])
                if len(positions) < MAX_STARTS:
                    positions.append(start)
                else:
                    result.overflow.add(pattern_id)
            if not kw_ids:
                continue
            if left and start > 0 and _is_word(text[start - 1]):
                continue
            if right and last + 1 < size and _is_word(text[last + 1]):
                continue
            for leaf_id in kw_ids:
                found = spans.get(leaf_id)
                if found is None:
                    spans[leaf_id] = [(start, last + 1)]
                elif len(found) < MAX_SPANS_PER_KEYWORD:
                    found.append((start, last + 1))
        full = self.full_masks
        result.gated = {pid for pid, mask in masks.items() if mask == full[pid]}
        return result

    def _scratch(self) -> Any:
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            assert _hs is not None
            scratch = _hs.Scratch(self._db)
            self._local.scratch = scratch
        return scratch

    def hyperscan_candidates(self, texts: Iterable[str]) -> set[int]:
        found: set[int] = set()
        if self._db is None:
            return found

        def on_match(pattern_id: int, start: int, end: int, flags: int, context: Any) -> None:
            found.add(pattern_id)

        scratch = self._scratch()
        for text in texts:
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates from JSON escapes
                data = text.encode("utf-8", "replace")
            self._db.scan(data, match_event_handler=on_match, scratch=scratch)
        return found

    def candidates(self, source: Source, gated: set[int], unconditional: Sequence[int]) -> set[int]:
        """Pattern ids that may match one of the source's regex views.

        ``gated``: patterns whose automaton gate passed; ``unconditional``:
        patterns without one (and not in the Hyperscan database). All of them
        must then pass their substring checks and required-run test.
        """
        out = set(gated)
        if self._db is not None:
            out |= self.hyperscan_candidates(view.text for view in source.regex_views)
        out.update(unconditional)
        kw_text = source.kw.text
        present: dict[str, bool] = {}
        for pattern_id in [pid for pid in out if pid in self.checks]:
            for alternatives in self.checks[pattern_id]:
                if not any(_seen(literal, kw_text, present) for literal in alternatives):
                    out.discard(pattern_id)
                    break
        gated_runs = [pid for pid in out if pid in self.run_gates]
        if gated_runs:
            out.difference_update(self._failed_runs(source, gated_runs))
        return out

    def _failed_runs(self, source: Source, pattern_ids: Sequence[int]) -> list[int]:
        """Patterns whose required run of class characters occurs in no regex view."""
        if all(view.text.isascii() for view in source.regex_views):
            # Pure-ASCII text: runs of non-ASCII-only classes fail without looking.
            non_ascii_only = [
                pid for pid in pattern_ids if b"x" not in self.run_gates[pid][0][:128]
            ]
            if len(non_ascii_only) == len(pattern_ids):
                return non_ascii_only
        data = [view.text.encode("utf-8", "surrogatepass") for view in source.regex_views]
        marked: dict[bytes, list[bytes]] = {}
        failed: list[int] = []
        for pattern_id in pattern_ids:
            table, length = self.run_gates[pattern_id]
            views = marked.get(table)
            if views is None:
                views = marked[table] = [d.translate(table) for d in data]
            needle = b"x" * length
            if not any(needle in view for view in views):
                failed.append(pattern_id)
        return failed
