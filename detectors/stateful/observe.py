"""Stage one: an event and its single-event findings → observations for the stateful rules.

Runs where the event is (the detect agent), once per event, and does every
per-event test; stage two (:mod:`detectors.stateful.runner`) only folds
observations into keyed state. Rules are indexed by event kind and by
whether they need a finding, so an ordinary event with no finding costs a
few dictionary lookups per rule that can take it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from detectors.fields import values_at
from detectors.stateful.fingerprint import exact_fingerprint, near_fingerprints
from detectors.stateful.kinds import Observation
from detectors.stateful.model import (
    BaselineSpec,
    CampaignSpec,
    DistinctSpec,
    FindingView,
    ProfileSpec,
    SequenceSpec,
    StatefulRule,
    StatefulRuleSet,
    ThresholdSpec,
)
from detectors.stateful.times import event_time

UserContext = Callable[[str], Mapping[str, Any] | None]
_KINDS = ("prompt", "response", "tool_call")


def _no_context(_user: str) -> Mapping[str, Any] | None:
    return None


def first_value(event: Mapping[str, Any], segments: Sequence[str]) -> Any:
    """The first scalar under a selector (a plain walk through mappings, else the full resolver)."""
    node: Any = event
    for segment in segments:
        if not isinstance(node, dict):
            break
        node = node.get(segment)
        if node is None:
            return None
    else:
        if isinstance(node, str | int | float | bool):
            return node
    values, _ = values_at(event, segments)
    return values[0] if values else None


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


@lru_cache(maxsize=256)
def _hours(text: str) -> tuple[int, int] | None:
    """``"08:00-19:00"`` → minutes of the day (start, end); None if malformed."""
    try:
        start, end = text.split("-")
        (sh, sm), (eh, em) = (map(int, start.split(":")), map(int, end.split(":")))
    except ValueError:
        return None
    if not (0 <= sh <= 24 and 0 <= eh <= 24 and 0 <= sm < 60 and 0 <= em < 60):
        return None
    return sh * 60 + sm, eh * 60 + em


def url_shape(url: str) -> str:
    """A URL without query or fragment, each path segment that holds a digit as ``*``
    (``https://crm/api/v2/customers/42?x=1`` → ``https://crm/api/*/customers/*``); scheme
    and host in lower case and no trailing slash, as they do not make another endpoint."""
    base = url.split("?", 1)[0].split("#", 1)[0]
    scheme, sep, rest = base.rpartition("://")
    host, _, path = rest.partition("/")
    if sep:
        scheme, host = scheme.lower(), host.lower()
    path = path.rstrip("/")
    shaped = "/".join("*" if any(ch.isdigit() for ch in part) else part
                      for part in path.split("/"))
    return f"{scheme}{sep}{host}/{shaped}" if path else f"{scheme}{sep}{host}"


def off_hours(ts: float, context: Mapping[str, Any]) -> dict[str, Any] | None:
    """Details when ``ts`` falls outside the user's work_hours in their timezone, else None.

    A user without (valid) work_hours or timezone is never flagged.
    """
    hours, zone_name = context.get("work_hours"), context.get("timezone")
    if not isinstance(hours, str) or not isinstance(zone_name, str):
        return None
    window, zone = _hours(hours), _zone(zone_name)
    if window is None or zone is None:
        return None
    local = datetime.fromtimestamp(ts, zone)
    minute = local.hour * 60 + local.minute
    start, end = window
    inside = start <= minute < end if start <= end else (minute >= start or minute < end)
    if inside:
        return None
    return {"local_time": local.strftime("%a %H:%M"), "work_hours": hours, "timezone": zone_name}


def new_geo(event: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any] | None:
    """Details when the event's user.geo is not in the user's usual_geo (both known), else None."""
    usual = context.get("usual_geo")
    user = event.get("user")
    geo = user.get("geo") if isinstance(user, Mapping) else None
    if not isinstance(usual, list) or not usual or not isinstance(geo, str):
        return None
    if geo.strip().upper() in {str(item).strip().upper() for item in usual}:
        return None  # country codes: "de" is "DE"
    return {"geo": geo, "usual_geo": list(usual)}


@dataclass(frozen=True, slots=True)
class _View:
    """One event as the payload makers see it (built once per event)."""

    event: Mapping[str, Any]
    findings: Sequence[FindingView]
    category: str | None
    ts: float
    context: UserContext
    user_id: Any


Payloads = list[tuple[str, Any]]
_MISSING = object()


class Observer:
    """The stage-one program of a stateful rule set (build once per rule set)."""

    def __init__(self, ruleset: StatefulRuleSet) -> None:
        self.ruleset = ruleset
        enabled = [rule for rule in ruleset.rules if rule.enabled]
        makers: dict[type, Callable[[StatefulRule, _View, str], Payloads]] = {
            ThresholdSpec: self._threshold, DistinctSpec: self._distinct,
            SequenceSpec: self._sequence, BaselineSpec: self._baseline,
            ProfileSpec: self._profile, CampaignSpec: self._campaign,
        }
        # kind -> (plans of rules that need a finding, plans of those that do not); a plan is
        # (rule, whether its match is only the kind test, its payload maker)
        self._by_kind: dict[str, tuple[list[_Plan], list[_Plan]]] = {}
        for kind in _KINDS:
            plans = [(r, _kind_only(r), makers[type(r.spec)]) for r in enabled
                     if not r.match.kinds or kind in r.match.kinds]
            self._by_kind[kind] = ([p for p in plans if _needs_finding(p[0])],
                                   [p for p in plans if not _needs_finding(p[0])])
        self._categories = tuple(
            (name, patterns) for name, patterns in ruleset.tool_categories.items()
        )
        self._category_cache: dict[str, str | None] = {}

    def tool_category(self, event: Mapping[str, Any]) -> str | None:
        tool = event.get("tool")
        name = tool.get("name") if isinstance(tool, Mapping) else None
        if not isinstance(name, str):
            return None
        if name not in self._category_cache:
            if len(self._category_cache) > 4096:
                self._category_cache.clear()
            self._category_cache[name] = next(
                (category for category, patterns in self._categories
                 if any(fnmatch.fnmatchcase(name, p) for p in patterns)), None)
        return self._category_cache[name]

    def observe(
        self,
        event: Mapping[str, Any],
        findings: Sequence[FindingView],
        context: UserContext = _no_context,
    ) -> list[Observation]:
        """Every observation the event makes for the enabled rules (none for an unknown kind)."""
        groups = self._by_kind.get(event.get("kind"))  # type: ignore[arg-type]
        if groups is None:
            return []
        plans = groups[1] + groups[0] if findings else groups[1]
        if not plans:
            return []
        ts = event_time(event["ts"])
        user = event.get("user")
        user_id = user.get("id") if isinstance(user, Mapping) else None
        meta = (event.get("trace_id"), event.get("kind"), event.get("ts"), user_id,
                event.get("service"))
        category = self.tool_category(event) if self._categories else None
        view = _View(event, findings, category, ts, context, user_id)
        event_id = event["event_id"]
        keys: dict[tuple[str, ...], Any] = {}
        out: list[Observation] = []
        for rule, kind_only, maker in plans:
            if not kind_only and rule.match.fingerprints(event, findings, category) is None:
                continue
            key = keys.get(rule.by, _MISSING)
            if key is _MISSING:
                key = keys[rule.by] = first_value(event, rule.by)
            if key is None:
                continue
            for route, payload in maker(rule, view, str(key)):
                out.append(Observation(rule.id, route, ts, event_id, payload, meta))
        return out

    @staticmethod
    def _threshold(rule: StatefulRule, view: _View, key: str) -> Payloads:
        return [(key, 1)]

    @staticmethod
    def _distinct(rule: StatefulRule, view: _View, key: str) -> Payloads:
        assert isinstance(rule.spec, DistinctSpec)
        value = first_value(view.event, rule.spec.field)
        if value is None:
            return []
        return [(key, url_shape(str(value)) if rule.spec.normalise == "url" else value)]

    @staticmethod
    def _sequence(rule: StatefulRule, view: _View, key: str) -> Payloads:
        assert isinstance(rule.spec, SequenceSpec)
        steps = []
        for index, step in enumerate(rule.spec.steps):
            prints = step.predicate.fingerprints(view.event, view.findings, view.category)
            if prints is not None:
                steps.append([index, sorted(set(prints))])
        return [(key, steps)] if steps else []

    @staticmethod
    def _baseline(rule: StatefulRule, view: _View, key: str) -> Payloads:
        assert isinstance(rule.spec, BaselineSpec)
        value = _measure(rule.spec, view.event)
        return [] if value is None else [(key, value)]

    @staticmethod
    def _profile(rule: StatefulRule, view: _View, key: str) -> Payloads:
        assert isinstance(rule.spec, ProfileSpec)
        user_id = view.user_id
        profile = view.context(user_id) if isinstance(user_id, str) else None
        if profile is None:
            return []
        detail = (off_hours(view.ts, profile) if rule.spec.check == "off_hours"
                  else new_geo(view.event, profile))
        return [] if detail is None else [(key, detail)]

    @staticmethod
    def _campaign(rule: StatefulRule, view: _View, key: str) -> Payloads:
        spec = rule.spec
        assert isinstance(spec, CampaignSpec)
        text = first_value(view.event, spec.field)
        if not isinstance(text, str) or len(text) < spec.min_chars:
            return []
        if spec.similarity == "exact":
            single = exact_fingerprint(text)
            return [] if single is None else [(single, [key, [single]])]
        bands = near_fingerprints(text)
        return [(rule.id, [key, bands])] if bands else []


_Plan = tuple[StatefulRule, bool, Callable[[StatefulRule, _View, str], Payloads]]


def _measure(spec: BaselineSpec, event: Mapping[str, Any]) -> float | None:
    if spec.value is None:
        return 1.0
    value = first_value(event, spec.value)
    if spec.aggregate == "rate":  # a share of events: absent or false counts as 0
        return 1.0 if value is True or (isinstance(value, int | float) and value) else 0.0
    if spec.measure == "length":
        return float(len(value)) if isinstance(value, str) else None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    return None


def _kind_only(rule: StatefulRule) -> bool:
    match = rule.match
    return (match.finding is None and match.no_finding is None and not match.tool_categories
            and not match.where)


def _needs_finding(rule: StatefulRule) -> bool:
    if rule.match.finding is not None:
        return True
    spec = rule.spec
    return isinstance(spec, SequenceSpec) and all(
        step.predicate.finding is not None for step in spec.steps
    )
