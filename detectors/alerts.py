"""Alert v1 records (DESIGN.md) built from a finding and the event it came from."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from detectors.findings import Finding


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _user(event: Mapping[str, Any]) -> dict[str, Any]:
    user = event.get("user")
    if not isinstance(user, Mapping):
        user = {}
    privileged = user.get("privileged")
    known = user.get("known")
    return {
        "id": _text(user.get("id")),
        "role": _text(user.get("role")),
        "department": _text(user.get("department")),
        "privileged": privileged if isinstance(privileged, bool) else False,
        "known": known if isinstance(known, bool) else False,
    }


def build_alert(
    finding: Finding,
    event: Mapping[str, Any],
    *,
    detected_at: str,
    alert_id: str | None = None,
) -> dict[str, Any]:
    """An Alert v1 dict. Evidence items omit ``fingerprint`` when the rule does not mask.

    Missing or mistyped event fields become null; an absent ``user.known`` or
    ``user.privileged`` reads as false (enrichment did not vouch for the user).
    """
    evidence: list[dict[str, Any]] = []
    for item in finding.evidence:
        entry: dict[str, Any] = {"start": item.start, "end": item.end, "excerpt": item.excerpt}
        if item.fingerprint is not None:
            entry["fingerprint"] = item.fingerprint
        evidence.append(entry)
    return {
        "alert_id": alert_id or uuid.uuid4().hex,
        "rule_id": finding.rule_id,
        "title": finding.title,
        "severity": finding.severity,
        "category": finding.category,
        "owasp": list(finding.owasp),
        "detector": finding.detector,
        "event_id": _text(event.get("event_id")),
        "trace_id": _text(event.get("trace_id")),
        "kind": _text(event.get("kind")),
        "ts": _text(event.get("ts")),
        "detected_at": detected_at,
        "user": _user(event),
        "service": _text(event.get("service")),
        "field": finding.field,
        "evidence": evidence,
        "score": finding.score,
        "tags": list(finding.tags),
        "count": 1,
    }
