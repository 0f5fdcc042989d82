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
)
from detectors.stateful.times import event_time

UserContext = Callable[[str], Mapping[str, Any] | None]
_KINDS = ("prompt", "response", "tool_call")


def _no_context(_user: str) -> Mapping[str, Any] | None:
    return None


def first_value(event: Mapping[str, Any], segments: Sequence[str]) -> Any:
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
    if geo in usual:
        return None
    return {"geo": geo, "usual_geo": list(usual)}


class Observer:
    """The stage-one program of a stateful rule set (build once per rule set)."""

    def __init__(self, ruleset: StatefulRuleSet) -> None:
        self.ruleset = ruleset
        enabled = [rule for rule in ruleset.rules if rule.enabled]
        # kind -> (rules that need a finding, rules that do not)
        self._by_kind: dict[str, tuple[list[StatefulRule], list[StatefulRule]]] = {}
        for kind in _KINDS:
            takes = [r for r in enabled if not r.match.kinds or kind in r.match.kinds]
            self._by_kind[kind] = (
                [r for r in takes if _needs_finding(r)],
                [r for r in takes if not _needs_finding(r)],
            )
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
        rules = groups[1] + groups[0] if findings else groups[1]
        if not rules:
            return []
        ts = event_time(event["ts"])
        user = event.get("user")
        user_id = user.get("id") if isinstance(user, Mapping) else None
        meta = (event.get("trace_id"), event.get("kind"), event.get("ts"), user_id,
                event.get("service"))
        category = self.tool_category(event) if self._categories else None
        out: list[Observation] = []
        for rule in rules:
            prints = rule.match.fingerprints(event, findings, category)
            if prints is None:
                continue
            key = first_value(event, rule.by)
            if key is None:
                continue
            for route, payload in self._payloads(rule, event, findings, category=category,
                                                 ts=ts, context=context, key=str(key),
                                                 user_id=user_id):
                out.append(Observation(rule.id, route, ts, event["event_id"], payload, meta))
        return out

    def _payloads(
        self, rule: StatefulRule, event: Mapping[str, Any], findings: Sequence[FindingView], *,
        category: str | None, ts: float, context: UserContext, key: str, user_id: Any,
    ) -> list[tuple[str, Any]]:
        spec = rule.spec
        if isinstance(spec, DistinctSpec):
            value = first_value(event, spec.field)
            return [] if value is None else [(key, value)]
        if isinstance(spec, SequenceSpec):
            steps = []
            for index, step in enumerate(spec.steps):
                prints = step.predicate.fingerprints(event, findings, category)
                if prints is not None:
                    steps.append([index, sorted(set(prints))])
            return [(key, steps)] if steps else []
        if isinstance(spec, BaselineSpec):
            value = self._measure(spec, event)
            return [] if value is None else [(key, value)]
        if isinstance(spec, ProfileSpec):
            profile = context(user_id) if isinstance(user_id, str) else None
            if profile is None:
                return []
            detail = off_hours(ts, profile) if spec.check == "off_hours" else new_geo(
                event, profile)
            return [] if detail is None else [(key, detail)]
        if isinstance(spec, CampaignSpec):
            text = first_value(event, spec.field)
            if not isinstance(text, str) or len(text) < spec.min_chars:
                return []
            if spec.similarity == "exact":
                single = exact_fingerprint(text)
                return [] if single is None else [(single, [key, [single]])]
            bands = near_fingerprints(text)
            return [(rule.id, [key, bands])] if bands else []
        return [(key, 1)]  # threshold

    @staticmethod
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


def _needs_finding(rule: StatefulRule) -> bool:
    if rule.match.finding is not None:
        return True
    spec = rule.spec
    return isinstance(spec, SequenceSpec) and all(
        step.predicate.finding is not None for step in spec.steps
    )
