"""The detection engine: a compiled rule set, events in, findings out.

``Engine(ruleset)`` compiles everything once (automaton, Hyperscan database,
per-kind plans). ``scan(event)`` then, for each string the event's rules look
at: normalises it, runs the shared automaton over its keyword views, finds
candidate regexes, and evaluates only the rules some of whose required leaves
could have fired (plus the few rules that can fire without any text hit).
Condition trees are evaluated lazily: a leaf runs its regexes only when the
evaluation reaches it.

Work per event is bounded: at most ``max_fields`` strings, each scanned up
to ``max_field_chars`` characters (the rest is ignored), payload decoding
bounded by :class:`detectors.normalise.Limits`, and each regex run limited to
``regex_timeout`` seconds per text (a run that times out keeps the hits found
so far and counts in :attr:`Engine.regex_timeouts`). ``scan`` never raises on
odd input: what is missing or of the wrong type is skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, NamedTuple

import regex

from detectors.fields import (
    leaves_of,
    nodes_at,
    split_selector,
    strings_at,
    values_at,
    values_of,
)
from detectors.findings import Evidence, Finding, excerpt, fingerprint
from detectors.matcher import MAX_LITERAL_ENDS, KeywordScan, Matcher, hyperscan_available
from detectors.ml import Classifier
from detectors.model import (
    KINDS,
    SEVERITIES,
    AllOf,
    AnyOf,
    Context,
    KeywordLeaf,
    MlLeaf,
    Node,
    NotOf,
    OverlapLeaf,
    Pattern,
    RegexLeaf,
    Rule,
    RuleSet,
    SignalLeaf,
    TextLeaf,
    ValueLeaf,
    iter_nodes,
)
from detectors.normalise import Limits, Normalised, SpanMap, Utf8Positions, View, normalise
from detectors.overlap import Reference, reference, shared_run
from detectors.prefilter import SHARED, PrefilterBank, scannable
from detectors.recent import RECENT_MAX_CHARS, Recent

DEFAULT_SALT = b"llmtrail-default-salt: set a deployment secret"
DEFAULT_MAX_FIELD_CHARS = 1_000_000
DEFAULT_MAX_FIELDS = 64
DEFAULT_REGEX_TIMEOUT = 0.05
MAX_EVIDENCE = 5
MAX_HITS_PER_PATTERN = 16
# A regex whose longest match is unbounded is looked for within this many
# characters of the literal it requires, or before where its prefilter says a
# match ends (documented bound of the engine).
REGEX_WINDOW = 2000
# Match ends a prefilter reports before the regex runs over the whole text instead.
MAX_MATCH_ENDS = 256
# What normalising and pre-scanning found in recurring field texts is kept per
# event kind (see detectors.recent): this many texts, this many characters in
# all (measured: 24 MB with the classifier's tables, for texts of 4,000 chars).
RECENT_TEXTS = 2048
RECENT_BUDGET = 2_000_000
_NO_PAYLOADS = Limits(max_payloads=0)
MAX_KEPT_REFERENCE = 16_000  # characters of an overlap reference (a system prompt) worth keeping


class Hit(NamedTuple):
    field: int  # index into the event's scanned fields; -1 for a value test
    start: int  # span in the original field text (a value test: the whole value, or -1)
    end: int
    value: str  # the matched text as the matcher saw it (a value test: the value's path)
    boost: float
    witness: str = ""  # a value test: the value that satisfied it, as text


@dataclass(slots=True)
class _Field:
    path: str
    text: str
    mask: int
    norm: Normalised | None = None
    scans: list[KeywordScan] = field(default_factory=list)  # one per source
    candidates: list[set[int]] = field(default_factory=list)


def requirement(node: Node) -> frozenset[KeywordLeaf | RegexLeaf | SignalLeaf] | None:
    """Text leaves one of which must hit for ``node`` to hold; None if none is needed."""
    if isinstance(node, KeywordLeaf | RegexLeaf | SignalLeaf):
        return frozenset({node})
    if isinstance(node, ValueLeaf | MlLeaf | OverlapLeaf | NotOf):
        return None
    children = [requirement(child) for child in node.children]
    if isinstance(node, AllOf):
        known = [c for c in children if c is not None]
        return min(known, key=len) if known else None
    if any(c is None for c in children):
        return None
    return frozenset().union(*(c for c in children if c is not None))


@dataclass(frozen=True, slots=True)
class _Plan:
    """What scanning one event kind involves."""

    rules: tuple[Rule, ...]
    selectors: tuple[tuple[tuple[str, ...], int], ...]  # (segments, bit)
    always: frozenset[int]  # rule indexes evaluated on every event of this kind
    by_keyword: Mapping[int, tuple[int, ...]]
    by_pattern: Mapping[int, tuple[int, ...]]
    by_signal: Mapping[str, tuple[int, ...]]
    unconditional: tuple[int, ...]  # patterns with no automaton gate, outside Hyperscan
    # what _prepare found in recurring texts (views, scans, candidates, triggered rules)
    recent: Recent[_Prepared] = field(
        default_factory=lambda: Recent(RECENT_TEXTS, RECENT_BUDGET, max_chars=RECENT_MAX_CHARS)
    )


class _Prepared(NamedTuple):
    norm: Normalised
    scans: list[KeywordScan]
    candidates: list[set[int]]
    triggered: frozenset[int]


class _Program:
    """Everything compiled from one rule set; replaced as a whole on swap."""

    def __init__(self, ruleset: RuleSet, options: _Options) -> None:
        self.ruleset = ruleset
        self.options = options
        self.rules = tuple(r for r in ruleset.rules if r.enabled or options.include_disabled)
        self.keyword_ids: dict[int, int] = {}
        self.pattern_ids: dict[int, int] = {}
        self.leaf_masks: dict[int, int] = {}
        keyword_leaves: list[KeywordLeaf] = []
        patterns: list[Pattern] = []
        selector_bits: dict[str, int] = {}
        for rule in self.rules:
            for leaf in self._text_leaves(rule):
                mask = 0
                for selector in leaf.fields:
                    mask |= 1 << selector_bits.setdefault(selector, len(selector_bits))
                self.leaf_masks[id(leaf)] = mask
                if isinstance(leaf, KeywordLeaf):
                    self.keyword_ids[id(leaf)] = len(keyword_leaves)
                    keyword_leaves.append(leaf)
                elif isinstance(leaf, RegexLeaf):
                    for pattern in leaf.patterns:
                        if id(pattern) not in self.pattern_ids:
                            self.pattern_ids[id(pattern)] = len(patterns)
                            patterns.append(pattern)
        self.matcher = Matcher(
            keyword_leaves, patterns, use_hyperscan=options.use_hyperscan, cache=options.prefilter
        )
        self.prefilter = options.prefilter if self.matcher.uses_hyperscan else None
        self.classifier = options.classifier
        if self.classifier is None:
            for rule in self.rules:
                if any(isinstance(leaf, MlLeaf) for leaf in self._text_leaves(rule)):
                    raise ValueError(
                        f"rule {rule.id} has an 'ml' condition but the engine runs without the "
                        "ML classifier (LLMTRAIL_ML=false?)"
                    )
        if self.prefilter is not None:
            self.prefilter.prepare(p.source for p in patterns)
        self.plans = {kind: self._plan(kind, selector_bits) for kind in KINDS}
        self.regex_timeouts = 0

    @staticmethod
    def _text_leaves(rule: Rule) -> list[TextLeaf]:
        out: list[TextLeaf] = []
        for root in (rule.condition, *rule.exceptions):
            out.extend(n for n in iter_nodes(root) if isinstance(n, TextLeaf))
        return out

    def _plan(self, kind: str, selector_bits: Mapping[str, int]) -> _Plan:
        rules = tuple(r for r in self.rules if kind in r.applies_to)
        selectors: dict[str, int] = {}
        always: set[int] = set()
        by_keyword: dict[int, list[int]] = {}
        by_pattern: dict[int, list[int]] = {}
        by_signal: dict[str, list[int]] = {}
        pattern_ids: set[int] = set()
        for index, rule in enumerate(rules):
            for leaf in self._text_leaves(rule):
                for selector in leaf.fields:
                    selectors[selector] = selector_bits[selector]
                if isinstance(leaf, RegexLeaf):
                    pattern_ids.update(self.pattern_ids[id(p)] for p in leaf.patterns)
            needed = requirement(rule.condition)
            if needed is None:
                always.add(index)
                continue
            for leaf in needed:
                if isinstance(leaf, KeywordLeaf):
                    by_keyword.setdefault(self.keyword_ids[id(leaf)], []).append(index)
                elif isinstance(leaf, RegexLeaf):
                    for pattern in leaf.patterns:
                        by_pattern.setdefault(self.pattern_ids[id(pattern)], []).append(index)
                else:
                    by_signal.setdefault(leaf.signal, []).append(index)
        covered = self.matcher.hyperscan_ids
        gates = [(pid, self.matcher.patterns[pid].gate) for pid in sorted(pattern_ids - covered)]
        return _Plan(
            rules=rules,
            selectors=tuple((split_selector(s), 1 << bit) for s, bit in selectors.items()),
            always=frozenset(always),
            by_keyword={k: tuple(v) for k, v in by_keyword.items()},
            by_pattern={k: tuple(v) for k, v in by_pattern.items()},
            by_signal={k: tuple(v) for k, v in by_signal.items()},
            unconditional=tuple(pid for pid, g in gates if g.kind != "ac"),
        )

    # ------------------------------------------------------------ scanning

    def _fields(self, event: Mapping[str, Any], plan: _Plan) -> list[_Field]:
        found: dict[str, _Field] = {}
        limit = self.options.max_field_chars
        for segments, bit in plan.selectors:
            if event.get(segments[0]) is None:  # most events lack most selectors' roots
                continue
            for path, text in strings_at(event, segments):
                existing = found.get(path)
                if existing is not None:
                    existing.mask |= bit
                elif text and len(found) < self.options.max_fields:
                    found[path] = _Field(path, text[:limit], bit)
        return list(found.values())

    def _prepare(self, item: _Field, plan: _Plan) -> frozenset[int]:
        """Normalise and pre-scan one field; return the rule indexes it triggers."""
        known = plan.recent.get(item.text)
        if known is not None:
            item.norm, item.scans, item.candidates = known.norm, known.scans, known.candidates
            return known.triggered
        triggered = self._prepare_anew(item, plan)
        assert item.norm is not None
        plan.recent.offer(item.text, _Prepared(item.norm, item.scans, item.candidates, triggered))
        return triggered

    def _prepare_anew(self, item: _Field, plan: _Plan) -> frozenset[int]:
        norm = normalise(item.text, limits=self.options.limits)
        item.norm = norm
        triggered: set[int] = set()
        for source in norm.sources:
            scan = self.matcher.keywords(source.kw.text)
            candidates = self.matcher.candidates(
                source, scan.gated, plan.unconditional, scan.present
            )
            item.scans.append(scan)
            item.candidates.append(candidates)
            for keyword_id in scan.spans:
                triggered.update(plan.by_keyword.get(keyword_id, ()))
            for pattern_id in candidates:
                triggered.update(plan.by_pattern.get(pattern_id, ()))
        for signal in norm.signals:
            triggered.update(plan.by_signal.get(signal, ()))
        return frozenset(triggered)

    def scan_many(self, events: Sequence[Mapping[str, Any]], salt: bytes) -> list[list[Finding]]:
        """Findings per event; the classifier, if any, scores the whole batch in one pass."""
        results: list[list[Finding]] = []
        asks: list[tuple[int, tuple[str, Normalised]]] = []
        for index, event in enumerate(events):
            findings, fields = self._scan(event, salt)
            results.append(findings)
            if self.classifier is not None:
                asks.extend((index, item) for item in _ml_fields(fields))
        if asks and self.classifier is not None:
            for index, paths, found in _classify(self.classifier, asks):
                results[index] = _with_ml(results[index], paths, found)
        return results

    def _scan(self, event: Mapping[str, Any], salt: bytes) -> tuple[list[Finding], list[_Field]]:
        if not isinstance(event, Mapping):
            return [], []
        kind = event.get("kind")
        plan = self.plans.get(kind) if isinstance(kind, str) else None
        if plan is None or not plan.rules:
            return [], []
        fields = self._fields(event, plan)
        triggered = set(plan.always)
        # Fields often repeat a text (prompt.text and the last message's content):
        # normalise and pre-scan each distinct text once.
        prepared: dict[str, _Field] = {}
        for item in fields:
            twin = prepared.get(item.text)
            if twin is None:
                prepared[item.text] = item
                triggered |= self._prepare(item, plan)
            else:
                item.norm, item.scans, item.candidates = twin.norm, twin.scans, twin.candidates
        if not triggered:
            return [], fields
        evaluation = _Evaluation(self, event, fields)
        findings: list[Finding] = []
        for index in sorted(triggered):
            rule = plan.rules[index]
            hits = evaluation.node(rule.condition)
            if hits is None:
                continue
            if any(evaluation.node(e) is not None for e in rule.exceptions):
                continue
            findings.append(_finding(rule, hits, fields, salt))
        return findings, fields


@dataclass(frozen=True, slots=True)
class MlAlone:
    """Where the classifier may raise a finding without a rule: which labels, from what score."""

    roots: tuple[str, ...]
    labels: frozenset[str]
    min_score: float  # 0: the model's own threshold


# The classifier scores prompts and the content an agent reads. Wherever it
# agrees with a rule finding of its categories on the same field, that finding
# goes up one severity step. Alone it raises findings at severity low, and only
# where it is reliable enough: on tool results (indirect injection, where the
# rules are weakest) its prompt_injection label at the model's threshold; on
# prompts, where ordinary text trips it more often (3.9 % of never-seen benign
# prompts at the model's thresholds), either label from 0.97 (0.8 %; see
# docs/ml.md and bench/quality.py --ml --ml-min-score 0.97).
ML_ALONE = (
    MlAlone(("tool.result",), frozenset({"prompt_injection"}), 0.0),
    MlAlone(("prompt.text", "prompt.messages"), frozenset({"prompt_injection", "jailbreak"}), 0.97),
)
ML_CATEGORIES = frozenset({"prompt_injection", "jailbreak"})
ML_AGREES = "ml-agrees"
ML_ALONE_SEVERITY = "low"


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == root or path.startswith((f"{root}.", f"{root}[")) for root in roots)


@lru_cache(maxsize=4096)
def _alone_policy(path: str) -> MlAlone | None:
    return next((policy for policy in ML_ALONE if _under(path, policy.roots)), None)


def _ml_fields(fields: Sequence[_Field]) -> list[tuple[str, Normalised]]:
    """The (path, normalised text) of one event's fields the classifier scores."""
    return [
        (item.path, item.norm)
        for item in fields
        if item.norm is not None and _alone_policy(item.path) is not None
    ]


def _classify(
    classifier: Classifier, asks: Sequence[tuple[int, tuple[str, Normalised]]]
) -> Iterator[tuple[int, tuple[str, ...], list[Finding]]]:
    """(event index, paths, classifier findings) per distinct text of an event that has any.

    Each distinct text is scored once. Fields of one event with the same text
    share its normalisation (see ``_scan``), so they get one verdict, reported
    on the first of them.
    """
    groups: dict[tuple[int, int], tuple[int, list[str], Normalised]] = {}
    for index, (path, norm) in asks:
        key = (index, id(norm))  # recurring texts share a normalisation across events too
        group = groups.get(key)
        if group is None:
            groups[key] = (index, [path], norm)
        else:
            group[1].append(path)
    answers = classifier.findings_many([(paths[0], norm) for _, paths, norm in groups.values()])
    for (index, paths, _), found in zip(groups.values(), answers, strict=True):
        if found:
            yield index, tuple(paths), found


def _with_ml(findings: list[Finding], paths: tuple[str, ...], ml: list[Finding]) -> list[Finding]:
    """Fold the classifier's findings on one text (held by ``paths``) into the event's findings."""
    if not ml:
        return findings
    agreeing = [f for f in findings if f.field in paths and f.category in ML_CATEGORIES]
    if agreeing:
        return [_escalated(f) if f in agreeing else f for f in findings]
    policy = _alone_policy(paths[0])
    if policy is None:
        return findings
    alone = [
        replace(f, severity=ML_ALONE_SEVERITY)
        for f in ml
        if f.category in policy.labels and f.score >= policy.min_score
    ]
    return [*findings, *alone]


def _escalated(finding: Finding) -> Finding:
    """A rule finding the classifier agrees with: one severity step up, tagged."""
    step = min(SEVERITIES.index(finding.severity) + 1, len(SEVERITIES) - 1)
    return replace(finding, severity=SEVERITIES[step], tags=(*finding.tags, ML_AGREES))


class _Evaluation:
    """Lazy evaluation of condition trees for one event, with per-leaf caching."""

    def __init__(self, program: _Program, event: Mapping[str, Any], fields: list[_Field]) -> None:
        self.program = program
        self.event = event
        self.fields = fields
        self.cache: dict[int, list[Hit] | None] = {}
        self.timeout = program.options.regex_timeout
        self.selected: dict[int, list[tuple[int, _Field]]] = {}
        self.scanned: dict[int, bytes | None] = {}  # id(view) -> what a prefilter scans
        self.positions: dict[int, Utf8Positions] = {}  # id(view) -> its byte-to-character map
        # (pattern, leaf, view) -> accepted matches; fields sharing a text share its views
        self.matched: dict[tuple[int, int, int], list[tuple[int, int, str]]] = {}
        # selector segments -> the nodes they reach (value tests share selectors: tool.name)
        self.nodes: dict[tuple[str, ...], list[tuple[str, Any]]] = {}

    def node(self, node: Node) -> list[Hit] | None:
        if isinstance(node, AnyOf):
            for child in node.children:
                hits = self.node(child)
                if hits is not None:
                    return hits
            return None
        if isinstance(node, AllOf):
            collected: list[Hit] = []
            for child in node.children:
                hits = self.node(child)
                if hits is None:
                    return None
                collected.extend(hits)
            return collected
        if isinstance(node, NotOf):
            return None if self.node(node.child) is not None else []
        key = id(node)
        if key not in self.cache:
            if isinstance(node, ValueLeaf):
                self.cache[key] = self._values(node)
            elif isinstance(node, KeywordLeaf):
                self.cache[key] = self._keywords(node)
            elif isinstance(node, RegexLeaf):
                self.cache[key] = self._regexes(node)
            elif isinstance(node, MlLeaf):
                self.cache[key] = self._ml(node)
            elif isinstance(node, OverlapLeaf):
                self.cache[key] = self._overlap(node)
            else:
                self.cache[key] = self._signal(node)
        return self.cache[key]

    def _values(self, leaf: ValueLeaf) -> list[Hit] | None:
        segments = split_selector(leaf.selector)
        nodes = self.nodes.get(segments)
        if nodes is None:
            nodes = self.nodes[segments] = nodes_at(self.event, segments)
        test = leaf.test
        if test.exists is not None:  # presence alone: no need to walk the values
            if bool(nodes) is not test.exists:
                return None
            if len(nodes) == 1 and isinstance(nodes[0][1], str | int | float):
                path, value = nodes[0]  # a present scalar shows itself
                text = _as_text(value)
                return [Hit(-1, 0, len(text), path, 0.0, text)]
            return [Hit(-1, -1, -1, leaf.selector, 0.0)]
        values = values_of(nodes)[0]
        predicates = test.bind(self.event)
        if not test.met(values, predicates):
            return None
        if test.count:
            shown = f"{len(values)} values"
            return [Hit(-1, 0, len(shown), leaf.selector, 0.0, shown)]
        for path, value in leaves_of(nodes):
            if any(p(value) for p in predicates):  # the value to show as evidence
                text = _as_text(value)
                return [Hit(-1, 0, len(text), path, 0.0, text)]
        return [Hit(-1, -1, -1, leaf.selector, 0.0)]  # held on the whole list

    def _selected(self, leaf: Node) -> list[tuple[int, _Field]]:
        mask = self.program.leaf_masks[id(leaf)]
        selected = self.selected.get(mask)
        if selected is None:
            selected = [(i, f) for i, f in enumerate(self.fields) if f.mask & mask]
            self.selected[mask] = selected
        return selected

    def _keywords(self, leaf: KeywordLeaf) -> list[Hit] | None:
        keyword_id = self.program.keyword_ids[id(leaf)]
        hits: list[Hit] = []
        for index, item in self._selected(leaf):
            assert item.norm is not None
            for source, scan in zip(item.norm.sources, item.scans, strict=True):
                for start, end in scan.spans.get(keyword_id, ()):
                    span = source.kw.map.span(start, end)
                    hit = self._context(leaf.context, index, item, span, source.kw.text[start:end])
                    if hit is not None:
                        hits.append(hit)
        return hits or None

    def _regexes(self, leaf: RegexLeaf) -> list[Hit] | None:
        hits: list[Hit] = []
        seen: set[tuple[int, int, int]] = set()
        for index, item in self._selected(leaf):
            assert item.norm is not None
            sources = zip(item.norm.sources, item.scans, item.candidates, strict=True)
            for source, scan, candidates in sources:
                for pattern in leaf.patterns:
                    pattern_id = self.program.pattern_ids[id(pattern)]
                    if pattern_id not in candidates:
                        continue
                    for view in source.regex_views:
                        key = (pattern_id, id(leaf), id(view))
                        found = self.matched.get(key)
                        if found is None:
                            found = self.matched[key] = self._matches(
                                pattern, pattern_id, leaf, scan, view
                            )
                        for start, end, value in found:
                            span = view.map.span(start, end)
                            if (index, *span) in seen:
                                continue
                            seen.add((index, *span))
                            hit = self._context(leaf.context, index, item, span, value)
                            if hit is not None:
                                hits.append(hit)
        return hits or None

    def _matches(
        self,
        pattern: Pattern,
        pattern_id: int,
        leaf: RegexLeaf,
        scan: KeywordScan,
        view: View,
    ) -> list[tuple[int, int, str]]:
        """The pattern's matches in a view: where its prefilter or its start literals put
        them, in windows around its required literals, or everywhere."""
        compiled, text, timeout = pattern.compiled, view.text, self.timeout
        found: Iterator[Any]
        located = self._located(pattern, view)
        if located == []:
            return []
        if located is not None:
            found = _in_windows(compiled, text, located, pattern.reach or 0, timeout)
        elif view.from_kw is None:
            found = compiled.finditer(text, timeout=timeout)
        elif (starts := scan.starts(pattern_id) if pattern.gate.starts else None) is not None:
            found = _at_starts(compiled, text, view.from_kw, starts, timeout)
        elif (windows := _windows(pattern, scan, view.from_kw, len(text))) is not None:
            found = _in_windows(compiled, text, windows, pattern.reach or 0, timeout)
        else:
            found = compiled.finditer(text, timeout=timeout)
        return self._collect(pattern, leaf, text, found)

    def _located(self, pattern: Pattern, view: View) -> list[tuple[int, int]] | None:
        """Windows of the view that hold every match of the pattern ([] if it has none),
        or None when its prefilter cannot narrow the run down."""
        prefilter = self.program.prefilter
        if prefilter is None or pattern.reach is None or not prefilter.ready(pattern.source):
            return None
        key = id(view)
        if key not in self.scanned:
            self.scanned[key] = scannable(view.text)
        data = self.scanned[key]
        if data is None:
            return None
        ends = prefilter.match_ends(pattern.source, data, MAX_MATCH_ENDS)
        if ends is None:
            return None
        if not ends:
            return []
        if len(data) != len(view.text):  # non-ASCII text: byte offsets to characters
            positions = self.positions.get(key)
            if positions is None:
                positions = self.positions[key] = Utf8Positions(view.text)
            ends = [positions.chars(end) for end in ends]
        width = pattern.max_width if pattern.max_width is not None else REGEX_WINDOW
        return _merged(((end - width, end) for end in ends), len(view.text))

    def _accept(self, match: Any, pattern: Pattern, leaf: RegexLeaf) -> tuple[int, int] | None:
        """The evidence span of a match, or None if the leaf's validator rejects it."""
        start, end = match.span(pattern.evidence_group)
        if start < 0:
            start, end = match.span()
        if leaf.validator is not None:
            checked = match.group(pattern.check_group) or match.group()
            if not leaf.validator.check(checked):
                return None
        return start, end

    def _collect(
        self, pattern: Pattern, leaf: RegexLeaf, text: str, matches: Iterator[Any]
    ) -> list[tuple[int, int, str]]:
        """Accepted hits of the matches, at most ``MAX_HITS_PER_PATTERN``, within the timeout."""
        out: list[tuple[int, int, str]] = []
        try:
            for match in matches:
                span = self._accept(match, pattern, leaf)
                if span is not None:
                    out.append((*span, text[span[0] : span[1]]))
                    if len(out) >= MAX_HITS_PER_PATTERN:
                        break
        except TimeoutError:
            self.program.regex_timeouts += 1
        return out

    def _ml(self, leaf: MlLeaf) -> list[Hit] | None:
        """The best window of each field (any of its sources) that scores at least the minimum."""
        classifier = self.program.classifier
        assert classifier is not None  # checked when the program was built
        floor = classifier.thresholds[leaf.label] if leaf.min_score is None else leaf.min_score
        hits: list[Hit] = []
        for index, item in self._selected(leaf):
            assert item.norm is not None
            sources = item.norm.sources
            explained = classifier.explain_views([source.kw.text for source in sources])
            best = max(range(len(sources)), key=lambda i: explained[i].scores[leaf.label])
            score = explained[best].scores[leaf.label]
            if score >= floor:
                start, end = sources[best].kw.map.span(*explained[best].windows[leaf.label])
                hits.append(Hit(index, start, end, item.text[start:end], 0.0))
        return hits or None

    def _overlap(self, leaf: OverlapLeaf) -> list[Hit] | None:
        """The longest run each field shares with a reference text (one per field)."""
        limit = self.program.options.max_field_chars
        references = [
            _reference(value[:limit], leaf.min_words)
            for value in values_at(self.event, leaf.reference)[0]
            if isinstance(value, str)
        ]
        hits: list[Hit] = []
        for index, item in self._selected(leaf):
            assert item.norm is not None
            kw = item.norm.sources[0].kw  # the field's own text, folded
            runs = [r for ref in references if (r := shared_run(kw.text, ref))]
            if runs:
                run = max(runs, key=lambda r: r.words)
                start, end = kw.map.span(run.start, run.end)
                hits.append(Hit(index, start, end, item.text[start:end], 0.0))
        return hits or None

    def _signal(self, leaf: SignalLeaf) -> list[Hit] | None:
        hits: list[Hit] = []
        for index, item in self._selected(leaf):
            assert item.norm is not None
            for start, end in item.norm.signals.get(leaf.signal, ()):
                hits.append(Hit(index, start, end, item.text[start:end], 0.0))
        return hits or None

    @staticmethod
    def _context(
        context: Context | None, index: int, item: _Field, span: tuple[int, int], value: str
    ) -> Hit | None:
        start, end = span
        if context is None:
            return Hit(index, start, end, value, 0.0)
        window = item.text[max(0, start - context.window) : end + context.window]
        # The value's own JSON key reads as the words before it ({"bsn": "..."} like
        # "BSN: ..."), and an underscore separates words (tax_id, aadhaar_no).
        keyed = normalise(f"{field_key(item.path)} {window}", limits=_NO_PAYLOADS)
        folded = keyed.sources[0].kw.text.replace("_", " ")
        if context.absent is not None and context.absent.search(folded):
            return None
        if context.near is None:
            return Hit(index, start, end, value, 0.0)
        if context.near.search(folded):
            return Hit(index, start, end, value, 0.0 if context.require else context.boost)
        return None if context.require else Hit(index, start, end, value, 0.0)


def _at_starts(
    compiled: Any, text: str, from_kw: SpanMap, kw_starts: list[int], timeout: float
) -> Iterator[Any]:
    """The same matches as ``finditer``, trying the regex only where a start literal is.

    Every match begins with one of the pattern's start literals, so trying each
    such place left to right and skipping overlaps finds exactly the
    non-overlapping matches a full ``finditer`` would.
    """
    resume = 0
    for pos in sorted({from_kw.span(k, k + 1)[0] for k in kw_starts}):
        if pos < resume:
            continue
        match = compiled.match(text, pos, timeout=timeout)
        if match is not None:
            resume = match.end()
            yield match


def _in_windows(
    compiled: Any, text: str, windows: list[tuple[int, int]], reach: int, timeout: float
) -> Iterator[Any]:
    """Matches found inside windows, left to right.

    Each window is searched with ``reach`` more characters after it, so the
    pattern's look-aheads and word boundaries read what follows a match. A
    match that ends so close to the searched text's end that they may have
    been cut short is matched again from its start over the whole text: the
    window's edge never shapes a match.
    """
    resume = 0
    size = len(text)
    for low, high in windows:
        stop = min(size, high + reach)
        for found in compiled.finditer(text, max(low, resume), stop, timeout=timeout):
            match = found
            if found.end() + reach >= stop and stop < size:
                match = compiled.match(text, found.start(), timeout=timeout)
                if match is None:
                    continue
            resume = match.end()
            yield match


def _windows(
    pattern: Pattern, scan: KeywordScan, from_kw: SpanMap, size: int
) -> list[tuple[int, int]] | None:
    """Where in a view the pattern can match, or None to run it over the whole view.

    Every match holds a literal of each gate set; windows are taken around the
    occurrences of the set seen least often, ``max_width`` wide on each side
    (``REGEX_WINDOW`` when the pattern's width is unbounded), and merged. A
    pattern whose look-aheads read without bound runs over the whole view.
    """
    gate = pattern.gate
    if pattern.reach is None:
        return None
    if gate.kind == "ac":
        sets, recorded = gate.sets, True
    elif gate.kind == "substring":
        sets, recorded = gate.checks, False
    else:
        return None
    width = pattern.max_width if pattern.max_width is not None else REGEX_WINDOW
    width = min(width, REGEX_WINDOW)
    best: list[tuple[int, int]] | None = None
    for alternatives in sets:
        spans: list[tuple[int, int]] = []
        for literal in alternatives:
            ends = scan.literal_ends(literal, recorded)
            if len(ends) > MAX_LITERAL_ENDS:
                break
            spans.extend((end - len(literal) + 1, end + 1) for end in ends)
        else:
            if best is None or len(spans) < len(best):
                best = spans
    if best is None:
        return None
    return _merged(
        ((start - width, end + width) for start, end in (from_kw.span(s, e) for s, e in best)),
        size,
    )


def _merged(windows: Iterable[tuple[int, int]], size: int) -> list[tuple[int, int]] | None:
    """The windows clipped to the text, sorted and merged; None if they cover most of it
    (one run over the whole text then costs less)."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(windows):
        low, high = max(0, start), min(size, end)
        if merged and low <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    if sum(high - low for low, high in merged) * 2 > size:
        return None
    return merged


# Where event fields hold the caller's own structures, whose keys name the values.
FREE_FORM_ROOTS = ("tool.arguments", "tool.result", "tags")
_KEY = regex.compile(r"\.([^.\[\]]+)(?:\[\d+\])*$")
_CAMEL = regex.compile(r"(?<=\p{Ll})(?=\p{Lu})")


def field_key(path: str) -> str:
    """The words of the key holding a value in a caller's structure, else "".

    ``tool.arguments.customer.taxId`` gives "tax Id", ``tool.result[2].aadhaar_no``
    "aadhaar no"; ``prompt.text`` and ``tool.result[0]`` give "" (no key of the caller's).
    """
    for root in FREE_FORM_ROOTS:
        if path != root and _under(path, (root,)):
            match = _KEY.search(path, len(root))
            if match is None:
                return ""
            words: str = _CAMEL.sub(" ", match.group(1))
            return words.replace("_", " ").replace("-", " ")
    return ""


def _reference(text: str, size: int) -> Reference:
    """A reference text's folded word runs; kept when short enough, as system prompts recur."""
    if len(text) > MAX_KEPT_REFERENCE:
        return _build_reference(text, size)
    return _kept_reference(text, size)


def _build_reference(text: str, size: int) -> Reference:
    return reference(normalise(text, limits=_NO_PAYLOADS).sources[0].kw.text, size)


# About 30 bytes of hashes per character: 32 kept references of 16,000 characters hold
# under 16 MB (system prompts are mostly a few thousand characters).
_kept_reference = lru_cache(maxsize=32)(_build_reference)


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _finding(rule: Rule, hits: list[Hit], fields: Sequence[_Field], salt: bytes) -> Finding:
    text_hits = sorted({h for h in hits if h.field >= 0}, key=lambda h: (h.field, h.start, h.end))
    evidence: list[Evidence] = []
    if text_hits:
        first = text_hits[0].field
        in_field: list[Hit] = []
        for hit in text_hits:
            if hit.field == first and all(
                (h.start, h.end) != (hit.start, hit.end) for h in in_field
            ):
                in_field.append(hit)
        text = fields[first].text
        spans = [(h.start, h.end) for h in in_field]
        for hit in in_field[:MAX_EVIDENCE]:
            evidence.append(
                Evidence(
                    hit.start,
                    hit.end,
                    excerpt(text, hit.start, hit.end, masked=rule.mask, other_spans=spans),
                    fingerprint(hit.value, salt) if rule.mask else None,
                )
            )
        field_path = fields[first].path
    else:
        value_hit = next((h for h in hits if h.field < 0), None)
        field_path = value_hit.value if value_hit is not None else ""
        if value_hit is not None and value_hit.start >= 0:
            shown = value_hit.witness
            evidence.append(
                Evidence(
                    0,
                    len(shown),
                    excerpt(shown, 0, len(shown), masked=rule.mask),
                    fingerprint(shown, salt) if rule.mask else None,
                )
            )
    boost = max((h.boost for h in hits), default=0.0)
    return Finding(
        rule_id=rule.id,
        title=rule.title,
        severity=rule.severity,
        category=rule.category,
        owasp=rule.owasp,
        detector="pattern",
        field=field_path,
        evidence=tuple(evidence),
        score=round(min(1.0, rule.score + boost), 4),
        tags=rule.tags,
    )


@dataclass(frozen=True, slots=True)
class _Options:
    max_field_chars: int
    max_fields: int
    regex_timeout: float
    use_hyperscan: bool
    include_disabled: bool
    limits: Limits
    prefilter: PrefilterBank
    classifier: Classifier | None


class Engine:
    """Scan Event v1 mappings against a compiled rule set.

    ``use_hyperscan``: None picks Hyperscan when it is installed; False forces
    the pure-Python prefilter. With Hyperscan, each regex also gets its own
    prefilter database (see :mod:`detectors.prefilter`), built in the
    background by ``prefilter`` (the process-wide bank by default); scans
    before it is ready give the same findings, only slower.
    ``include_disabled`` also runs rules with ``enabled: false`` (used by
    ``rules test``). ``classifier``: the ML injection/jailbreak model, which
    raises findings on tool results and escalates agreeing rule findings on
    prompts (see ``ML_ALONE``). Thread-safe: ``swap`` builds
    the new program completely, then replaces one reference; a scan uses the
    program it started with.
    """

    def __init__(
        self,
        ruleset: RuleSet,
        *,
        salt: bytes = DEFAULT_SALT,
        max_field_chars: int = DEFAULT_MAX_FIELD_CHARS,
        max_fields: int = DEFAULT_MAX_FIELDS,
        regex_timeout: float = DEFAULT_REGEX_TIMEOUT,
        use_hyperscan: bool | None = None,
        include_disabled: bool = False,
        limits: Limits | None = None,
        prefilter: PrefilterBank | None = None,
        classifier: Classifier | None = None,
    ) -> None:
        self._salt = salt
        self._options = _Options(
            max_field_chars=max_field_chars,
            max_fields=max_fields,
            regex_timeout=regex_timeout,
            use_hyperscan=hyperscan_available() if use_hyperscan is None else use_hyperscan,
            include_disabled=include_disabled,
            limits=limits or Limits(),
            prefilter=prefilter or SHARED,
            classifier=classifier,
        )
        self._program = _Program(ruleset, self._options)

    @property
    def ruleset(self) -> RuleSet:
        return self._program.ruleset

    @property
    def active_rules(self) -> frozenset[str]:
        """Ids of the rules this engine runs (enabled ones, or all with include_disabled)."""
        return frozenset(rule.id for rule in self._program.rules)

    @property
    def uses_hyperscan(self) -> bool:
        return self._program.matcher.uses_hyperscan

    @property
    def regex_timeouts(self) -> int:
        """Regex runs cut short by ``regex_timeout`` since the last swap."""
        return self._program.regex_timeouts

    def warm(self, timeout: float | None = None) -> bool:
        """Wait until the per-regex prefilters are built (False on timeout; True without them)."""
        program = self._program
        return program.prefilter is None or program.prefilter.wait(timeout)

    def swap(self, ruleset: RuleSet) -> None:
        """Compile ``ruleset`` and make it the one every later scan uses."""
        self._program = _Program(ruleset, self._options)

    def scan(self, event: Mapping[str, Any]) -> list[Finding]:
        return self._program.scan_many([event], self._salt)[0]

    def scan_batch(self, events: Sequence[Mapping[str, Any]]) -> list[list[Finding]]:
        return self._program.scan_many(events, self._salt)
