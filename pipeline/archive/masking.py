"""The analyst view: archived events with PII and secrets masked as they are read.

The archive keeps the raw bytes; this view runs the detection engine with the rules that mask
(category ``pii``/``secret`` or ``mask: true``) over each event and masks every span they find
in the field where they found it, with the engine's own masking (at most four characters kept at
each end). It scans again after masking, until nothing more is found, because a finding carries a
bounded number of evidence spans. What no masking rule recognises is not masked.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any

import orjson

from detectors import Engine, Finding, RuleSet
from detectors.findings import mask_value

MAX_ROUNDS = 8
_STEP_RE = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def masking_rules(ruleset: RuleSet) -> RuleSet:
    """The rules whose findings are masked, as a rule set of their own."""
    return dataclasses.replace(ruleset, rules=tuple(r for r in ruleset.rules if r.mask))


def _steps(path: str) -> list[str | int]:
    return [name if name else int(index) for name, index in _STEP_RE.findall(path)]


def _masked_text(text: str, spans: Iterable[tuple[int, int]]) -> str:
    out = text
    for start, end in sorted(set(spans), reverse=True):
        if 0 <= start < end <= len(out):
            out = out[:start] + mask_value(out[start:end]) + out[end:]
    return out


def _apply(event: Any, path: str, spans: list[tuple[int, int]]) -> bool:
    """Mask ``spans`` of the string at ``path``; False when the path leads nowhere."""
    steps = _steps(path)
    node = event
    for step in steps[:-1]:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return False
    last = steps[-1] if steps else None
    try:
        value = node[last]
    except (KeyError, IndexError, TypeError):
        return False
    if not isinstance(value, str):
        return False
    masked = _masked_text(value, spans)
    if masked == value:
        return False
    node[last] = masked
    return True


class Masker:
    """Masks PII and secrets in raw events with an engine built over the masking rules."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def mask_event(self, event: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """The event with its findings masked in place, and how many spans were masked."""
        masked = 0
        for _ in range(MAX_ROUNDS):
            findings: list[Finding] = self._engine.scan(event)
            changed = False
            for finding in findings:
                spans = [(e.start, e.end) for e in finding.evidence]
                if spans and _apply(event, finding.field, spans):
                    masked += len(spans)
                    changed = True
            if not changed:
                break
        return event, masked

    def mask(self, value: bytes) -> bytes:
        """The masked JSON of a raw event; anything that is not a JSON object is withheld."""
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError:
            event = None
        if not isinstance(event, dict):
            return orjson.dumps({"withheld": f"{len(value)} bytes that are not a JSON object"})
        return orjson.dumps(self.mask_event(event)[0])
