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
from detectors.stateful import (
    MemoryStore,
    Observation,
    PatternAlert,
    StatefulDetector,
    findings_of,
)
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
    """Scan one enriched event; write its alerts, and those the stateful rules raise on it
    (with the correlator, alert hygiene and suppressions apply as in a worker). Returns the
    engine's findings."""
    detected_at = utc_now()
    findings = engine.scan(event)
    alerts = [build_alert(f, event, detected_at=detected_at) for f in findings]
    emit(alerts if correlator is None else correlator.add(event, findings, alerts), by_rule,
         output)
    return findings


class Correlator:
    """Stateful rules over recorded events and their findings, in one in-memory state.

    Events are held back in a heap of ``reorder`` events and released oldest
    first, so events up to that many places out of time order are folded in
    order; one further behind is folded anyway and counted in :attr:`late`
    (a sequence or baseline may miss it, as a worker would).

    As a worker's stage one does, :meth:`add` drops the event's single-event
    alerts that a suppression covers (counted in :attr:`suppressed`) and
    holds those a hygiene policy covers, which go through dedup and rate
    limits with the stateful rules' alerts when their chunk is folded.
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
        self._held: list[tuple[float, int, list[Observation], list[PatternAlert]]] = []
        self._received = 0
        self._released = 0
        self._newest = -math.inf
        self._swept = -math.inf
        self._observations: list[Observation] = []
        self._pattern_alerts: list[PatternAlert] = []
        self.late = 0
        self.suppressed = 0

    @property
    def states(self) -> int:
        """How many state keys are kept (what memory the rules' state takes)."""
        return len(self._store.data)

    def add(self, event: Mapping[str, Any], findings: Sequence[Finding],
            alerts: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
        """Take one event, its findings and their alerts; the alerts to write now: those
        no suppression or hygiene policy covers, and those of any chunk this completes."""
        detector = self._detector
        out: list[dict[str, Any]] = []
        held: list[PatternAlert] = []
        for alert in alerts:
            held_back, item = detector.hold(alert)
            if not held_back:
                out.append(alert)
            elif item is None:
                self.suppressed += 1
            else:
                held.append(item)
        observations = detector.observe(event, findings_of(findings), self._context)
        if not observations and not held:
            return out
        ts = observations[0].ts if observations else held[0].ts
        heapq.heappush(self._held, (ts, self._received, observations, held))
        self._received += 1
        if len(self._held) > self.reorder:
            out += self._release(heapq.heappop(self._held))
        return out

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

    def _release(self, item: tuple[float, int, list[Observation], list[PatternAlert]]
                 ) -> list[dict[str, Any]]:
        ts, _, observations, held = item
        if ts < self._newest:
            self.late += 1
        self._newest = max(self._newest, ts)
        self._observations += observations
        self._pattern_alerts += held
        self._released += 1
        return self._fold() if self._released % self._chunk == 0 else []

    def _fold(self) -> list[dict[str, Any]]:
        observations, self._observations = self._observations, []
        held, self._pattern_alerts = self._pattern_alerts, []
        if not observations and not held:
            return []
        alerts = self._detector.apply(self._detector.compact(observations), held, self._store,
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
