"""Alert hygiene: suppressions, dedup by (rule, key) with a TTL, per-rule rate limits.

Everything runs on event time. Dedup: the first alert of a (rule, key) goes
out and opens a TTL; later ones within it are folded (not sent) and counted;
once the TTL has passed (the next alert of that key, or the partition's
event-time watermark, says so) one roll-up alert goes out whose ``count`` is
the number folded, carrying the last folded alert's details. So the counts
of the alerts sent add up to the alerts raised. Rate limits cap the alerts a
rule sends per window *per state partition* (``scope``); alerts over the cap
are dropped and their number is reported as ``rate_limited`` on the rule's
next alert that goes out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from detectors.stateful.model import RateLimit, Suppression
from detectors.stateful.store import BatchState


def _dedup_key(rule_id: str, key: str) -> str:
    return f"dd\x1f{rule_id}\x1f{key}"


def _index_key(scope: str) -> str:
    return f"di\x1f{scope}"


def _rate_key(rule_id: str, scope: str) -> str:
    return f"rl\x1f{rule_id}\x1f{scope}"


def watermark_key(scope: str) -> str:
    return f"wm\x1f{scope}"


def rollup(alert: dict[str, Any], folded: int) -> dict[str, Any]:
    """The alert that stands for ``folded`` duplicates (a copy of the last one)."""
    out = dict(alert)
    out["count"] = folded
    digest = hashlib.blake2b(f"{alert['alert_id']}:rollup".encode(), digest_size=16)
    out["alert_id"] = digest.hexdigest()
    return out


class Suppressions:
    """A run-time list of suppressions, looked up by rule id (exact ids first, then globs)."""

    def __init__(self, entries: Sequence[Suppression] = ()) -> None:
        self.entries = tuple(entries)
        self._exact: dict[str, list[Suppression]] = {}
        self._globs: list[Suppression] = []
        for entry in self.entries:
            if any(ch in entry.rule for ch in "*?["):
                self._globs.append(entry)
            else:
                self._exact.setdefault(entry.rule, []).append(entry)

    def __len__(self) -> int:
        return len(self.entries)

    def covers(self, rule_id: str, user: str | None, service: str | None, at: float) -> bool:
        candidates = self._exact.get(rule_id)
        if candidates and any(s.covers(rule_id, user, service, at) for s in candidates):
            return True
        return any(s.covers(rule_id, user, service, at) for s in self._globs)


def admit(
    alert: dict[str, Any],
    *,
    rule_id: str,
    key: str,
    ts: float,
    dedup: float | None,
    rate_limit: RateLimit | None,
    states: BatchState,
    scope: str,
) -> list[dict[str, Any]]:
    """The alerts to send now for one raised alert (itself, a roll-up, both, or none)."""
    out: list[dict[str, Any]] = []
    if dedup is not None:
        dkey = _dedup_key(rule_id, key)
        state = states.get(dkey)
        if state is not None and ts < state["until"]:
            state["n"] += 1
            state["last"] = alert
            states.put(dkey, state)
            return []
        if state is not None and state["n"] > 0:
            out.append(rollup(state["last"], state["n"]))
        states.put(dkey, {"until": ts + dedup, "n": 0, "last": None})
        _index(states, scope, dkey, ts + dedup)
    if rate_limit is not None and not _within_rate(
        alert, rule_id=rule_id, ts=ts, limit=rate_limit, states=states, scope=scope
    ):
        return out
    out.append(alert)
    return out


def _within_rate(
    alert: dict[str, Any], *, rule_id: str, ts: float, limit: RateLimit, states: BatchState,
    scope: str,
) -> bool:
    rkey = _rate_key(rule_id, scope)
    window = int(ts // limit.per)
    state = states.get(rkey)
    if state is None or window > state["w"]:
        dropped = state["dropped"] if state is not None else 0
        state = {"w": window, "n": 0, "dropped": dropped}
    if state["n"] >= limit.max:
        state["dropped"] += 1
        states.put(rkey, state)
        return False
    state["n"] += 1
    if state["dropped"]:
        alert["rate_limited"] = state["dropped"]
        state["dropped"] = 0
    states.put(rkey, state)
    return True


def _index(states: BatchState, scope: str, dkey: str, until: float) -> None:
    """Every open dedup key is listed per scope, so :func:`sweep` can close and drop it."""
    index = states.get(_index_key(scope)) or {}
    index[dkey] = until
    states.put(_index_key(scope), index)


def sweep(states: BatchState, scope: str, watermark: float) -> list[dict[str, Any]]:
    """Close every dedup key of the scope whose TTL ended by ``watermark``.

    Returns a roll-up for each that folded duplicates; the keys are dropped.
    """
    index = states.get(_index_key(scope))
    if not index:
        return []
    out: list[dict[str, Any]] = []
    for dkey, until in sorted(index.items(), key=lambda item: (item[1], item[0])):
        if until > watermark:
            continue
        state = states.get(dkey)
        if state is not None and state["n"] > 0:
            out.append(rollup(state["last"], state["n"]))
        states.drop(dkey)
        del index[dkey]
    states.put(_index_key(scope), index)
    return out
