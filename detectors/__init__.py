"""llmtrail's pure detection engine: rules and events in, findings out.

No Kafka, no asyncio, no globals, and never an import of ``pipeline``.
"""

from detectors.alerts import build_alert
from detectors.engine import Engine
from detectors.errors import RuleError, RuleSetError
from detectors.examples import ExampleFailure, run_examples
from detectors.findings import Evidence, Finding
from detectors.loader import load_rules
from detectors.model import SEVERITIES, Rule, RuleSet

__all__ = [
    "SEVERITIES",
    "Engine",
    "Evidence",
    "ExampleFailure",
    "Finding",
    "Rule",
    "RuleError",
    "RuleSet",
    "RuleSetError",
    "build_alert",
    "load_rules",
    "run_examples",
]
