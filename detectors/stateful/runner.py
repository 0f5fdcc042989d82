"""The stateful detector: stage one (observe), routing, stage two (apply + hygiene).

Stage one runs per event where the event is; stage two runs per state
partition (``scope``) over a :class:`~detectors.stateful.store.Store`. In a
worker the two are joined by an internal topic partitioned with
:func:`partition_of`; offline (:meth:`StatefulDetector.run`) they run back
to back on one store, which gives the same alerts as any number of
partitions, rate limits aside (they are per partition).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from detectors.alerts import build_alert
from detectors.findings import Finding
from detectors.stateful import hygiene
from detectors.stateful.kinds import KINDS, Fired, Observation
from detectors.stateful.model import (
    FindingView,
    HygienePolicy,
    RateLimit,
    StatefulRule,
    StatefulRuleSet,
)
from detectors.stateful.observe import Observer, UserContext, first_value
from detectors.stateful.store import BatchState, MemoryStore, Store
from detectors.stateful.times import event_time

_USER_FIELDS = ("role", "department", "privileged")


class PatternAlert(NamedTuple):
    """A single-event alert under a hygiene policy, on its way to stage two."""

    rule: str
    key: str
    ts: float
    alert: dict[str, Any]


def partition_of(rule_id: str, key: str, partitions: int) -> int:
    """The state partition of a (rule, key): stable across processes and machines."""
    return zlib.crc32(f"{rule_id}\x1f{key}".encode()) % partitions


def findings_of_alert(alert: Mapping[str, Any]) -> FindingView:
    """What a stateful rule sees of a single-event alert."""
    prints = tuple(
        item["fingerprint"] for item in alert.get("evidence") or ()
        if isinstance(item, Mapping) and isinstance(item.get("fingerprint"), str)
    )
    return FindingView(str(alert.get("rule_id")), str(alert.get("category")),
                       str(alert.get("detector")), str(alert.get("field") or ""), prints)


def findings_of(findings: Iterable[Finding]) -> list[FindingView]:
    """What a stateful rule sees of engine findings."""
    return [
        FindingView(f.rule_id, f.category, f.detector, f.field,
                    tuple(e.fingerprint for e in f.evidence if e.fingerprint is not None))
        for f in findings
    ]


def correlation_alert(
    rule: StatefulRule, fired: Fired, context: UserContext, detected_at: str
) -> dict[str, Any]:
    """An Alert v1 for a stateful rule, with a ``correlation`` object naming the events joined.

    The event fields (event_id, trace_id, kind, ts, user, service) are those of
    the event that completed the match. The alert id is derived from the rule,
    the key and the events, so a replay raises the same id.
    """
    trace_id, kind, ts, user_id, service = fired.last.meta
    profile = context(user_id) if isinstance(user_id, str) else None
    user: dict[str, Any] = {"id": user_id, "known": profile is not None}
    for name in _USER_FIELDS:
        if profile is not None and name in profile:
            user[name] = profile[name]
    event = {"event_id": fired.last.event_id, "trace_id": trace_id, "kind": kind, "ts": ts,
             "service": service, "user": user}
    finding = Finding(rule.id, rule.title, rule.severity, rule.category, rule.owasp,
                      rule.detector, "", (), rule.score, rule.tags)
    digest = hashlib.blake2b(
        "\x1f".join((rule.id, fired.key, *fired.events)).encode(), digest_size=16)
    alert = build_alert(finding, event, detected_at=detected_at, alert_id=digest.hexdigest())
    text = summary(rule, fired)
    alert["field"] = rule.by_text
    alert["evidence"] = [{"start": 0, "end": len(text), "excerpt": text}]
    alert["correlation"] = {"kind": rule.kind, "by": rule.by_text, "key": fired.key,
                            "events": list(fired.events), **fired.detail}
    return alert


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def summary(rule: StatefulRule, fired: Fired) -> str:
    """One line a person reads: what the rule saw (the alert's evidence excerpt)."""
    d = fired.detail
    kind = rule.kind
    if kind == "threshold":
        text = f"{d['count']} matching events within {_span(d['window_s'])}"
    elif kind == "distinct":
        text = f"{d['distinct']} distinct values within {_span(d['window_s'])}"
    elif kind == "sequence":
        text = " → ".join(d["steps"]) + f" within {_span(d['within_s'])}"
    elif kind == "baseline":
        base = "" if d["baseline"] is None else f" vs baseline {d['baseline']:.6g}"
        over = "" if d["aggregate"] == "each" else f" over {d['samples']} events"
        text = f"{d['aggregate']} {d['observed']:.6g}{base}{over}"
    elif kind == "campaign":
        text = f"{d['distinct_users']} users within {_span(d['window_s'])}: " + ", ".join(
            d["users"][:10])
    elif "local_time" in d:
        text = f"at {d['local_time']} {d['timezone']}, work hours {d['work_hours']}"
    else:
        text = f"from {d['geo']}, usually {', '.join(d['usual_geo'])}"
    return f"{fired.key}: {text}"


class StatefulDetector:
    """A compiled stateful rule set plus the run-time suppression list.

    ``swap`` and ``set_suppressions`` replace one reference each, so a batch
    uses one consistent program.
    """

    def __init__(
        self, ruleset: StatefulRuleSet, suppressions: hygiene.Suppressions | None = None
    ) -> None:
        self._observer = Observer(ruleset)
        self._rules = {rule.id: rule for rule in ruleset.rules if rule.enabled}
        self._policies: dict[str, HygienePolicy | None] = {}
        self.suppressions = suppressions or hygiene.Suppressions()

    @property
    def ruleset(self) -> StatefulRuleSet:
        return self._observer.ruleset

    def swap(self, ruleset: StatefulRuleSet) -> None:
        self._observer = Observer(ruleset)
        self._rules = {rule.id: rule for rule in ruleset.rules if rule.enabled}
        self._policies = {}

    def set_suppressions(self, suppressions: hygiene.Suppressions) -> None:
        self.suppressions = suppressions

    # -- stage one ---------------------------------------------------------------------

    def observe(
        self, event: Mapping[str, Any], findings: Sequence[FindingView], context: UserContext
    ) -> list[Observation]:
        return self._observer.observe(event, findings, context)

    def compact(self, observations: list[Observation]) -> list[Observation]:
        """A batch's observations with the ones a kind can merge merged (see ``Kind.compact``)."""
        by_rule: dict[str, list[Observation]] = {}
        for obs in observations:
            by_rule.setdefault(obs.rule, []).append(obs)
        out: list[Observation] = []
        for rule_id, items in by_rule.items():
            rule = self._rules.get(rule_id)
            out += KINDS[rule.kind].compact(rule, items) if rule is not None else items
        return out

    def policy(self, rule_id: str) -> HygienePolicy | None:
        if rule_id not in self._policies:
            self._policies[rule_id] = next(
                (p for p in self.ruleset.hygiene if p.covers(rule_id)), None)
        return self._policies[rule_id]

    def suppressed(self, alert: Mapping[str, Any]) -> bool:
        if not self.suppressions:
            return False
        user = alert.get("user")
        user_id = user.get("id") if isinstance(user, Mapping) else None
        ts = alert.get("ts")
        return isinstance(ts, str) and self.suppressions.covers(
            str(alert.get("rule_id")), user_id, alert.get("service"), event_time(ts))

    def pattern_alert(self, alert: dict[str, Any]) -> PatternAlert | None:
        """The alert as a stage-two item when a hygiene policy covers its rule, else None."""
        policy = self.policy(str(alert.get("rule_id")))
        if policy is None:
            return None
        key = first_value(alert, policy.by)
        return PatternAlert(str(alert["rule_id"]), "" if key is None else str(key),
                            event_time(str(alert["ts"])), alert)

    def hold(self, alert: dict[str, Any]) -> tuple[bool, PatternAlert | None]:
        """Stage one for a single-event alert: (held back, its stage-two item).

        Held back without an item: a suppression covers it (dropped); with one: a
        hygiene policy covers it, and the item goes through dedup and rate limits in
        stage two. Not held back: the alert goes out as it is.
        """
        if self.suppressed(alert):
            return True, None
        item = self.pattern_alert(alert)
        return item is not None, item

    # -- stage two ---------------------------------------------------------------------

    def apply(
        self,
        observations: Sequence[Observation],
        pattern_alerts: Sequence[PatternAlert],
        store: Store,
        *,
        scope: str,
        context: UserContext,
        detected_at: str,
        not_after: float | None = None,
    ) -> list[dict[str, Any]]:
        """Fold one batch of a scope into its state; return the alerts to send.

        Each (rule, key) state is read and written at most once per call. The scope's
        event-time watermark never moves past ``not_after`` (the worker passes its clock
        plus a margin): one event stamped years ahead would otherwise close every dedup
        TTL of the partition from then on and expire all of its windowed state.
        """
        states = BatchState(store, scope)
        groups: dict[tuple[str, str], list[Observation]] = {}
        for obs in observations:
            groups.setdefault((obs.rule, obs.key), []).append(obs)
        raised: list[tuple[float, str, str, dict[str, Any], float | None, RateLimit | None]] = []
        for (rule_id, key), items in groups.items():
            rule = self._rules.get(rule_id)
            if rule is None:  # the rule was removed or disabled since stage one
                continue
            items.sort(key=lambda obs: obs.ts)
            for fired in KINDS[rule.kind].apply(rule, key, items, states):
                alert = correlation_alert(rule, fired, context, detected_at)
                raised.append((fired.last.ts, rule.id, fired.key, alert, rule.dedup,
                               rule.rate_limit))
        for item in pattern_alerts:
            policy = self.policy(item.rule)  # None: the policy went away since stage one
            raised.append((item.ts, item.rule, item.key, item.alert,
                           policy.dedup if policy else None, policy.rate_limit if policy else None))
        raised.sort(key=lambda entry: entry[0])
        out: list[dict[str, Any]] = []
        for ts, rule_id, key, alert, dedup, rate_limit in raised:
            if self.suppressed(alert):
                continue
            out += hygiene.admit(alert, rule_id=rule_id, key=key, ts=ts, dedup=dedup,
                                 rate_limit=rate_limit, states=states, scope=scope)
        latest = max([o.ts for o in observations] + [p.ts for p in pattern_alerts], default=None)
        if latest is not None and not_after is not None:
            latest = min(latest, not_after)
        if latest is not None:
            wkey = hygiene.watermark_key(scope)
            watermark = max(latest, states.get(wkey) or latest)
            states.put(wkey, watermark)
            out += hygiene.sweep(states, scope, watermark)
        states.flush()
        return out

    # -- both, offline -------------------------------------------------------------------

    def run(
        self,
        scanned: Iterable[tuple[Mapping[str, Any], Sequence[FindingView]]],
        *,
        context: UserContext,
        store: Store | None = None,
        detected_at: str = "",
    ) -> list[dict[str, Any]]:
        """Stage one then stage two over events and their findings, on one store (one scope).

        Single-event alerts are not produced here; pass them through
        :meth:`pattern_alert` yourself to apply hygiene policies to them.
        """
        observations: list[Observation] = []
        for event, findings in scanned:
            observations += self.observe(event, findings, context)
        return self.apply(self.compact(observations), (), store or MemoryStore(), scope="0",
                          context=context, detected_at=detected_at)

