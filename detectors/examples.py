"""Run every rule's ``examples`` through an engine (``llmtrail rules test``)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from detectors.engine import Engine
from detectors.fields import set_path
from detectors.model import Example, Rule, RuleSet, TextLeaf, iter_nodes

# Where a string example goes when the rule names no field at all.
_DEFAULT_FIELD = {"prompt": "prompt.text", "response": "response.text", "tool_call": "tool.result"}
_SUMMARY_CHARS = 60


@dataclass(frozen=True, slots=True)
class ExampleFailure:
    rule_id: str
    file: str
    line: int
    kind: Literal["match", "no_match"]
    example: str  # a short summary of the example
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: {self.rule_id}"
        return f"{where}: {self.kind} example {self.example}: {self.message}"


def _summary(value: str | Mapping[str, Any]) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    if len(text) > _SUMMARY_CHARS:
        text = text[: _SUMMARY_CHARS - 1] + "…"
    return repr(text) if isinstance(value, str) else text


def _string_field(rule: Rule) -> str:
    if rule.fields:
        return rule.fields[0]
    for node in iter_nodes(rule.condition):
        if isinstance(node, TextLeaf):
            return node.fields[0]
    return _DEFAULT_FIELD[rule.applies_to[0]]


def example_event(rule: Rule, example: Example) -> dict[str, Any]:
    """The Event v1 mapping an example stands for."""
    event: dict[str, Any] = {
        "event_id": f"example-{rule.id}-{example.line}",
        "trace_id": f"example-{rule.id}",
        "ts": "2026-01-01T00:00:00Z",
        "kind": rule.applies_to[0],
    }
    if isinstance(example.value, str):
        set_path(event, _string_field(rule), example.value)
    else:
        event.update(copy.deepcopy(dict(example.value)))
    return event


def run_examples(ruleset: RuleSet, engine: Engine | None = None) -> list[ExampleFailure]:
    """Check every example of every rule the engine runs; return the failures.

    Without an engine, one is built that also runs disabled rules.
    """
    engine = engine or Engine(ruleset, include_disabled=True)
    active = engine.active_rules
    failures: list[ExampleFailure] = []
    for rule in ruleset.rules:
        if rule.id not in active:
            continue
        for example in rule.examples:
            findings = engine.scan(example_event(rule, example))
            fired = [f for f in findings if f.rule_id == rule.id]
            if example.expect == "match" and not fired:
                message = "the rule did not fire"
            elif example.expect == "no_match" and fired:
                found = fired[0]
                shown = found.evidence[0].excerpt if found.evidence else "no text evidence"
                message = f"the rule fired on {found.field or 'the event'}: {shown}"
            else:
                continue
            failures.append(
                ExampleFailure(
                    rule.id,
                    rule.file,
                    example.line,
                    example.expect,
                    _summary(example.value),
                    message,
                )
            )
    return failures
