"""Multi-pattern matching: one Aho-Corasick automaton plus a regex prefilter.

All keyword phrases of all rules go into one ``ahocorasick.Automaton`` run
over the keyword view of each text. Regexes are never run blindly: a regex is
a *candidate* for a text only if

* one of the literals the regex requires (derived from its parse tree) was
  found by the same Aho-Corasick pass; or, for regexes without such a literal,
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

# (phrase length, needs word boundary on the left, on the right,
#  keyword leaf ids, pattern ids gated by this literal)
AcValue = tuple[int, bool, bool, tuple[int, ...], tuple[int, ...]]


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
        self.automaton = self._build_automaton(keyword_leaves)

    @property
    def uses_hyperscan(self) -> bool:
        return self._db is not None

    def _build_automaton(self, keyword_leaves: Sequence[KeywordLeaf]) -> Any:
        keywords: dict[str, list[int]] = {}
        literals: dict[str, list[int]] = {}
        for leaf_id, leaf in enumerate(keyword_leaves):
            for phrase in leaf.phrases:
                keywords.setdefault(phrase, []).append(leaf_id)
        for pattern_id, pattern in enumerate(self.patterns):
            if pattern.gate.kind == "ac" and pattern_id not in self.hyperscan_ids:
                for literal in pattern.gate.literals:
                    literals.setdefault(literal, []).append(pattern_id)
        automaton = ahocorasick.Automaton()
        for key in keywords.keys() | literals.keys():
            kw_ids = tuple(keywords.get(key, ()))
            value: AcValue = (
                len(key),
                bool(kw_ids) and _is_word(key[0]),
                bool(kw_ids) and _is_word(key[-1]),
                kw_ids,
                tuple(literals.get(key, ())),
            )
            automaton.add_word(key, value)
        if len(automaton):
            automaton.make_automaton()
        return automaton

    def keywords(self, text: str) -> tuple[dict[int, list[tuple[int, int]]], set[int]]:
        """Keyword-leaf spans (word-bounded) and literal-gated pattern ids found in ``text``."""
        spans: dict[int, list[tuple[int, int]]] = {}
        gated: set[int] = set()
        if not len(self.automaton):
            return spans, gated
        size = len(text)
        for last, (length, left, right, kw_ids, pattern_ids) in self.automaton.iter(text):
            if pattern_ids:
                gated.update(pattern_ids)
            if not kw_ids:
                continue
            start = last - length + 1
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
        return spans, gated

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
        substring: Sequence[tuple[int, tuple[str, ...]]],
        always: Sequence[int],
    ) -> set[int]:
        """Pattern ids that may match one of the source's regex views."""
        out = set(gated)
        if self._db is not None:
            out |= self.hyperscan_candidates(view.text for view in source.regex_views)
        kw_text = source.kw.text
        for pattern_id, literals in substring:
            if any(literal in kw_text for literal in literals):
                out.add(pattern_id)
        out.update(always)
        return out
