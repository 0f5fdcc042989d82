"""The compiled stateful rule model (``llmtrail.stateful/v1``): pure, immutable data.

A stateful rule selects events with a :class:`Predicate` (over the event and
the single-event findings it got), groups them by a key (``by``), and keeps a
small JSON-able state per (rule, key). What the state is and when it fires
depends on the rule's kind (see :mod:`detectors.stateful.kinds`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from detectors.fields import values_at
from detectors.modifiers import ValueTest

SCHEMA = "llmtrail.stateful/v1"
SUPPRESSIONS_SCHEMA = "llmtrail.suppressions/v1"
KIND_IDS: tuple[str, ...] = ("threshold", "distinct", "sequence", "baseline", "profile", "campaign")
AGGREGATES: tuple[str, ...] = ("count", "sum", "mean", "rate", "p95", "each")
PROFILE_CHECKS: tuple[str, ...] = ("off_hours", "new_geo")
SIMILARITIES: tuple[str, ...] = ("exact", "near")
MEASURES: tuple[str, ...] = ("value", "length")
NORMALISERS: tuple[str, ...] = ("url",)


@dataclass(frozen=True, slots=True)
class FindingView:
    """What a stateful rule sees of one single-event finding (an alert of the event)."""

    rule_id: str
    category: str
    detector: str
    field: str
    fingerprints: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FindingFilter:
    """A finding matches when it passes every non-empty test."""

    rules: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    detectors: frozenset[str] = frozenset()
    fields: tuple[str, ...] = ()  # field prefixes ("prompt" covers prompt.text, prompt.messages…)

    def matches(self, finding: FindingView) -> bool:
        return (
            (not self.rules or finding.rule_id in self.rules)
            and (not self.categories or finding.category in self.categories)
            and (not self.detectors or finding.detector in self.detectors)
            and (not self.fields or finding.field.startswith(self.fields))
        )


@dataclass(frozen=True, eq=False, slots=True)
class Predicate:
    """Which events a rule (or a sequence step) takes. Every given test must hold."""

    kinds: frozenset[str] = frozenset()
    finding: FindingFilter | None = None
    no_finding: FindingFilter | None = None
    tool_categories: frozenset[str] = frozenset()
    where: tuple[tuple[tuple[str, ...], ValueTest], ...] = ()

    def fingerprints(
        self,
        event: Mapping[str, Any],
        findings: Sequence[FindingView],
        tool_category: str | None,
    ) -> tuple[str, ...] | None:
        """None if the event does not match; else the fingerprints of the matching findings."""
        if self.kinds and event.get("kind") not in self.kinds:
            return None
        if self.tool_categories and tool_category not in self.tool_categories:
            return None
        for segments, test in self.where:
            values, present = values_at(event, segments)
            if not test.holds(values, present, event):
                return None
        if self.no_finding is not None and any(self.no_finding.matches(f) for f in findings):
            return None
        if self.finding is None:
            return ()
        matched = [f for f in findings if self.finding.matches(f)]
        if not matched:
            return None
        return tuple(fp for f in matched for fp in f.fingerprints)


@dataclass(frozen=True, slots=True)
class ThresholdSpec:
    window: float
    at_least: int
    tumbling: bool


@dataclass(frozen=True, slots=True)
class DistinctSpec:
    field: tuple[str, ...]
    window: float
    at_least: int
    normalise: str | None = None  # "url": path segments holding a digit become "*"


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    predicate: Predicate
    times: int


@dataclass(frozen=True, slots=True)
class SequenceSpec:
    steps: tuple[Step, ...]
    within: float
    join_fingerprint: bool


@dataclass(frozen=True, slots=True)
class BaselineSpec:
    value: tuple[str, ...] | None  # None: the aggregate counts events
    measure: str  # "value" or "length" (of a string value)
    aggregate: str
    bucket: float
    above: float | None  # fire when the metric exceeds above x baseline
    drift: float | None  # fire when |metric - baseline| > drift x baseline
    exceeds: float | None  # fire when the metric exceeds this absolute value (no baseline)
    warmup: int
    alpha: float
    min_samples: int
    min_value: float
    late_buckets: int  # closed buckets a key keeps open for late events


@dataclass(frozen=True, slots=True)
class ProfileSpec:
    check: str


@dataclass(frozen=True, slots=True)
class CampaignSpec:
    field: tuple[str, ...]
    similarity: str
    window: float
    users_at_least: int
    min_chars: int


Spec = ThresholdSpec | DistinctSpec | SequenceSpec | BaselineSpec | ProfileSpec | CampaignSpec


@dataclass(frozen=True, slots=True)
class RateLimit:
    max: int
    per: float


@dataclass(frozen=True, slots=True)
class Scenario:
    """A rule example: events (with times) that must, or must not, make the rule fire."""

    expect: Literal["fire", "no_fire"]
    name: str
    events: tuple[Mapping[str, Any], ...]
    users: tuple[Mapping[str, Any], ...]
    line: int


@dataclass(frozen=True, slots=True)
class StatefulRule:
    id: str
    title: str
    description: str
    severity: str
    category: str
    owasp: tuple[str, ...]
    tags: tuple[str, ...]
    kind: str
    by: tuple[str, ...]
    by_text: str
    match: Predicate
    spec: Spec
    dedup: float | None
    rate_limit: RateLimit | None
    enabled: bool
    score: float
    examples: tuple[Scenario, ...]
    file: str
    line: int

    @property
    def detector(self) -> str:
        return "anomaly" if self.kind in ("baseline", "profile") else "correlation"


@dataclass(frozen=True, slots=True)
class HygienePolicy:
    """Dedup and rate limits for single-event (pattern, ml) alerts whose rule id matches."""

    rules: tuple[str, ...]  # rule ids or fnmatch globs
    by: tuple[str, ...]  # selector into the alert (user.id, service, trace_id…)
    by_text: str
    dedup: float | None
    rate_limit: RateLimit | None
    line: int

    def covers(self, rule_id: str) -> bool:
        return any(fnmatch.fnmatchcase(rule_id, pattern) for pattern in self.rules)


@dataclass(frozen=True, slots=True)
class Suppression:
    """Drop alerts of a rule for a user or a service until an (event) time."""

    rule: str  # a rule id or an fnmatch glob
    user: str | None
    service: str | None
    until: float
    reason: str
    file: str
    line: int

    def covers(self, rule_id: str, user: str | None, service: str | None, at: float) -> bool:
        return (
            at < self.until
            and fnmatch.fnmatchcase(rule_id, self.rule)
            and (self.user is None or self.user == user)
            and (self.service is None or self.service == service)
        )


@dataclass(frozen=True, slots=True)
class StatefulRuleSet:
    rules: tuple[StatefulRule, ...] = ()
    tool_categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    hygiene: tuple[HygienePolicy, ...] = ()
    sources: tuple[str, ...] = ()

    def rule(self, rule_id: str) -> StatefulRule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)
