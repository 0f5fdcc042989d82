"""Recorded events through the stateful rules offline: what ``scan`` and ``backtest`` share.

A worker folds each batch's observations into its tables as the stream brings
them; a file or an archive brings them in whatever order it holds them. The
:class:`Correlator` puts them back in event-time order within a bounded
window, folds them a chunk at a time into one in-memory state, drops expired
state as event time moves (so a long input keeps memory bounded), and at the
end of the input closes every dedup window (their roll-up alerts go out, so
the counts add up to the alerts raised).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO, TextIO

import orjson

from detectors import Engine, Finding, build_alert
from detectors.stateful import MemoryStore, Observation, StatefulDetector, findings_of
from detectors.stateful.hygiene import sweep, watermark_key
from detectors.stateful.store import BatchState, expired
from pipeline.lines import read_lines
from pipeline.process import utc_now
from pipeline.stateful import EXPIRY_GRACE, SWEEP_EVERY
from pipeline.users import UserDirectory, UserRecordError, validate_user

_SCOPE = "0"  # offline, all state is one partition


def load_users(path: str | None, err: TextIO) -> UserDirectory | None:
    """The user-context records of a JSON-lines file (none without one); None, with the
    offending line reported, if a record is not valid."""
    if path is None:
        return UserDirectory()
    records = []
    for number, raw in read_lines(path):
        try:
            records.append(validate_user(orjson.loads(raw)))
        except (orjson.JSONDecodeError, UserRecordError) as exc:
            print(f"{path}:{number}: rejected: {exc}", file=err)
            return None
    return UserDirectory(records)


def emit(alerts: list[dict[str, Any]], by_rule: Counter[str], output: BinaryIO | None) -> None:
    """Count alerts by rule and write them as JSON lines (when there is an output)."""
    for alert in alerts:
        by_rule[str(alert["rule_id"])] += 1
        if output is not None:
            output.write(orjson.dumps(alert) + b"\n")


def detect(engine: Engine, event: Mapping[str, Any], correlator: Correlator | None,
           by_rule: Counter[str], output: BinaryIO | None) -> list[Finding]:
    """Scan one enriched event; write its alerts, and those the stateful rules raise on it.
    Returns the engine's findings."""
    detected_at = utc_now()
    findings = engine.scan(event)
    emit([build_alert(f, event, detected_at=detected_at) for f in findings], by_rule, output)
    if correlator is not None:
        emit(correlator.add(event, findings), by_rule, output)
    return findings


class Correlator:
    """Stateful rules over recorded events and their findings, in one in-memory state.

    Events are held back in a heap of ``reorder`` events and released oldest
    first, so events up to that many places out of time order are folded in
    order; one further behind is folded anyway and counted in :attr:`late`
    (a sequence or baseline may miss it, as a worker would).
    """

    CHUNK = 1000  # events folded per stage-two pass (a worker's batch)
    REORDER = 10_000  # events held back to restore event-time order

    def __init__(self, detector: StatefulDetector, users: UserDirectory, *,
                 reorder: int | None = None, chunk: int | None = None) -> None:
        self._detector = detector
        self._context = users.get
        self._store = MemoryStore()
        self.reorder = self.REORDER if reorder is None else reorder
        self._chunk = self.CHUNK if chunk is None else chunk
        self._held: list[tuple[float, int, list[Observation]]] = []
        self._received = 0
        self._released = 0
        self._newest = -math.inf
        self._swept = -math.inf
        self._observations: list[Observation] = []
        self.late = 0

    @property
    def states(self) -> int:
        """How many state keys are kept (what memory the rules' state takes)."""
        return len(self._store.data)

    def add(self, event: Mapping[str, Any], findings: Sequence[Finding]) -> list[dict[str, Any]]:
        """Take one event and its findings; the alerts of any chunk this completes."""
        observations = self._detector.observe(event, findings_of(findings), self._context)
        if not observations:
            return []
        heapq.heappush(self._held, (observations[0].ts, self._received, observations))
        self._received += 1
        if len(self._held) <= self.reorder:
            return []
        return self._release(heapq.heappop(self._held))

    def finish(self) -> list[dict[str, Any]]:
        """The end of the input: fold what is held, then close every dedup window."""
        out: list[dict[str, Any]] = []
        while self._held:
            out += self._release(heapq.heappop(self._held))
        out += self._fold()
        states = BatchState(self._store, _SCOPE)
        out += sweep(states, _SCOPE, math.inf)
        states.flush()
        return out

    def _release(self, item: tuple[float, int, list[Observation]]) -> list[dict[str, Any]]:
        ts, _, observations = item
        if ts < self._newest:
            self.late += 1
        self._newest = max(self._newest, ts)
        self._observations += observations
        self._released += 1
        return self._fold() if self._released % self._chunk == 0 else []

    def _fold(self) -> list[dict[str, Any]]:
        observations, self._observations = self._observations, []
        if not observations:
            return []
        alerts = self._detector.apply(self._detector.compact(observations), (), self._store,
                                      scope=_SCOPE, context=self._context,
                                      detected_at=utc_now())
        self._drop_expired()
        return alerts

    def _drop_expired(self) -> None:
        """As the worker does: once event time has moved ``SWEEP_EVERY`` since the last time,
        drop the states that expired more than ``EXPIRY_GRACE`` before it."""
        watermark = self._store.get(watermark_key(_SCOPE))
        if watermark is None or watermark - self._swept < SWEEP_EVERY:
            return
        self._swept = watermark
        data = self._store.data
        decoded = ((key, orjson.loads(raw)) for key, raw in data.items())
        for key in expired(decoded, _SCOPE, watermark - EXPIRY_GRACE):
            del data[key]
