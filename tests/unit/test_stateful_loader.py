"""Every stateful loader error: its message and its file:line:col (detectors/stateful/loader.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from detectors import RuleSetError
from detectors.stateful import load_stateful_rules, load_suppressions

BASE = """\
schema: llmtrail.stateful/v1
tool_categories:
  shell: ["shell.*"]
rules:
  - id: r1
    title: t
    description: d
    severity: high
    category: anomaly
    owasp: []
    kind: threshold
    by: user.id
    window: 10m
    at_least: 5
    examples:
      fire:
        - events: [{at: 0s}]
"""
CASES: dict[str, tuple[str, list[str]]] = {
    "schema": (
        BASE.replace("llmtrail.stateful/v1", "llmtrail.stateful/v2"),
        [
            ("r.yaml:1:9: -: unsupported schema version 'llmtrail.stateful/v2': "
             "this engine reads 'llmtrail.stateful/v1'; set 'schema: "
             "llmtrail.stateful/v1' and check the file with 'llmtrail rules "
             "lint'"),
        ],
    ),
    "schema_other": (
        BASE.replace("llmtrail.stateful/v1", "llmtrail.rules/v1"),
        ["r.yaml:1:9: -: unknown schema 'llmtrail.rules/v1': expected 'llmtrail.stateful/v1'"],
    ),
    "kind": (
        BASE.replace("kind: threshold", "kind: thresold"),
        [
            ("r.yaml:11:11: r1: 'kind' 'thresold' is not one of threshold, "
             'distinct, sequence, baseline, profile, campaign (did you mean '
             "'threshold'?)"),
        ],
    ),
    "window": (
        BASE.replace("window: 10m", "window: 10 minutes"),
        [
            ("r.yaml:13:13: r1: 'window' must be a duration such as 90s, 10m, "
             "1h or 7d, got '10 minutes'"),
        ],
    ),
    "at_least": (
        BASE.replace("at_least: 5", "at_least: 1"),
        ["r.yaml:14:15: r1: 'at_least' must be between 2 and 100000"],
    ),
    "wrong_kind_key": (
        BASE.replace("at_least: 5", "at_least: 5\n    within: 60s"),
        ["r.yaml:15:5: r1: key 'within' belongs to kind 'sequence', not 'threshold'"],
    ),
    "unknown_key": (
        BASE.replace("at_least: 5", "at_least: 5\n    windw: 1h"),
        [
            ("r.yaml:15:5: r1: unknown key 'windw' in a stateful rule (did you "
             "mean 'window'?); allowed: id, title, description, severity, "
             'category, owasp, kind, by, examples, match, dedup, rate_limit, '
             'enabled, tags, score, window, at_least, mode'),
        ],
    ),
    "missing": (
        BASE.replace("    window: 10m\n", ""),
        ["r.yaml:5:5: r1: missing required key 'window' for kind 'threshold'"],
    ),
    "by": (
        BASE.replace("by: user.id", "by: usr.id"),
        [
            ("r.yaml:12:9: r1: selector 'usr.id' has unknown root 'usr' (did "
             "you mean 'user'?); known roots: prompt, response, tool, "
             'system_prompt, user, model, usage, tags, service, environment, '
             'kind, session_id, trace_id, latency_ms'),
        ],
    ),
    "match": (
        BASE
            .replace(
                "at_least: 5",
                "at_least: 5\n"
                "    match: {finding: {category: promptinjection}, tool_category: shel}"),
        [
            ("r.yaml:15:33: r1: 'finding.category' 'promptinjection' is not one "
             'of prompt_injection, jailbreak, pii, secret, insecure_output, '
             'tool_abuse, data_exfiltration, system_prompt_leak, compliance, '
             "anomaly (did you mean 'prompt_injection'?)"),
            ("r.yaml:15:66: r1: unknown tool category 'shel' (did you mean "
             "'shell'?); defined in 'tool_categories': shell"),
        ],
    ),
    "where": (
        BASE.replace("at_least: 5", "at_least: 5\n    match: {where: {'latency_ms|gtx': 5}}"),
        [
            ("r.yaml:15:21: r1: 'latency_ms|gtx': unknown modifier 'gtx' "
             '(known: all, cased, cidr, contains, count, endswith, equals, exists, '
             'fieldref, gt, gte, in, lt, lte, re, startswith)'),
        ],
    ),
    "steps": (
        BASE
            .replace("kind: threshold", "kind: sequence")
            .replace(
                "    window: 10m\n    at_least: 5\n",
                "    within: 60s\n"
                "    steps: [{kind: prompt}]\n"),
        ["r.yaml:14:12: r1: 'steps' needs at least two steps"],
    ),
    "join": (
        BASE
            .replace("kind: threshold", "kind: sequence")
            .replace(
                "    window: 10m\n    at_least: 5\n",
                "    within: 60s\n"
                "    join: fingerprint\n"
                "    steps: [{kind: prompt}, {kind: tool_call}]\n"),
        ["r.yaml:14:11: r1: 'join: fingerprint' needs a 'finding' test in every step"],
    ),
    "baseline": (
        BASE
            .replace("kind: threshold", "kind: baseline")
            .replace(
                "    window: 10m\n    at_least: 5\n",
                "    aggregate: mean\n"
                "    above: 2\n"
                "    drift: 0.2\n"),
        [
            ("r.yaml:5:5: r1: a baseline rule needs exactly one of 'above', "
             "'drift' or 'exceeds', got above, drift"),
            "r.yaml:5:5: r1: aggregate 'mean' needs a 'bucket' duration",
            "r.yaml:5:5: r1: aggregate 'mean' needs a 'value' selector",
        ],
    ),
    "late_buckets": (
        BASE
            .replace("kind: threshold", "kind: baseline")
            .replace(
                "    window: 10m\n    at_least: 5\n",
                "    aggregate: count\n"
                "    bucket: 1h\n"
                "    above: 3\n"
                "    late_buckets: 200\n"),
        ["r.yaml:16:19: r1: 'late_buckets' must be between 0 and 168"],
    ),
    "late_buckets_each": (
        BASE
            .replace("kind: threshold", "kind: baseline")
            .replace(
                "    window: 10m\n    at_least: 5\n",
                "    aggregate: each\n"
                "    value: usage.prompt_tokens\n"
                "    above: 3\n"
                "    late_buckets: 2\n"),
        ["r.yaml:16:5: r1: aggregate 'each' takes no 'late_buckets'"],
    ),
    "scenario_at": (
        BASE.replace("{at: 0s}", "{at: soon}"),
        ["r.yaml:17:25: r1: 'at' must be a time offset such as 0s, 90s or 2h, got 'soon'"],
    ),
    "no_fire": (
        BASE
            .replace(
                "      fire:\n        - events: [{at: 0s}]\n",
                "      no_fire:\n"
                "        - events: [{at: 0s}]\n"),
        ["r.yaml:16:7: r1: the rule has no fire scenario: add at least one under 'examples.fire'"],
    ),
    "repeat": (
        BASE.replace("{at: 0s}", "{at: 0s, repeat: 3}"),
        ["r.yaml:17:20: r1: 'repeat' and 'every' go together"],
    ),
    "dup": (
        BASE + BASE.split("rules:\n")[1],
        ["r.yaml:18:9: r1: duplicate rule id 'r1' (first defined at r.yaml:5)"],
    ),
    "hygiene": (
        BASE + "hygiene:\n  - {rules: [rf-*], by: user.id}\n",
        ["r.yaml:19:5: -: a hygiene policy needs 'dedup' or 'rate_limit'"],
    ),
    "rate": (
        BASE.replace("at_least: 5", "at_least: 5\n    rate_limit: {max: 0, per: 1h}"),
        ["r.yaml:15:23: r1: 'rate_limit.max' must be between 1 and 100000"],
    ),
}


def errors_of(tmp_path: Path, text: str, name: str = "r.yaml") -> list[str]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RuleSetError) as caught:
        if name == "s.yaml":
            load_suppressions(path)
        else:
            load_stateful_rules([path])
    return [str(e).replace(str(tmp_path) + "/", "") for e in caught.value.errors]


def test_base_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(BASE, encoding="utf-8")
    assert [rule.id for rule in load_stateful_rules([path]).rules] == ["r1"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_error_message(tmp_path: Path, name: str) -> None:
    text, expected = CASES[name]
    assert errors_of(tmp_path, text) == expected


def test_suppression_errors(tmp_path: Path) -> None:
    text = ("schema: llmtrail.suppressions/v1\nsuppressions:\n"
            "  - {rule: x, until: tomorrow, reason: r}\n"
            "  - {rule: x, user: u, until: '2027-01-01T00:00:00Z'}\n")
    assert errors_of(tmp_path, text, "s.yaml") == [
        ("s.yaml:3:5: -: a suppression needs 'user' or 'service' (to "
         'silence a rule everywhere, disable it instead)'),
        ("s.yaml:3:15: -: 'until' must be an RFC 3339 time with a UTC "
         "offset, got 'tomorrow'"),
        "s.yaml:4:5: -: a suppression needs 'reason'",
    ]


def test_suppressions_load(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("schema: llmtrail.suppressions/v1\nsuppressions:\n"
                    "  - {rule: 'pi-*', service: bot, until: '2027-01-01T00:00:00Z', reason: r}\n")
    [entry] = load_suppressions(path)
    assert (entry.rule, entry.user, entry.service, entry.line) == ("pi-*", None, "bot", 3)
