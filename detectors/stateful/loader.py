"""Load and validate stateful rule files (``llmtrail.stateful/v1``) and suppression lists.

Same strictness and error format as the single-event loader (whose checks
for ids, enums, selectors and ``selector|modifier`` value tests are reused
by subclassing it): every problem in every file is collected as
``file:line:col: rule-id: message`` and raised at once in one
:class:`~detectors.errors.RuleSetError`. See docs/stateful.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from detectors.errors import RuleSetError
from detectors.loader import _expand, _Loader, _suggest, to_python
from detectors.model import CATEGORIES, KINDS, ValueLeaf
from detectors.modifiers import ValueTest
from detectors.stateful.model import (
    AGGREGATES,
    KIND_IDS,
    MEASURES,
    NORMALISERS,
    PROFILE_CHECKS,
    SCHEMA,
    SIMILARITIES,
    SUPPRESSIONS_SCHEMA,
    BaselineSpec,
    CampaignSpec,
    DistinctSpec,
    FindingFilter,
    HygienePolicy,
    Predicate,
    ProfileSpec,
    RateLimit,
    Scenario,
    SequenceSpec,
    Spec,
    StatefulRule,
    StatefulRuleSet,
    Step,
    Suppression,
    ThresholdSpec,
)
from detectors.stateful.times import event_time, format_time, parse_duration
from detectors.yamltree import Loc, YMap, YNode, YScalar, YSeq, describe

TOP_KEYS = ("schema", "tool_categories", "hygiene", "rules")
COMMON_REQUIRED = ("id", "title", "description", "severity", "category", "owasp", "kind", "by",
                   "examples")
COMMON_OPTIONAL = ("match", "dedup", "rate_limit", "enabled", "tags", "score")
KIND_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # required, optional
    "threshold": (("window", "at_least"), ("mode",)),
    "distinct": (("field", "window", "at_least"), ("normalise",)),
    "sequence": (("steps", "within"), ("join",)),
    "baseline": (("aggregate",), ("value", "measure", "bucket", "above", "drift", "exceeds",
                                  "warmup", "alpha", "min_samples", "min_value",
                                  "late_buckets")),
    "profile": (("check",), ()),
    "campaign": (("window", "users_at_least"), ("field", "similarity", "min_chars")),
}
PREDICATE_KEYS = ("kind", "finding", "no_finding", "tool_category", "where")
STEP_KEYS = ("name", "times", *PREDICATE_KEYS)
FINDING_KEYS = ("rule", "category", "detector", "field")
HYGIENE_KEYS = ("rules", "by", "dedup", "rate_limit")
RATE_KEYS = ("max", "per")
SCENARIO_KEYS = ("name", "users", "events")
SUPPRESSION_KEYS = ("rule", "user", "service", "until", "reason")
# closed buckets a baseline key keeps open for late events (a backlog replayed by
# several workers reaches a key out of order); each costs one aggregate of state
DEFAULT_LATE_BUCKETS = 24
MAX_LATE_BUCKETS = 168
DETECTORS = ("pattern", "ml", "anomaly", "correlation")
MODES = ("sliding", "tumbling")
MAX_WINDOW = 90 * 86400.0
SCENARIO_START = "2026-01-05T09:00:00Z"  # a Monday, 09:00 UTC
STATEFUL_UPGRADE = (
    f"this engine reads '{SCHEMA}'; set 'schema: {SCHEMA}' and check the file with "
    "'llmtrail rules lint'"
)


class _StatefulLoader(_Loader):
    def __init__(self) -> None:
        super().__init__()
        self.category_refs: list[tuple[str, Loc, str | None]] = []

    # ------------------------------------------------------------ small values

    def duration(self, node: YNode, what: str, rule_id: str | None) -> float | None:
        text = node.value if isinstance(node, YScalar) and isinstance(node.value, str) else None
        seconds = parse_duration(text) if text is not None else None
        if seconds is None:
            self.error(node.loc, rule_id, f"{what} must be a duration such as 90s, 10m, 1h or "
                       f"7d, got {describe(node) if text is None else repr(text)}")
            return None
        if not 0 < seconds <= MAX_WINDOW:
            self.error(node.loc, rule_id, f"{what} must be more than 0 and at most 90d")
            return None
        return seconds

    def path(self, node: YNode, what: str, rule_id: str | None) -> tuple[str, ...] | None:
        text = self.string(node, what, rule_id)
        if text is None or self.selector(text, node.loc, rule_id) is None:
            return None
        return tuple(text.split("."))

    def names(
        self, node: YNode, what: str, rule_id: str | None, options: Sequence[str] | None = None
    ) -> tuple[str, ...] | None:
        """A string or a list of strings (checked against ``options`` when given)."""
        items = node.items if isinstance(node, YSeq) else (node,)
        out: list[str] = []
        for item in items:
            value = (self.enum(item, what, options, rule_id) if options is not None
                     else self.string(item, what, rule_id))
            if value is None:
                return None
            out.append(value)
        if not out:
            self.error(node.loc, rule_id, f"{what} is empty")
            return None
        return tuple(out)

    def rate_limit(self, node: YNode, rule_id: str | None) -> RateLimit | None:
        mapping = self.expect_map(node, "'rate_limit'", rule_id)
        if mapping is None:
            return None
        self.check_keys(mapping, RATE_KEYS, "'rate_limit'", rule_id)
        limit = per = None
        if (max_node := mapping.get("max")) is None or (per_node := mapping.get("per")) is None:
            self.error(mapping.loc, rule_id, "'rate_limit' needs 'max' and 'per'")
            return None
        limit = self.count(max_node, "'rate_limit.max'", rule_id, 1)
        per = self.duration(per_node, "'rate_limit.per'", rule_id)
        if limit is None or per is None:
            return None
        return RateLimit(limit, per)

    # ------------------------------------------------------------ predicates

    def finding_filter(self, node: YNode, what: str, rule_id: str | None) -> FindingFilter | None:
        mapping = self.expect_map(node, what, rule_id)
        if mapping is None:
            return None
        self.check_keys(mapping, FINDING_KEYS, what, rule_id)
        if not mapping.entries:
            self.error(mapping.loc, rule_id, f"{what} needs at least one of "
                       f"{', '.join(FINDING_KEYS)}")
            return None
        parts: dict[str, tuple[str, ...]] = {}
        ok = True
        for key, options in (("rule", None), ("category", CATEGORIES), ("detector", DETECTORS),
                             ("field", None)):
            value = mapping.get(key)
            if value is None:
                continue
            got = self.names(value, f"'{what[1:-1]}.{key}'", rule_id, options)
            ok = ok and got is not None
            parts[key] = got or ()
        if not ok:
            return None
        return FindingFilter(frozenset(parts.get("rule", ())), frozenset(parts.get("category", ())),
                             frozenset(parts.get("detector", ())), parts.get("field", ()))

    def where(
        self, node: YNode, rule_id: str | None
    ) -> tuple[tuple[tuple[str, ...], ValueTest], ...] | None:
        mapping = self.expect_map(node, "'where'", rule_id)
        if mapping is None:
            return None
        tests = []
        for key, value in mapping.entries:
            leaf = self.value_leaf(key, value, rule_id)
            if not isinstance(leaf, ValueLeaf):
                return None
            tests.append((tuple(leaf.selector.split(".")), leaf.test))
        return tuple(tests)

    def predicate(self, mapping: YMap, rule_id: str | None) -> Predicate | None:
        before = len(self.errors)
        get = mapping.get
        kinds = self.names(n, "'kind'", rule_id, KINDS) if (n := get("kind")) else ()
        finding = self.finding_filter(n, "'finding'", rule_id) if (n := get("finding")) else None
        no_finding = (self.finding_filter(n, "'no_finding'", rule_id)
                      if (n := get("no_finding")) else None)
        categories: tuple[str, ...] | None = ()
        if (n := get("tool_category")) is not None:
            categories = self.names(n, "'tool_category'", rule_id)
            for item in n.items if isinstance(n, YSeq) else (n,):
                if isinstance(item, YScalar) and isinstance(item.value, str):
                    self.category_refs.append((item.value, item.loc, rule_id))
        where = self.where(n, rule_id) if (n := get("where")) is not None else ()
        if len(self.errors) > before:
            return None
        return Predicate(frozenset(kinds or ()), finding, no_finding,
                         frozenset(categories or ()), where or ())

    # ------------------------------------------------------------ kinds

    def spec(self, kind: str, mapping: YMap, rule_id: str | None) -> Spec | None:
        get = mapping.get
        before = len(self.errors)
        required, _ = KIND_KEYS[kind]
        for key in required:
            if get(key) is None:
                self.error(mapping.loc, rule_id, f"missing required key {key!r} for kind {kind!r}")
        if len(self.errors) > before:
            return None

        def need(key: str, convert: Callable[[YNode], Any]) -> Any:
            node = get(key)
            assert node is not None
            return convert(node)

        def opt(key: str, convert: Callable[[YNode], Any], default: Any) -> Any:
            node = get(key)
            return default if node is None else convert(node)

        spec: Spec | None = None
        if kind == "threshold":
            window = need("window", lambda n: self.duration(n, "'window'", rule_id))
            at_least = need("at_least", lambda n: self.count(n, "'at_least'", rule_id, 2))
            mode = opt("mode", lambda n: self.enum(n, "'mode'", MODES, rule_id), "sliding")
            spec = ThresholdSpec(window, at_least, mode == "tumbling")
        elif kind == "distinct":
            field = need("field", lambda n: self.path(n, "'field'", rule_id))
            window = need("window", lambda n: self.duration(n, "'window'", rule_id))
            at_least = need("at_least", lambda n: self.count(n, "'at_least'", rule_id, 2))
            normalise = opt("normalise",
                            lambda n: self.enum(n, "'normalise'", NORMALISERS, rule_id), None)
            spec = DistinctSpec(field, window, at_least, normalise)
        elif kind == "sequence":
            steps = need("steps", lambda n: self.steps(n, rule_id))
            within = need("within", lambda n: self.duration(n, "'within'", rule_id))
            join = opt("join", lambda n: self.enum(n, "'join'", ("fingerprint",), rule_id), None)
            if join and steps and any(s.predicate.finding is None for s in steps):
                self.error(get("join").loc, rule_id,  # type: ignore[union-attr]
                           "'join: fingerprint' needs a 'finding' test in every step")
            spec = SequenceSpec(steps, within, join == "fingerprint")
        elif kind == "baseline":
            spec = self.baseline(mapping, rule_id, opt)
        elif kind == "profile":
            spec = ProfileSpec(need("check", lambda n: self.enum(n, "'check'", PROFILE_CHECKS,
                                                                 rule_id)))
        else:
            spec = CampaignSpec(
                opt("field", lambda n: self.path(n, "'field'", rule_id), ("prompt", "text")),
                opt("similarity", lambda n: self.enum(n, "'similarity'", SIMILARITIES, rule_id),
                    "exact"),
                need("window", lambda n: self.duration(n, "'window'", rule_id)),
                need("users_at_least", lambda n: self.count(n, "'users_at_least'", rule_id, 2)),
                opt("min_chars", lambda n: self.count(n, "'min_chars'", rule_id, 1), 20),
            )
        return None if len(self.errors) > before else spec

    def steps(self, node: YNode, rule_id: str | None) -> tuple[Step, ...] | None:
        seq = self.expect_list(node, "'steps'", rule_id)
        if seq is None:
            return None
        if len(seq.items) < 2:
            self.error(seq.loc, rule_id, "'steps' needs at least two steps")
            return None
        steps: list[Step | None] = []
        for index, item in enumerate(seq.items):
            mapping = self.expect_map(item, "a step", rule_id)
            if mapping is None:
                steps.append(None)
                continue
            self.check_keys(mapping, STEP_KEYS, "a step", rule_id)
            if not any(mapping.get(k) is not None for k in PREDICATE_KEYS):
                self.error(mapping.loc, rule_id, f"a step needs at least one of "
                           f"{', '.join(PREDICATE_KEYS)}")
                steps.append(None)
                continue
            name = self.string(n, "'name'", rule_id) if (n := mapping.get("name")) else None
            times = self.count(n, "'times'", rule_id, 1) if (n := mapping.get("times")) else 1
            predicate = self.predicate(mapping, rule_id)
            ok = predicate is not None and times is not None
            steps.append(Step(name or f"step {index + 1}", predicate, times)  # type: ignore[arg-type]
                         if ok else None)
        if any(step is None for step in steps):
            return None
        return tuple(step for step in steps if step is not None)

    def baseline(
        self, mapping: YMap, rule_id: str | None, opt: Callable[[str, Callable[[YNode], Any], Any],
                                                                Any]
    ) -> BaselineSpec | None:
        before = len(self.errors)
        aggregate_node = mapping.get("aggregate")
        assert aggregate_node is not None
        aggregate = self.enum(aggregate_node, "'aggregate'", AGGREGATES, rule_id)
        value = opt("value", lambda n: self.path(n, "'value'", rule_id), None)
        measure = opt("measure", lambda n: self.enum(n, "'measure'", MEASURES, rule_id), "value")
        bucket = opt("bucket", lambda n: self.duration(n, "'bucket'", rule_id), None)

        def ratio(key: str) -> float | None:
            value: float | None = opt(
                key, lambda n: self.number(n, f"'{key}'", rule_id, 0, 1e12), None)
            return value

        above, drift, exceeds = ratio("above"), ratio("drift"), ratio("exceeds")
        comparisons = [k for k in ("above", "drift", "exceeds") if mapping.get(k) is not None]
        if len(comparisons) != 1:
            self.error(mapping.loc, rule_id, "a baseline rule needs exactly one of 'above', "
                       f"'drift' or 'exceeds', got {', '.join(comparisons) or 'none'}")
        if aggregate is not None and aggregate != "count" and mapping.get("value") is None:
            self.error(mapping.loc, rule_id, f"aggregate {aggregate!r} needs a 'value' selector")
        if aggregate == "each" and mapping.get("bucket") is not None:
            self.error(mapping.key_loc("bucket"), rule_id, "aggregate 'each' takes no 'bucket'")
        if aggregate not in (None, "each") and mapping.get("bucket") is None:
            self.error(mapping.loc, rule_id, f"aggregate {aggregate!r} needs a 'bucket' duration")
        warmup = opt("warmup", lambda n: self.count(n, "'warmup'", rule_id, 0),
                     50 if aggregate == "each" else 24)
        alpha = opt("alpha", lambda n: self.number(n, "'alpha'", rule_id, 0.001, 1), 0.1)
        min_samples = opt("min_samples", lambda n: self.count(n, "'min_samples'", rule_id, 1), 1)
        min_value = opt("min_value", lambda n: self.number(n, "'min_value'", rule_id, 0, 1e12),
                        0.0)
        late = opt("late_buckets",
                   lambda n: self.count(n, "'late_buckets'", rule_id, 0, MAX_LATE_BUCKETS),
                   DEFAULT_LATE_BUCKETS)
        if aggregate == "each" and mapping.get("late_buckets") is not None:
            self.error(mapping.key_loc("late_buckets"), rule_id,
                       "aggregate 'each' takes no 'late_buckets'")
        if len(self.errors) > before:
            return None
        return BaselineSpec(value, measure, str(aggregate), float(bucket or 0.0), above, drift,
                            exceeds, warmup, alpha, min_samples, min_value, late)

    # ------------------------------------------------------------ examples

    def scenarios(self, node: YNode, rule_id: str | None) -> list[Scenario]:
        mapping = self.expect_map(node, "'examples'", rule_id)
        if mapping is None:
            return []
        self.check_keys(mapping, ("fire", "no_fire"), "'examples'", rule_id)
        out: list[Scenario] = []
        for key in ("fire", "no_fire"):
            value = mapping.get(key)
            seq = self.expect_list(value, f"'examples.{key}'", rule_id) if value else None
            for item in seq.items if seq is not None else ():
                scenario = self.scenario(item, "fire" if key == "fire" else "no_fire", rule_id)
                if scenario is not None:
                    out.append(scenario)
        if not any(s.expect == "fire" for s in out) and not any(
            e.rule_id == rule_id and e.file == mapping.loc.file for e in self.errors
        ):
            self.error(mapping.loc, rule_id,
                       "the rule has no fire scenario: add at least one under 'examples.fire'")
        return out

    def scenario(
        self, node: YNode, expect: Literal["fire", "no_fire"], rule_id: str | None
    ) -> Scenario | None:
        mapping = self.expect_map(node, "a scenario", rule_id)
        if mapping is None:
            return None
        self.check_keys(mapping, SCENARIO_KEYS, "a scenario", rule_id)
        name = self.string(n, "'name'", rule_id) if (n := mapping.get("name")) else None
        users = to_python(n) if (n := mapping.get("users")) is not None else []
        if not isinstance(users, list) or not all(
            isinstance(u, dict) and isinstance(u.get("id"), str) for u in users
        ):
            self.error(mapping.key_loc("users"), rule_id,
                       "'users' must be a list of user-context mappings with an 'id'")
            return None
        events_node = mapping.get("events")
        seq = (self.expect_list(events_node, "'events'", rule_id) if events_node is not None
               else None)
        if events_node is None:
            self.error(mapping.loc, rule_id, "a scenario needs 'events'")
        if seq is None:
            return None
        start = event_time(SCENARIO_START)
        events: list[dict[str, Any]] = []
        for item in seq.items:
            expanded = self.scenario_event(item, rule_id, start)
            if expanded is None:
                return None
            events += expanded
        events.sort(key=lambda event: str(event["ts"]))
        if not events:
            self.error(seq.loc, rule_id, "a scenario needs at least one event")
            return None
        return Scenario(expect, name or f"line {mapping.loc.line}", tuple(events), tuple(users),
                        mapping.loc.line)

    def scenario_event(
        self, node: YNode, rule_id: str | None, start: float
    ) -> list[dict[str, Any]] | None:
        """One scenario entry → its events (``repeat: N`` copies ``every`` apart)."""
        mapping = self.expect_map(node, "a scenario event", rule_id)
        if mapping is None:
            return None
        at_node = mapping.get("at")
        if at_node is None:
            self.error(mapping.loc, rule_id, "a scenario event needs 'at' (a time offset such as "
                       "0s or 9m from the scenario's start)")
            return None
        text = at_node.value if isinstance(at_node, YScalar) else None
        offset = parse_duration(text) if isinstance(text, str) else None
        if text in ("0", 0):
            offset = 0.0
        if offset is None:
            got = repr(text) if isinstance(text, str) else describe(at_node)
            self.error(at_node.loc, rule_id, f"'at' must be a time offset such as 0s, 90s or 2h, "
                       f"got {got}")
            return None
        repeat = self.count(n, "'repeat'", rule_id, 1) if (n := mapping.get("repeat")) else 1
        every = self.duration(n, "'every'", rule_id) if (n := mapping.get("every")) else 0.0
        if (mapping.get("repeat") is None) != (mapping.get("every") is None):
            self.error(mapping.loc, rule_id, "'repeat' and 'every' go together")
            return None
        if repeat is None or every is None:
            return None
        event = to_python(mapping)
        assert isinstance(event, dict)
        for key in ("at", "repeat", "every", "ts"):
            event.pop(key, None)
        kind = event.get("kind", "prompt")
        if kind not in KINDS:
            self.error(mapping.key_loc("kind"), rule_id,
                       f"example kind {kind!r} is not one of {', '.join(KINDS)}")
            return None
        event["kind"] = kind
        return [{**event, "ts": format_time(start + offset + i * every)} for i in range(repeat)]

    # ------------------------------------------------------------ files and rules

    def load_top(self, path: Path) -> YMap | None:
        return self.load_file(path, SCHEMA, TOP_KEYS, STATEFUL_UPGRADE, what="the file")

    def tool_categories(self, top: YMap, into: dict[str, tuple[str, ...]]) -> None:
        node = top.get("tool_categories")
        mapping = self.expect_map(node, "'tool_categories'", None) if node else None
        for key, value in mapping.entries if mapping is not None else ():
            if key.text in into:
                self.error(key.loc, None, f"tool category {key.text!r} is defined twice")
                continue
            patterns = self.text_list(value, f"tool category {key.text!r}", None)
            if patterns is not None:
                into[key.text] = patterns

    def hygiene(self, top: YMap) -> list[HygienePolicy]:
        node = top.get("hygiene")
        seq = self.expect_list(node, "'hygiene'", None) if node is not None else None
        out: list[HygienePolicy] = []
        for item in seq.items if seq is not None else ():
            mapping = self.expect_map(item, "a hygiene policy", None)
            if mapping is None:
                continue
            before = len(self.errors)
            self.check_keys(mapping, HYGIENE_KEYS, "a hygiene policy", None)
            rules_node, by_node = mapping.get("rules"), mapping.get("by")
            if rules_node is None or by_node is None:
                self.error(mapping.loc, None, "a hygiene policy needs 'rules' and 'by'")
                continue
            rules = self.names(rules_node, "'rules'", None)
            by = self.path(by_node, "'by'", None)
            dedup = (self.duration(n, "'dedup'", None) if (n := mapping.get("dedup")) is not None
                     else None)
            rate = (self.rate_limit(n, None) if (n := mapping.get("rate_limit")) is not None
                    else None)
            if dedup is None and rate is None and len(self.errors) == before:
                self.error(mapping.loc, None, "a hygiene policy needs 'dedup' or 'rate_limit'")
            if len(self.errors) == before and rules is not None and by is not None:
                out.append(HygienePolicy(rules, by, ".".join(by), dedup, rate, mapping.loc.line))
        return out

    def stateful_rule(self, node: YNode) -> StatefulRule | None:
        mapping = self.expect_map(node, "a rule", None)
        if mapping is None:
            return None
        rule_id = self.rule_id(mapping)
        kind_node = mapping.get("kind")
        kind = self.enum(kind_node, "'kind'", KIND_IDS, rule_id) if kind_node else None
        # an unknown kind is reported once; its keys are not reported as unknown too
        kind_keys = (KIND_KEYS[kind][0] + KIND_KEYS[kind][1] if kind else
                     tuple(k for req, opt in KIND_KEYS.values() for k in req + opt)
                     if kind_node is not None else ())
        allowed = COMMON_REQUIRED + COMMON_OPTIONAL + kind_keys
        for key, _ in mapping.entries:
            if key.text in allowed:
                continue
            owner = next((k for k, (req, opt) in KIND_KEYS.items() if key.text in req + opt), None)
            if owner is not None and kind is not None:
                self.error(key.loc, rule_id, f"key {key.text!r} belongs to kind {owner!r}, not "
                           f"{kind!r}")
            else:
                self.error(key.loc, rule_id, f"unknown key {key.text!r} in a stateful rule"
                           f"{_suggest(key.text, allowed)}; allowed: {', '.join(allowed)}")
        missing = [k for k in COMMON_REQUIRED if mapping.get(k) is None]
        for name in missing:
            self.error(mapping.loc, rule_id, f"missing required key {name!r}")
        before = len(self.errors)
        get = mapping.get

        def opt(key: str, convert: Callable[[YNode], Any], default: Any) -> Any:
            value = get(key)
            return default if value is None else convert(value)

        head = self.header(mapping, rule_id)
        by = opt("by", lambda n: self.path(n, "'by'", rule_id), ())
        match_node = get("match")
        match_map = self.expect_map(match_node, "'match'", rule_id) if match_node else None
        if match_map is not None:
            self.check_keys(match_map, PREDICATE_KEYS, "'match'", rule_id)
        match = self.predicate(match_map, rule_id) if match_map is not None else Predicate()
        spec = self.spec(kind, mapping, rule_id) if kind is not None else None
        dedup = opt("dedup", lambda n: self.duration(n, "'dedup'", rule_id), None)
        rate = opt("rate_limit", lambda n: self.rate_limit(n, rule_id), None)
        examples = opt("examples", lambda n: self.scenarios(n, rule_id), [])
        if missing or len(self.errors) > before or rule_id is None or spec is None or (
            match is None or kind is None
        ):
            return None
        return StatefulRule(
            id=rule_id, title=head.title, description=head.description, severity=head.severity,
            category=head.category, owasp=head.owasp, tags=head.tags, kind=kind, by=by,
            by_text=".".join(by), match=match, spec=spec, dedup=dedup, rate_limit=rate,
            enabled=head.enabled, score=head.score,
            examples=tuple(examples), file=mapping.loc.file, line=mapping.loc.line,
        )

    def check_category_refs(self, categories: dict[str, tuple[str, ...]]) -> None:
        for name, loc, rule_id in self.category_refs:
            if name not in categories:
                known = ", ".join(sorted(categories)) or "none defined"
                self.error(loc, rule_id, f"unknown tool category {name!r}"
                           f"{_suggest(name, categories)}; defined in 'tool_categories': {known}")


def load_stateful_rules(paths: Sequence[str | Path]) -> StatefulRuleSet:
    """Load stateful rule files and directories (``*.yaml``/``*.yml`` inside, sorted).

    Raises :class:`RuleSetError` with every problem found.
    """
    loader = _StatefulLoader()
    files = _expand(paths, loader)
    tops = [(file, loader.load_top(file)) for file in files]
    loaded = [(file, top) for file, top in tops if top is not None]
    categories: dict[str, tuple[str, ...]] = {}
    for _, top in loaded:
        loader.tool_categories(top, categories)
    policies: list[HygienePolicy] = []
    rules: list[StatefulRule] = []
    for _, top in loaded:
        policies += loader.hygiene(top)
        node = top.get("rules")
        seq = loader.expect_list(node, "'rules'", None) if node is not None else None
        for item in seq.items if seq is not None else ():
            rule = loader.stateful_rule(item)
            if rule is not None:
                rules.append(rule)
    loader.check_category_refs(categories)
    if loader.errors:
        raise RuleSetError(dict.fromkeys(loader.errors))
    return StatefulRuleSet(tuple(rules), MappingProxyType(categories), tuple(policies),
                           tuple(str(f) for f, _ in loaded))


def load_suppressions(path: str | Path) -> list[Suppression]:
    """Read a suppression list (``llmtrail.suppressions/v1``); RuleSetError lists every problem."""
    loader = _StatefulLoader()
    file = Path(path)
    top = loader.load_file(file, SUPPRESSIONS_SCHEMA, ("schema", "suppressions"),
                           f"set 'schema: {SUPPRESSIONS_SCHEMA}'", what="the file")
    out: list[Suppression] = []
    node = top.get("suppressions") if top is not None else None
    seq = loader.expect_list(node, "'suppressions'", None) if node is not None else None
    for item in seq.items if seq is not None else ():
        mapping = loader.expect_map(item, "a suppression", None)
        if mapping is None:
            continue
        before = len(loader.errors)
        loader.check_keys(mapping, SUPPRESSION_KEYS, "a suppression", None)
        fields: dict[str, str | None] = {}
        for key in SUPPRESSION_KEYS:
            value = mapping.get(key)
            fields[key] = None if value is None else loader.string(value, f"'{key}'", None)
        for key in ("rule", "until", "reason"):
            if mapping.get(key) is None:
                loader.error(mapping.loc, None, f"a suppression needs {key!r}")
        if mapping.get("user") is None and mapping.get("service") is None:
            loader.error(mapping.loc, None, "a suppression needs 'user' or 'service' (to silence "
                         "a rule everywhere, disable it instead)")
        until = math.nan
        if fields["until"] is not None:
            try:
                until = event_time(fields["until"])
            except ValueError:
                loader.error(mapping.key_loc("until"), None, f"'until' must be an RFC 3339 time "
                             f"with a UTC offset, got {fields['until']!r}")
        if len(loader.errors) == before:
            out.append(Suppression(str(fields["rule"]), fields["user"], fields["service"], until,
                                   str(fields["reason"]), str(file), mapping.loc.line))
    if loader.errors:
        raise RuleSetError(dict.fromkeys(loader.errors))
    return out
