"""The shipped rule packs load without errors and every rule's examples hold."""

from __future__ import annotations

from pathlib import Path

from detectors import Engine, load_rules, run_examples

RULES = Path(__file__).resolve().parents[2] / "rules"


def test_shipped_packs_load_and_their_examples_pass() -> None:
    ruleset = load_rules([RULES])
    assert len(ruleset.rules) > 20
    failures = run_examples(ruleset, Engine(ruleset, use_hyperscan=False))
    assert failures == [], "\n".join(str(f) for f in failures)

