"""Run every stateful rule's scenarios (``llmtrail rules test``, the unit tests).

A scenario's events get the single-event findings a real worker would give
them (from the engine passed in, over the single-event rules), plus any
``findings`` the scenario lists explicitly (for detectors such as ML that
the engine does not run); then the rule alone runs over them, offline, on a
fresh store. A ``fire`` scenario must raise at least one alert of the rule,
a ``no_fire`` scenario none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from detectors.engine import Engine
from detectors.stateful.model import FindingView, Scenario, StatefulRule, StatefulRuleSet
from detectors.stateful.observe import UserContext
from detectors.stateful.runner import StatefulDetector, findings_of


@dataclass(frozen=True, slots=True)
class ScenarioFailure:
    rule_id: str
    file: str
    line: int
    expect: Literal["fire", "no_fire"]
    name: str
    message: str

    def __str__(self) -> str:
        return (f"{self.file}:{self.line}: {self.rule_id}: {self.expect} scenario "
                f"{self.name!r}: {self.message}")


def scenario_events(rule: StatefulRule, scenario: Scenario) -> list[dict[str, Any]]:
    """Complete Event v1 mappings for a scenario's events (ids and a shared trace filled in)."""
    events = []
    for index, given in enumerate(scenario.events):
        event = {"event_id": f"{rule.id}-{scenario.line}-{index}",
                 "trace_id": f"{rule.id}-{scenario.line}", **given}
        event.pop("findings", None)
        events.append(event)
    return events


def _listed(given: Mapping[str, Any]) -> list[FindingView]:
    out = []
    for item in given.get("findings") or ():
        prints = item.get("fingerprint")
        out.append(FindingView(str(item.get("rule", "listed")), str(item.get("category", "")),
                               str(item.get("detector", "pattern")), str(item.get("field", "")),
                               (prints,) if isinstance(prints, str) else ()))
    return out


def run_scenario(
    rule: StatefulRule, scenario: Scenario, engine: Engine, tool_categories: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The alerts the rule raises on the scenario (alone, offline, fresh state)."""
    single = StatefulDetector(StatefulRuleSet((replace(rule, enabled=True),),
                                              tool_categories))
    users = {u["id"]: u for u in scenario.users}
    context: UserContext = users.get
    events = scenario_events(rule, scenario)
    scanned = [(event, findings_of(engine.scan(event)) + _listed(given))
               for event, given in zip(events, scenario.events, strict=True)]
    return single.run(scanned, context=context)


def run_scenarios(ruleset: StatefulRuleSet, engine: Engine) -> list[ScenarioFailure]:
    """Every scenario of every rule (disabled ones included); the failures."""
    failures = []
    for rule in ruleset.rules:
        for scenario in rule.examples:
            alerts = run_scenario(rule, scenario, engine, ruleset.tool_categories)
            if scenario.expect == "fire" and not alerts:
                message = "the rule did not fire"
            elif scenario.expect == "no_fire" and alerts:
                joined = alerts[0]["correlation"]
                message = f"the rule fired on key {joined['key']!r} (events {joined['events']})"
            else:
                continue
            failures.append(ScenarioFailure(rule.id, rule.file, scenario.line, scenario.expect,
                                            scenario.name, message))
    return failures
