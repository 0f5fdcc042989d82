"""Multi-pattern matching: one literal pass plus a regex prefilter.

All keyword phrases of all rules and every gate literal go into one literal
matcher run over the keyword view of each text: a Hyperscan literal database
when Hyperscan is installed (it reports each literal that occurs once, and the
few positions the engine later needs are found with ``str.find``), else one
``ahocorasick.Automaton`` whose pass records positions as it goes. Regexes are
never run blindly: a regex is a *candidate* for a text only if

* the literals it requires were found by the same pass: the loader derives
  from each regex's parse tree sets of literals such that every match holds
  one literal of each set (``ignore\\s+previous`` requires "ignore previous"
  as the keyword view spells it), and a regex runs only if every set had a
  hit; or, for regexes without such literals,
* Hyperscan (when available) reports it may match: those regexes go into one
  database compiled in prefilter mode with ``HS_FLAG_SINGLEMATCH``, which says
  *which* of them can match; or (fallback, and for regexes Hyperscan cannot
  compile) a short required literal occurs in the text, or the regex has no
  required literal at all and simply runs.

A candidate then still passes :mod:`detectors.prefilter` (its own Hyperscan
prefilter) before the engine runs it.

Regexes with a literal anchor stay out of the combined Hyperscan database on
purpose: the literal pass already prefilters them for free, and Hyperscan's
compile time grows steeply with large bounded repeats under Unicode mode
(minutes for this repo's packs in one database), which would stall reloads.

Either way the final spans come from the ``regex`` package, so both paths give
the same findings; Hyperscan only decides what to skip.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ahocorasick

from detectors.model import KeywordLeaf, Pattern
from detectors.normalise import Source
from detectors.prefilter import PrefilterBank, hyperscan_expression

_hs: Any
try:  # Hyperscan is optional: x86-64 wheels only
    import hyperscan as _hs
except ImportError:  # pragma: no cover - depends on the platform
    _hs = None

MAX_SPANS_PER_KEYWORD = 16
# Patterns with a finite repeat bound above this stay out of the combined Hyperscan
# database: large bounds make its compile slow. 64 admits the shipped fixed-length
# tokens (a 40-character AWS secret, a 44-character MRZ line), which otherwise pass
# through a run test on every text.
HYPERSCAN_MAX_REPEAT = 64

MAX_STARTS = 64  # anchored regex attempts per pattern and text before a full run
MAX_LITERAL_ENDS = 64  # positions kept per gate literal (for windowed regex runs)
MIN_INDEXED_CHECK = 3  # shorter check literals are looked for with a substring test
SHORT_TEXT = 4096  # bytes of regex views up to which run gates first look for a long token
_SPLIT_BYTES = b" \t\n\r\x0b\x0c"  # where bytes.split() cuts
_TOKEN_MARK = bytes(ord(" ") if byte in _SPLIT_BYTES else ord("x") for byte in range(256))

# (phrase length, needs word boundary on the left, on the right, keyword leaf
#  ids, (pattern id, gate set index) pairs, ids of patterns that start with it,
#  the phrase itself)
AcValue = tuple[int, bool, bool, tuple[int, ...], tuple[tuple[int, int], ...], tuple[int, ...], str]


@dataclass(slots=True)
class KeywordScan:
    """What one literal pass over a keyword view found.

    The automaton path records every position during its pass; the Hyperscan
    path only learns which literals occur (``present``) and finds positions
    on demand, for the few patterns that get that far.
    """

    text: str
    spans: dict[int, list[tuple[int, int]]]  # keyword leaf id -> spans in the view
    gated: set[int]  # patterns whose literal gate passed
    present: frozenset[str] | None = None  # literals seen (Hyperscan path only)
    indexed: frozenset[str] = frozenset()  # literals the pass looked for (Hyperscan path)
    start_literals: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    found_starts: dict[int, list[int]] = field(default_factory=dict)
    overflow: set[int] = field(default_factory=set)  # anchored patterns with too many starts
    found_ends: dict[str, list[int]] = field(default_factory=dict)

    def starts(self, pattern_id: int) -> list[int] | None:
        """Where the pattern's start literals are; None if too many (run it in full)."""
        if pattern_id in self.overflow:
            return None
        found = self.found_starts.get(pattern_id)
        if found is None and self.present is not None:
            found = []
            for literal in self.start_literals.get(pattern_id, ()):
                if literal in self.present:
                    found.extend(occurrences(self.text, literal, MAX_STARTS + 1))
            if len(found) > MAX_STARTS:
                self.overflow.add(pattern_id)
                return None
            self.found_starts[pattern_id] = found
        return found or []

    def literal_ends(self, literal: str, recorded: bool = True) -> Sequence[int]:
        """Last index of each occurrence of a literal (at most ``MAX_LITERAL_ENDS + 1``).

        ``recorded``: the literal is a gate literal, whose ends the automaton
        pass recorded; others (check literals) are looked for here.
        """
        found = self.found_ends.get(literal)
        if found is not None:
            return found
        if self.present is not None:  # Hyperscan path: skip what its pass saw absent
            if literal in self.indexed and literal not in self.present:
                return ()
        elif recorded:  # the automaton recorded every gate literal it saw
            return ()
        tail = len(literal) - 1
        found = [start + tail for start in occurrences(self.text, literal, MAX_LITERAL_ENDS + 1)]
        self.found_ends[literal] = found
        return found


def occurrences(text: str, literal: str, limit: int) -> list[int]:
    """Start of each (possibly overlapping) occurrence of ``literal``, the first ``limit``."""
    found: list[int] = []
    position = text.find(literal)
    while position >= 0 and len(found) < limit:
        found.append(position)
        position = text.find(literal, position + 1)
    return found


def _seen(literal: str, text: str, memo: dict[str, bool]) -> bool:
    found = memo.get(literal)
    if found is None:
        found = memo[literal] = literal in text
    return found


def hyperscan_available() -> bool:
    return _hs is not None


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _bounded(text: str, start: int, end: int, left: bool, right: bool) -> bool:
    """The span has a word boundary on each side that asks for one."""
    if left and start > 0 and _is_word(text[start - 1]):
        return False
    return not (right and end < len(text) and _is_word(text[end]))


def _compile_hyperscan(
    patterns: Sequence[Pattern], ids: Sequence[int], cache: PrefilterBank | None
) -> tuple[Any, frozenset[int]]:
    """A prefilter database of the given patterns that Hyperscan accepts, and their ids.

    With a ``cache``, each pattern's trial database and the combined one are
    kept on disk (keyed by flags, ids and sources): a rule reload that keeps
    these patterns loads them instead of compiling them again.
    """
    assert _hs is not None
    flags = _hs.HS_FLAG_UTF8 | _hs.HS_FLAG_UCP | _hs.HS_FLAG_SINGLEMATCH | _hs.HS_FLAG_PREFILTER

    def build(chosen: Sequence[int]) -> Any:
        def compiled() -> Any:
            db = _hs.Database()
            db.compile(
                expressions=[hyperscan_expression(patterns[i].source) for i in chosen],
                ids=list(chosen),
                elements=len(chosen),
                flags=[flags] * len(chosen),
            )
            return db

        if cache is None:
            return compiled()
        listed = "\n".join(f"{i}\t{patterns[i].source}" for i in chosen)
        return cache.cached(f"combined|{flags}|{listed}", compiled)

    accepted = []
    for i in ids:
        try:
            build([i])
        except (_hs.error, UnicodeEncodeError):  # Hyperscan does not know it: it stays out
            continue
        accepted.append(i)
    if not accepted:
        return None, frozenset()
    return build(accepted), frozenset(accepted)


def _automaton(entries: Sequence[AcValue]) -> Any:
    """An Aho-Corasick automaton of the entries' literals, each carrying its entry."""
    automaton = ahocorasick.Automaton()
    for entry in entries:
        automaton.add_word(entry[-1], entry)
    if len(automaton):
        automaton.make_automaton()
    return automaton


class Matcher:
    """Keyword and regex-candidate search shared by every rule of a program."""

    def __init__(
        self,
        keyword_leaves: Sequence[KeywordLeaf],
        patterns: Sequence[Pattern],
        *,
        use_hyperscan: bool,
        cache: PrefilterBank | None = None,
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
            self._db, self.hyperscan_ids = _compile_hyperscan(self.patterns, unanchored, cache)
        self._local = threading.local()
        self.full_masks: dict[int, int] = {}
        self.checks = {i: p.gate.checks for i, p in enumerate(self.patterns) if p.gate.checks}
        self.run_gates = {
            i: (p.gate.run_table, p.gate.run_length)
            for i, p in enumerate(self.patterns)
            if p.gate.run_length
        }
        # Run gates whose class has no ASCII character, and those without whitespace.
        self.non_ascii_runs = frozenset(
            i for i, (table, _) in self.run_gates.items() if b"x" not in table[:128]
        )
        self.unspaced_runs = frozenset(
            i
            for i, (table, _) in self.run_gates.items()
            if all(table[byte] != ord("x") for byte in _SPLIT_BYTES)
        )
        self._entries = self._literal_entries(keyword_leaves)
        self.indexed: frozenset[str] = frozenset()
        self._literal_db: Any = self._compile_literals(cache) if use_hyperscan else None
        # The pure-Python literal pass; with a Hyperscan literal database it is never
        # used, and building it for ~38,000 literals took most of a rule reload.
        self.automaton: Any = None if self._literal_db is not None else _automaton(self._entries)

    @property
    def uses_hyperscan(self) -> bool:
        return self._db is not None

    def _literal_entries(self, keyword_leaves: Sequence[KeywordLeaf]) -> list[AcValue]:
        """One entry per keyword phrase, gate literal and start literal, sorted."""
        keywords: dict[str, list[int]] = {}
        literals: dict[str, list[tuple[int, int]]] = {}
        starts: dict[str, list[int]] = {}
        for leaf_id, leaf in enumerate(keyword_leaves):
            for phrase in leaf.phrases:
                keywords.setdefault(phrase, []).append(leaf_id)
        start_literals: dict[int, tuple[str, ...]] = {}
        for pattern_id, pattern in enumerate(self.patterns):
            if pattern.gate.kind != "ac" or pattern_id in self.hyperscan_ids:
                continue
            self.full_masks[pattern_id] = (1 << len(pattern.gate.sets)) - 1
            for set_index, alternatives in enumerate(pattern.gate.sets):
                for literal in alternatives:
                    literals.setdefault(literal, []).append((pattern_id, set_index))
            for literal in pattern.gate.starts:
                starts.setdefault(literal, []).append(pattern_id)
            if pattern.gate.starts:
                start_literals[pattern_id] = pattern.gate.starts
        self.start_literals = start_literals
        entries: list[AcValue] = []
        for key in sorted(keywords.keys() | literals.keys() | starts.keys()):
            kw_ids = tuple(keywords.get(key, ()))
            entries.append(
                (
                    len(key),
                    bool(kw_ids) and _is_word(key[0]),
                    bool(kw_ids) and _is_word(key[-1]),
                    kw_ids,
                    tuple(literals.get(key, ())),
                    tuple(starts.get(key, ())),
                    key,
                )
            )
        return entries

    def _compile_literals(self, cache: PrefilterBank | None) -> Any:
        """One Hyperscan literal database: every automaton key and the longer check literals.

        Check literals of one or two characters stay out: they would slow the
        whole pass down, and a substring test finds them as fast.
        """
        assert _hs is not None
        known = {entry[-1] for entry in self._entries}
        for alternatives_sets in self.checks.values():
            for alternatives in alternatives_sets:
                for literal in alternatives:
                    if literal not in known and len(literal) >= MIN_INDEXED_CHECK:
                        known.add(literal)
                        self._entries.append((len(literal), False, False, (), (), (), literal))
        self.indexed = frozenset(entry[-1] for entry in self._entries)
        # Per literal id, for the Hyperscan pass: the literal itself, the patterns
        # whose gate it passes alone (one set), and (pattern, bit) of the others.
        self._keys = [entry[-1] for entry in self._entries]
        full = self.full_masks
        self._passes = [tuple(p for p, _ in e[4] if full[p] == 1) for e in self._entries]
        self._bits = [tuple((p, 1 << i) for p, i in e[4] if full[p] != 1) for e in self._entries]
        if not self._entries:
            return None
        expressions = [entry[-1].encode("utf-8", "surrogatepass") for entry in self._entries]

        def build() -> Any:
            db = _hs.Database()
            db.compile(
                expressions=expressions,
                ids=list(range(len(expressions))),
                elements=len(expressions),
                flags=_hs.HS_FLAG_SINGLEMATCH,
                literal=True,
            )
            return db

        if cache is None:
            return build()
        return cache.cached("literals|" + "\n".join(e[-1] for e in self._entries), build)

    def keywords(self, text: str) -> KeywordScan:
        """Keyword spans (word-bounded), passed gates and literal positions of one keyword view."""
        if self._literal_db is not None:
            return self._keywords_hyperscan(text)
        result = KeywordScan(text, {}, set())
        if not len(self.automaton):
            return result
        spans = result.spans
        starts = result.found_starts
        ends = result.found_ends
        masks: dict[int, int] = {}
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
            if not kw_ids or not _bounded(text, start, last + 1, left, right):
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

    def _keywords_hyperscan(self, text: str) -> KeywordScan:
        """The same answers from one Hyperscan pass that reports each literal once."""
        seen: list[int] = []

        def on_match(literal_id: int, start: int, end: int, flags: int, context: Any) -> None:
            seen.append(literal_id)

        scratch = getattr(self._local, "literal_scratch", None)
        if scratch is None:
            scratch = self._local.literal_scratch = _hs.Scratch(self._literal_db)
        self._literal_db.scan(
            text.encode("utf-8", "surrogatepass"), match_event_handler=on_match, scratch=scratch
        )
        entries, passes, bits = self._entries, self._passes, self._bits
        present = frozenset(map(self._keys.__getitem__, seen))
        result = KeywordScan(text, {}, set(), present, self.indexed, self.start_literals)
        gated = result.gated
        masks: dict[int, int] = {}
        by_leaf: dict[int, list[tuple[int, int]]] = {}
        for literal_id in seen:
            gated.update(passes[literal_id])
            for pattern_id, bit in bits[literal_id]:
                masks[pattern_id] = masks.get(pattern_id, 0) | bit
            length, left, right, kw_ids, _, _, key = entries[literal_id]
            if kw_ids:
                spans: list[tuple[int, int]] = []
                position = text.find(key)
                while position >= 0 and len(spans) < MAX_SPANS_PER_KEYWORD:
                    if _bounded(text, position, position + length, left, right):
                        spans.append((position + length, position))
                    position = text.find(key, position + 1)
                for leaf_id in kw_ids:
                    by_leaf.setdefault(leaf_id, []).extend(spans)
        for leaf_id, ends_starts in by_leaf.items():
            if ends_starts:
                ends_starts.sort()
                result.spans[leaf_id] = [(s, e) for e, s in ends_starts[:MAX_SPANS_PER_KEYWORD]]
        full = self.full_masks
        gated.update(pid for pid, mask in masks.items() if mask == full[pid])
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

    def candidates(
        self,
        source: Source,
        gated: set[int],
        unconditional: Sequence[int],
        present: frozenset[str] | None = None,
    ) -> set[int]:
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
        memo: dict[str, bool] = {}
        for pattern_id in [pid for pid in out if pid in self.checks]:
            for alternatives in self.checks[pattern_id]:
                passed = any(
                    literal in present
                    if present is not None and literal in self.indexed
                    else _seen(literal, kw_text, memo)
                    for literal in alternatives
                )
                if not passed:
                    out.discard(pattern_id)
                    break
        gated_runs = [pid for pid in out if pid in self.run_gates]
        if gated_runs:
            out.difference_update(self._failed_runs(source, gated_runs))
        return out

    def _failed_runs(self, source: Source, pattern_ids: Sequence[int]) -> list[int]:
        """Patterns whose required run of class characters occurs in no regex view."""
        ascii_text = all(view.text.isascii() for view in source.regex_views)
        data: list[bytes] | None = None
        tokens: list[bytes] | None = None  # a short text's views, "x" for non-whitespace
        marked: dict[bytes, list[bytes]] = {}
        failed: list[int] = []
        for pattern_id in pattern_ids:
            if ascii_text and pattern_id in self.non_ascii_runs:
                failed.append(pattern_id)  # a run of non-ASCII characters in ASCII text
                continue
            if data is None:
                data = [view.text.encode("utf-8", "surrogatepass") for view in source.regex_views]
                if sum(map(len, data)) <= SHORT_TEXT:
                    tokens = [d.translate(_TOKEN_MARK) for d in data]
            table, length = self.run_gates[pattern_id]
            needle = b"x" * length
            if (
                tokens is not None
                and pattern_id in self.unspaced_runs
                and not any(needle in view for view in tokens)
            ):
                failed.append(pattern_id)  # whitespace breaks such a run: no token is that long
                continue
            views = marked.get(table)
            if views is None:
                views = marked[table] = [d.translate(table) for d in data]
            if not any(needle in view for view in views):
                failed.append(pattern_id)
        return failed
