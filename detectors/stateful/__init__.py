"""Stateful detection: windows, sequences, baselines and campaigns over the event stream.

Pure like the rest of ``detectors``: events, findings and a state store in,
alerts out; no Kafka, no asyncio, no clock (event time only). The worker
wires it to Faust tables in ``pipeline.stateful``. See docs/stateful.md.
"""

from detectors.stateful.hygiene import Suppressions
from detectors.stateful.kinds import KINDS, Observation
from detectors.stateful.loader import load_stateful_rules, load_suppressions
from detectors.stateful.model import FindingView, StatefulRule, StatefulRuleSet
from detectors.stateful.runner import (
    PatternAlert,
    StatefulDetector,
    findings_of,
    findings_of_alert,
    partition_of,
)
from detectors.stateful.scenarios import ScenarioFailure, run_scenarios
from detectors.stateful.store import MemoryStore, Store

__all__ = [
    "KINDS",
    "FindingView",
    "MemoryStore",
    "Observation",
    "PatternAlert",
    "ScenarioFailure",
    "StatefulDetector",
    "StatefulRule",
    "StatefulRuleSet",
    "Store",
    "Suppressions",
    "findings_of",
    "findings_of_alert",
    "load_stateful_rules",
    "load_suppressions",
    "partition_of",
    "run_scenarios",
]
