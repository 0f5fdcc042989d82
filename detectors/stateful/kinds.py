"""The stateful rule kinds: what each keeps per key and when it fires.

Each kind is a small class with a stable ``id`` and one method, ``apply``:
the observations of one (rule, key) from one batch, in event-time order, are
folded into that key's state (plain JSON-able data read and written through
a :class:`~detectors.stateful.store.BatchState`), and what fired is returned.
Stage one (:mod:`detectors.stateful.observe`) decides which events become
observations and what payload they carry; nothing here looks at an event.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple

from detectors.stateful.model import (
    BaselineSpec,
    CampaignSpec,
    DistinctSpec,
    SequenceSpec,
    StatefulRule,
    ThresholdSpec,
)
from detectors.stateful.store import BatchState
from detectors.stateful.times import format_time

MAX_PARTIALS = 8  # open sequence matches kept per key (oldest dropped first)
MAX_LISTED = 50  # event ids / values / users listed in one alert
MAX_VALUE_CHARS = 200
_P95_BASE = 1.05  # latency histogram bins are 5 % wide


class Observation(NamedTuple):
    """One event as one rule's stage two sees it (encoded as a JSON list between stages)."""

    rule: str
    key: str  # the partition/state key: the group key, or a fingerprint for campaigns
    ts: float
    event_id: str
    payload: Any
    meta: tuple[Any, ...]  # (trace_id, kind, ts text, user id, service) of the event


@dataclass(frozen=True, slots=True)
class Fired:
    """A rule fired on a key: the events it joins and what it saw."""

    key: str
    events: tuple[str, ...]
    detail: Mapping[str, Any]
    last: Observation


def state_key(rule_id: str, key: str) -> str:
    return f"{rule_id}\x1f{key}"


class Kind:
    id: ClassVar[str]

    def compact(self, rule: StatefulRule, observations: list[Observation]) -> list[Observation]:
        """Stage one's chance to merge a batch's observations of the rule before they are sent."""
        return observations

    def apply(
        self, rule: StatefulRule, key: str, observations: Sequence[Observation], states: BatchState
    ) -> list[Fired]:
        raise NotImplementedError


class Threshold(Kind):
    """At least N matching events per key within a sliding or tumbling window."""

    id = "threshold"

    def apply(
        self, rule: StatefulRule, key: str, observations: Sequence[Observation], states: BatchState
    ) -> list[Fired]:
        spec = rule.spec
        assert isinstance(spec, ThresholdSpec)
        skey = state_key(rule.id, key)
        if spec.tumbling:
            return self._tumbling(spec, key, skey, observations, states)
        events: list[list[Any]] = (states.get(skey) or {"ev": []})["ev"]
        fired: list[Fired] = []
        for obs in observations:
            if any(item[1] == obs.event_id for item in events):
                continue
            events.append([obs.ts, obs.event_id])
            events.sort()
            newest = events[-1][0]
            events = [item for item in events if item[0] >= newest - spec.window]
            if len(events) >= spec.at_least:
                fired.append(Fired(key, tuple(item[1] for item in events[-MAX_LISTED:]), {
                    "count": len(events), "window_s": spec.window,
                    "first_ts": format_time(events[0][0]),
                }, obs))
                events = []
        if events:
            states.put(skey, {"ev": events}, expires=events[-1][0] + spec.window)
        else:
            states.drop(skey)
        return fired

    @staticmethod
    def _tumbling(
        spec: ThresholdSpec, key: str, skey: str, observations: Sequence[Observation],
        states: BatchState,
    ) -> list[Fired]:
        state = states.get(skey)
        fired: list[Fired] = []
        for obs in observations:
            window = int(obs.ts // spec.window)
            if state is None or window > state["w"]:
                state = {"w": window, "n": 0, "ev": [], "done": False}
            elif window < state["w"] or obs.event_id in state["ev"]:
                continue  # late for a closed window, or seen already
            state["n"] += 1
            if len(state["ev"]) < MAX_LISTED:
                state["ev"].append(obs.event_id)
            if state["n"] >= spec.at_least and not state["done"]:
                state["done"] = True
                fired.append(Fired(key, tuple(state["ev"]), {
                    "count": state["n"], "window_s": spec.window,
                    "window_start": format_time(window * spec.window),
                }, obs))
        if state is not None:
            states.put(skey, state, expires=(state["w"] + 1) * spec.window)
        return fired


class Distinct(Kind):
    """At least N distinct values of a field per key within a sliding window."""

    id = "distinct"

    def apply(
        self, rule: StatefulRule, key: str, observations: Sequence[Observation], states: BatchState
    ) -> list[Fired]:
        spec = rule.spec
        assert isinstance(spec, DistinctSpec)
        skey = state_key(rule.id, key)
        seen: dict[str, list[Any]] = (states.get(skey) or {"v": {}})["v"]
        fired: list[Fired] = []
        for obs in observations:
            value = str(obs.payload)[:MAX_VALUE_CHARS]
            previous = seen.get(value)
            if previous is None or previous[0] <= obs.ts:
                seen[value] = [obs.ts, obs.event_id]
            horizon = obs.ts - spec.window
            seen = {v: item for v, item in seen.items() if item[0] >= horizon}
            if len(seen) >= spec.at_least:
                ordered = sorted(seen.items(), key=lambda entry: entry[1][0])
                fired.append(Fired(key, tuple(item[1] for _, item in ordered[-MAX_LISTED:]), {
                    "distinct": len(seen), "window_s": spec.window,
                    "values": sorted(seen)[:MAX_LISTED],
                }, obs))
                seen = {}
        if seen:
            states.put(skey, {"v": seen}, expires=max(i[0] for i in seen.values()) + spec.window)
        else:
            states.drop(skey)
        return fired


class Sequence_(Kind):
    """Ordered steps per key within a time bound (optionally sharing a secret's fingerprint).

    The payload of an observation lists the steps the event matches, each with
    the fingerprints of the findings that matched it: ``[[step, [fp, …]], …]``.
    """

    id = "sequence"

    def apply(
        self, rule: StatefulRule, key: str, observations: Sequence[Observation], states: BatchState
    ) -> list[Fired]:
        spec = rule.spec
        assert isinstance(spec, SequenceSpec)
        skey = state_key(rule.id, key)
        partials: list[dict[str, Any]] = (states.get(skey) or {"p": []})["p"]
        fired: list[Fired] = []
        for obs in observations:
            matched = {int(step): set(fps) for step, fps in obs.payload}
            partials = [p for p in partials if obs.ts - p["t0"] <= spec.within]
            if any(obs.event_id in p["ev"] for p in partials):
                continue
            done = self._advance(spec, partials, matched, obs)
            if done is not None:
                fired.append(Fired(key, tuple(done["ev"][-MAX_LISTED:]), {
                    "steps": [step.name for step in spec.steps], "within_s": spec.within,
                    "first_ts": format_time(done["t0"]),
                }, obs))
                partials = []
            elif 0 in matched and (not spec.join_fingerprint or matched[0]):
                # Every first-step event opens a partial, even one that also advanced an older
                # partial: with a repeated first step, the newest run can complete in time
                # when the older one, anchored on a stale event, cannot.
                first = spec.steps[0]
                partials.append({"i": 1 if first.times == 1 else 0, "n": 0 if first.times == 1
                                 else 1, "t0": obs.ts, "tl": obs.ts, "ev": [obs.event_id],
                                 "fp": sorted(matched[0])})
                partials = _undominated(partials, spec.join_fingerprint)[-MAX_PARTIALS:]
        if partials:
            states.put(skey, {"p": partials}, expires=max(p["t0"] for p in partials) + spec.within)
        else:
            states.drop(skey)
        return fired

    @staticmethod
    def _advance(
        spec: SequenceSpec, partials: list[dict[str, Any]], matched: dict[int, set[str]],
        obs: Observation,
    ) -> dict[str, Any] | None:
        for partial in partials:
            step = partial["i"]
            if step not in matched or obs.ts < partial["tl"]:
                continue
            if spec.join_fingerprint and step > 0 and not set(partial["fp"]) & matched[step]:
                continue
            partial["n"] += 1
            partial["ev"].append(obs.event_id)
            partial["tl"] = obs.ts
            if step == 0:
                partial["fp"] = sorted(set(partial["fp"]) | matched[0])
            if partial["n"] >= spec.steps[step].times:
                partial["i"] += 1
                partial["n"] = 0
            if partial["i"] == len(spec.steps):
                return partial
        return None


def _dominates(a: dict[str, Any], b: dict[str, Any], join_fingerprint: bool) -> bool:
    """``a`` can complete whenever ``b`` can: it started no earlier and got at least as far
    (and, joined by fingerprint, holds every fingerprint ``b`` holds)."""
    return a["t0"] >= b["t0"] and (a["i"], a["n"]) >= (b["i"], b["n"]) and (
        not join_fingerprint or set(a["fp"]) >= set(b["fp"]))


def _undominated(partials: list[dict[str, Any]], join_fingerprint: bool) -> list[dict[str, Any]]:
    """The partials no newer one dominates, oldest first."""
    kept: list[dict[str, Any]] = []
    for partial in reversed(partials):
        if not any(_dominates(newer, partial, join_fingerprint) for newer in kept):
            kept.append(partial)
    kept.reverse()
    return kept


def _metric(aggregate: str, agg: list[Any]) -> float | None:
    count: int = agg[0]
    if count == 0:
        return None
    if aggregate == "count":
        return float(count)
    if aggregate == "sum":
        return float(agg[1])
    if aggregate in ("mean", "rate"):
        return float(agg[1]) / float(count)
    # p95 from the histogram: the upper edge of the bin holding the 95th percentile
    rank = math.ceil(0.95 * count)
    seen = 0
    for bin_text, hits in sorted(agg[1].items(), key=lambda item: int(item[0])):
        seen += hits
        if seen >= rank:
            return math.pow(_P95_BASE, int(bin_text))
    return None


def _add(aggregate: str, agg: list[Any], value: float | list[Any]) -> None:
    """Add one value, or a partial aggregate ``[n, sum or histogram]`` merged in stage one."""
    if isinstance(value, list):
        agg[0] += value[0]
        if aggregate == "p95":
            for bin_text, hits in value[1].items():
                agg[1][bin_text] = agg[1].get(bin_text, 0) + hits
        else:
            agg[1] += value[1]
        return
    agg[0] += 1
    if aggregate == "p95":
        bin_text = str(math.ceil(math.log(value, _P95_BASE)) if value > 1 else 0)
        agg[1][bin_text] = agg[1].get(bin_text, 0) + 1
    elif aggregate != "count":
        agg[1] += value


def _empty(aggregate: str) -> list[Any]:
    return [0, {}] if aggregate == "p95" else [0, 0.0]


def _baseline_state(stored: dict[str, Any] | None, bucketed: bool) -> dict[str, Any]:
    """A baseline state, with what states of older workers lack filled in.

    Bucketed aggregates keep the key's recent closed buckets (``h``, ``[bucket,
    aggregate]`` in order) open for late events, and ``base``, ``[ewma, n, last
    bucket]`` of everything folded before them; ``ewma``/``n`` are the result of
    folding both, kept for the current bucket's test.
    """
    state = stored or {"b": None, "agg": None, "ewma": None, "n": 0, "fired": []}
    if bucketed and "h" not in state:  # everything before the current bucket is folded
        state["h"] = []
        state["base"] = [state["ewma"], state["n"], None if state["b"] is None else state["b"] - 1]
    if not isinstance(state["fired"], list):
        state["fired"] = [] if state["fired"] is None else [state["fired"]]
    return state


def _decayed(
    spec: BaselineSpec, ewma: float | None, n: int, last: int | None, until: int
) -> tuple[float | None, int]:
    """Counts and sums take the empty buckets between ``last`` and ``until`` as zeros."""
    if last is not None and ewma is not None and spec.aggregate in ("count", "sum"):
        gap = until - last - 1
        if gap > 0:
            ewma *= (1 - spec.alpha) ** min(gap, 10_000)
            n += gap
    return ewma, n


def _fold(spec: BaselineSpec, base: list[Any], bucket: int, agg: list[Any]) -> list[Any]:
    """``base`` (``[ewma, n, last bucket]``) after the empty buckets and then ``bucket``."""
    ewma, n = _decayed(spec, base[0], base[1], base[2], bucket)
    metric = _metric(spec.aggregate, agg)
    if metric is not None:
        ewma = metric if ewma is None else spec.alpha * metric + (1 - spec.alpha) * ewma
        n += 1
    return [ewma, n, bucket]


def _replay(
    spec: BaselineSpec, base: list[Any], history: Sequence[list[Any]], until: int
) -> tuple[float | None, int]:
    """The EWMA and its bucket count at the start of bucket ``until``."""
    for bucket, agg in history:
        base = _fold(spec, base, bucket, agg)
    return _decayed(spec, base[0], base[1], base[2], until)


class Baseline(Kind):
    """A per-key metric per bucket (or per event) against the key's own EWMA baseline.

    Fires at most once per bucket, only after ``warmup`` completed buckets (or
    events, for ``each``), unless the rule compares with an absolute
    ``exceeds`` value, which needs no history.
    """

    id = "baseline"

    def compact(self, rule: StatefulRule, observations: list[Observation]) -> list[Observation]:
        """One observation per (key, bucket) carrying the partial aggregate, stamped with the
        last event of it: a burst inside one batch is then judged on the batch's total."""
        spec = rule.spec
        assert isinstance(spec, BaselineSpec)
        if spec.aggregate == "each" or len(observations) < 2:
            return observations
        merged: dict[tuple[str, int], tuple[list[Any], Observation]] = {}
        for obs in observations:
            slot = (obs.key, int(obs.ts // spec.bucket))
            partial, last = merged.get(slot) or (_empty(spec.aggregate), obs)
            _add(spec.aggregate, partial, float(obs.payload))
            merged[slot] = (partial, obs if obs.ts >= last.ts else last)
        return [last._replace(payload=partial) for partial, last in merged.values()]

    def apply(
        self, rule: StatefulRule, key: str, observations: Sequence[Observation], states: BatchState
    ) -> list[Fired]:
        spec = rule.spec
        assert isinstance(spec, BaselineSpec)
        skey = state_key(rule.id, key)
        state = _baseline_state(states.get(skey), spec.aggregate != "each")
        fired: list[Fired] = []
        for obs in observations:
            if spec.aggregate == "each":
                value = float(obs.payload)
                baseline = state["ewma"]
                if self._fires(spec, value, baseline, state["n"], 1):
                    fired.append(self._fired(spec, key, obs, metric=value, baseline=baseline,
                                             samples=1, bucket_start=None))
                state["ewma"] = value if baseline is None else (
                    spec.alpha * value + (1 - spec.alpha) * baseline)
                state["n"] += 1
                continue
            bucket = int(obs.ts // spec.bucket)
            value_or_partial = obs.payload if isinstance(obs.payload, list) else float(obs.payload)
            if state["b"] is None:
                state["b"], state["agg"] = bucket, _empty(spec.aggregate)
            elif bucket > state["b"]:
                self._close(spec, state, bucket)
            elif bucket < state["b"]:
                late = self._late(spec, state, bucket, value_or_partial)
                if late is not None:
                    fired.append(self._fired(spec, key, obs, **late))
                continue
            _add(spec.aggregate, state["agg"], value_or_partial)
            if bucket in state["fired"]:
                continue
            metric = _metric(spec.aggregate, state["agg"])
            samples = state["agg"][0]
            if metric is not None and self._fires(spec, metric, state["ewma"], state["n"],
                                                  samples):
                state["fired"].append(bucket)
                fired.append(self._fired(spec, key, obs, metric=metric, baseline=state["ewma"],
                                         samples=samples, bucket_start=bucket * spec.bucket))
        states.put(skey, state)
        return fired

    @staticmethod
    def _close(spec: BaselineSpec, state: dict[str, Any], bucket: int) -> None:
        """Keep the finished bucket open for late events; fold what falls out of the
        allowance into the base; the EWMA is the base followed by the kept buckets."""
        state["h"].append([state["b"], state["agg"]])
        horizon = bucket - spec.late_buckets
        while state["h"] and state["h"][0][0] < horizon:
            state["base"] = _fold(spec, state["base"], *state["h"].pop(0))
        state["fired"] = [b for b in state["fired"] if b >= horizon]
        state["b"], state["agg"] = bucket, _empty(spec.aggregate)
        state["ewma"], state["n"] = _replay(spec, state["base"], state["h"], bucket)

    def _late(
        self, spec: BaselineSpec, state: dict[str, Any], bucket: int, value: float | list[Any]
    ) -> dict[str, Any] | None:
        """Add a late value to its kept bucket; what to alert on if that bucket now fires."""
        folded_until = state["base"][2]
        if bucket < state["b"] - spec.late_buckets or (
            folded_until is not None and bucket <= folded_until
        ):
            return None  # beyond the allowance: dropped
        history: list[list[Any]] = state["h"]
        index = next((i for i, (b, _) in enumerate(history) if b >= bucket), len(history))
        if index == len(history) or history[index][0] != bucket:
            history.insert(index, [bucket, _empty(spec.aggregate)])
        agg = history[index][1]
        _add(spec.aggregate, agg, value)
        state["ewma"], state["n"] = _replay(spec, state["base"], history, state["b"])
        if bucket in state["fired"]:
            return None
        baseline, warm = _replay(spec, state["base"], history[:index], bucket)
        metric = _metric(spec.aggregate, agg)
        if metric is None or not self._fires(spec, metric, baseline, warm, agg[0]):
            return None
        state["fired"].append(bucket)
        return {"metric": metric, "baseline": baseline, "samples": agg[0],
                "bucket_start": bucket * spec.bucket}

    @staticmethod
    def _fires(
        spec: BaselineSpec, metric: float, baseline: float | None, warm: int, samples: int
    ) -> bool:
        if samples < spec.min_samples:
            return False
        if spec.exceeds is not None:
            return metric > spec.exceeds
        if warm < spec.warmup or baseline is None or metric < spec.min_value:
            return False
        if spec.above is not None and metric > spec.above * baseline:
            return True
        return spec.drift is not None and baseline > 0 and (
            abs(metric - baseline) > spec.drift * baseline)

    @staticmethod
    def _fired(
        spec: BaselineSpec, key: str, obs: Observation, *, metric: float,
        baseline: float | None, samples: int, bucket_start: float | None,
    ) -> Fired:
        detail: dict[str, Any] = {
            "aggregate": spec.aggregate, "observed": round(metric, 6),
            "baseline": None if baseline is None else round(baseline, 6), "samples": samples,
        }
        if bucket_start is not None:
            detail["bucket_start"] = format_time(bucket_start)
            detail["bucket_s"] = spec.bucket
        return Fired(key, (obs.event_id,), detail, obs)


class Profile(Kind):
    """Per-event checks against the user's context (work hours, usual geos), made in stage one."""

    id = "profile"

    def apply(
        self, rule: StatefulRule, key: str, observations: Sequence[Observation], states: BatchState
    ) -> list[Fired]:
        return [Fired(key, (obs.event_id,), dict(obs.payload), obs) for obs in observations]


class Campaign(Kind):
    """The same (or a near-duplicate) prompt from at least N distinct users within a window.

    The payload is ``[user, [fingerprint, …]]``; in ``near`` mode every band
    key of an event lives in the same partition (the route key is the rule
    id), so one campaign raises one alert, not one per band.
    """

    id = "campaign"

    def apply(
        self, rule: StatefulRule, key: str, observations: Sequence[Observation], states: BatchState
    ) -> list[Fired]:
        spec = rule.spec
        assert isinstance(spec, CampaignSpec)
        fired: list[Fired] = []
        for obs in observations:
            user, prints = obs.payload
            horizon = obs.ts - spec.window
            tracked: dict[str, dict[str, Any]] = {}
            for fingerprint in prints:
                state = states.get(state_key(rule.id, fingerprint)) or {"u": {}, "f": None}
                users = {u: item for u, item in state["u"].items() if item[0] >= horizon}
                users[user] = [obs.ts, obs.event_id]
                tracked[fingerprint] = {"u": users, "f": state["f"]}
            if not tracked:
                continue
            already = any(s["f"] is not None and s["f"] >= horizon for s in tracked.values())
            best_print, best = max(tracked.items(), key=lambda entry: len(entry[1]["u"]))
            if not already and len(best["u"]) >= spec.users_at_least:
                ordered = sorted(best["u"].items(), key=lambda entry: entry[1][0])
                fired.append(Fired(best_print, tuple(i[1] for _, i in ordered[-MAX_LISTED:]), {
                    "users": sorted(best["u"])[:MAX_LISTED], "distinct_users": len(best["u"]),
                    "window_s": spec.window, "fingerprint": best_print,
                    "similarity": spec.similarity,
                }, obs))
                for state in tracked.values():
                    state["f"] = obs.ts
            for fingerprint, state in tracked.items():
                newest = max([i[0] for i in state["u"].values()] + [state["f"] or 0.0])
                states.put(state_key(rule.id, fingerprint), state, expires=newest + spec.window)
        return fired


def _registry(kinds: Sequence[Kind]) -> Mapping[str, Kind]:
    registry: dict[str, Kind] = {}
    for kind in kinds:
        if kind.id in registry:
            raise ValueError(f"stateful kind {kind.id!r} registered twice")
        registry[kind.id] = kind
    return MappingProxyType(registry)


KINDS: Mapping[str, Kind] = _registry(
    (Threshold(), Distinct(), Sequence_(), Baseline(), Profile(), Campaign())
)
