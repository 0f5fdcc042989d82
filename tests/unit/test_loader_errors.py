"""Every loader error: its message and its file:line:col."""

from __future__ import annotations

from pathlib import Path

import pytest

from detectors import RuleSetError, load_rules

HEAD = "schema: llmtrail.rules/v1\n"
RULE = """\
rules:
  - id: r1
    title: t
    description: d
    severity: high
    category: prompt_injection
    owasp: [LLM01]
    applies_to: [prompt]
    fields: [prompt.text]
    condition:
      keywords: [bad phrase]
    examples:
      match: ["a bad phrase"]
"""


def errors_of(tmp_path: Path, text: str, name: str = "r.yaml") -> list[str]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RuleSetError) as caught:
        load_rules([path])
    return [str(e).replace(str(tmp_path) + "/", "") for e in caught.value.errors]


def with_rule(**replace: str) -> str:
    text = HEAD + RULE
    for old, new in replace.items():
        text = text.replace(old.replace("_", " "), new)
    return text


CASES = [
    ("yaml syntax", HEAD + "rules: [\n", "r.yaml:3:1: -: YAML syntax error"),
    ("duplicate key", HEAD + RULE.replace("    title: t\n", "    title: t\n    title: u\n"),
     "r.yaml:5:5: -: duplicate key 'title' (first defined at line 4)"),
    ("missing schema", RULE, "r.yaml:1:1: -: missing 'schema'"),
    ("old schema", "schema: llmtrail.rules/v0\n" + RULE,
     "r.yaml:1:9: -: unsupported schema version 'llmtrail.rules/v0': this engine reads "
     "'llmtrail.rules/v1'; to upgrade"),
    ("foreign schema", "schema: sigma\n" + RULE, "r.yaml:1:9: -: unknown schema 'sigma'"),
    ("unknown top key", HEAD + "extra: 1\n" + RULE,
     "r.yaml:2:1: -: unknown key 'extra' in the file"),
    ("unknown rule key", HEAD + RULE.replace("    title: t\n", "    title: t\n    titel: u\n"),
     "r.yaml:5:5: r1: unknown key 'titel' in a rule (did you mean 'title'?)"),
    ("missing field", HEAD + RULE.replace("    severity: high\n", ""),
     "r.yaml:3:5: r1: missing required key 'severity'"),
    ("bad severity", HEAD + RULE.replace("severity: high", "severity: hgih"),
     "r.yaml:6:15: r1: 'severity' 'hgih' is not one of info, low, medium, high, critical "
     "(did you mean 'high'?)"),
    ("bad category", HEAD + RULE.replace("prompt_injection", "injection"),
     "r.yaml:7:15: r1: 'category' 'injection' is not one of"),
    ("bad owasp", HEAD + RULE.replace("[LLM01]", "[LLM11]"),
     "r.yaml:8:13: r1: 'owasp' item 'LLM11' is not one of"),
    ("bad applies_to", HEAD + RULE.replace("applies_to: [prompt]", "applies_to: [chat]"),
     "r.yaml:9:18: r1: 'applies_to' item 'chat' is not one of prompt, response, tool_call"),
    ("bad maturity", HEAD + RULE.replace("    fields:", "    maturity: beta\n    fields:"),
     "r.yaml:10:15: r1: 'maturity' 'beta' is not one of stable, test, experimental"),
    ("wrong type", HEAD + RULE.replace("owasp: [LLM01]", "owasp: LLM01"),
     "r.yaml:8:12: r1: 'owasp' must be a list, got a string"),
    ("bad score", HEAD + RULE.replace("    fields:", "    score: 3\n    fields:"),
     "r.yaml:10:12: r1: 'score' must be between 0 and 1"),
    ("bad id", HEAD + RULE.replace("id: r1", "id: R 1"),
     "r.yaml:3:9: -: rule id 'R 1' must match [a-z0-9][a-z0-9._-]*"),
    ("bad regex", HEAD + RULE.replace("keywords: [bad phrase]", "regex: 'a(b'"),
     "r.yaml:12:14: r1: invalid regex 'a(b': missing ) at position 3"),
    ("nested quantifier", HEAD + RULE.replace("keywords: [bad phrase]", "regex: '(a+)+b'"),
     "r.yaml:12:14: r1: regex '(a+)+b' rejected: nested quantifiers"),
    ("slow regex", HEAD + RULE.replace("keywords: [bad phrase]", "regex: '(a|aa)+$'"),
     "r.yaml:12:14: r1: regex '(a|aa)+$' may backtrack catastrophically"),
    ("empty match", HEAD + RULE.replace("keywords: [bad phrase]", "regex: 'x*'"),
     "r.yaml:12:14: r1: regex 'x*' can match the empty string"),
    ("unknown list", HEAD + RULE.replace("[bad phrase]", "$nolist"),
     "r.yaml:12:17: r1: unknown list '$nolist'"),
    ("unknown macro", HEAD + RULE.replace("keywords: [bad phrase]", "macro: nope"),
     "r.yaml:12:14: r1: unknown macro 'nope'"),
    ("unknown modifier", HEAD + RULE.replace("keywords: [bad phrase]", '"user.role|inn": [x]'),
     "r.yaml:12:7: r1: 'user.role|inn': unknown modifier 'inn'"),
    ("unknown validator", HEAD + RULE.replace(
        "keywords: [bad phrase]", "regex: 'x+y'\n      validate: crc"),
     "r.yaml:13:17: r1: 'validate' 'crc' is not one of luhn, iban, ssn, entropy"),
    ("unknown signal", HEAD + RULE.replace("keywords: [bad phrase]", "signal: zalgo"),
     "r.yaml:12:15: r1: 'signal' 'zalgo' is not one of hidden_unicode, homoglyph, encoded_payload"),
    ("unknown root", HEAD + RULE.replace("fields: [prompt.text]", "fields: [promt.text]"),
     "r.yaml:10:14: r1: selector 'promt.text' has unknown root 'promt' (did you mean 'prompt'?)"),
    ("unknown leaf key", HEAD + RULE.replace("keywords: [bad phrase]", "keyword: [x]"),
     "r.yaml:12:7: r1: unknown key 'keyword' in a condition (did you mean 'keywords'?)"),
    ("no match examples",
     HEAD + RULE.replace('      match: ["a bad phrase"]\n', '      no_match: ["x"]\n'),
     "r.yaml:14:7: r1: the rule has no match examples"),
    ("no fields", HEAD + RULE.replace("    fields: [prompt.text]\n", ""),
     "r.yaml:11:7: r1: no fields to search"),
    ("min_entropy without entropy", HEAD + RULE.replace(
        "keywords: [bad phrase]", "regex: 'x+y'\n      min_entropy: 3"),
     "r.yaml:13:7: r1: 'min_entropy' needs 'validate: entropy'"),
    ("unknown ml label", HEAD + RULE.replace("keywords: [bad phrase]", "ml: injection"),
     "r.yaml:12:11: r1: 'ml' 'injection' is not one of prompt_injection, jailbreak"),
    ("ml min_score out of range", HEAD + RULE.replace(
        "keywords: [bad phrase]", "ml: jailbreak\n      min_score: 2"),
     "r.yaml:13:18: r1: 'min_score' must be between 0 and 1"),
    ("min_score without ml", HEAD + RULE.replace(
        "keywords: [bad phrase]", "keywords: [bad phrase]\n      min_score: 0.5"),
     "r.yaml:13:7: r1: 'min_score' needs 'ml' in the same mapping"),
    ("overlap without a selector", HEAD + RULE.replace("keywords: [bad phrase]", "overlap: 5"),
     "r.yaml:12:16: r1: 'overlap' must be a string, got a number"),
    ("overlap with an unknown root", HEAD + RULE.replace(
        "keywords: [bad phrase]", "overlap: sytem_prompt.text"),
     "r.yaml:12:16: r1: selector 'sytem_prompt.text' has unknown root 'sytem_prompt' "
     "(did you mean 'system_prompt'?)"),
    ("min_words not whole", HEAD + RULE.replace(
        "keywords: [bad phrase]", "overlap: system_prompt.text\n      min_words: 7.5"),
     "r.yaml:13:18: r1: 'min_words' must be a whole number, got 7.5"),
    ("min_words out of range", HEAD + RULE.replace(
        "keywords: [bad phrase]", "overlap: system_prompt.text\n      min_words: 2"),
     "r.yaml:13:18: r1: 'min_words' must be between 3 and 64"),
    ("min_words without overlap", HEAD + RULE.replace(
        "keywords: [bad phrase]", "keywords: [bad phrase]\n      min_words: 9"),
     "r.yaml:13:7: r1: 'min_words' needs 'overlap' in the same mapping"),
    ("fieldref to an unknown root", HEAD + RULE.replace(
        "keywords: [bad phrase]", "'tool.name|fieldref': usr.allowed_tools"),
     "r.yaml:12:29: r1: selector 'usr.allowed_tools' has unknown root 'usr' "
     "(did you mean 'user'?)"),
    ("fieldref with re", HEAD + RULE.replace(
        "keywords: [bad phrase]", "'tool.name|fieldref|re': user.allowed_tools"),
     "r.yaml:12:7: r1: 'tool.name|fieldref|re': 'fieldref' takes one of equals, in, contains, "
     "startswith, endswith, not 're'"),
    ("fieldref with all", HEAD + RULE.replace(
        "keywords: [bad phrase]", "'tool.name|fieldref|all': [user.role, user.department]"),
     "r.yaml:12:7: r1: 'tool.name|fieldref|all': 'fieldref' cannot be combined with 'all'"),
    ("fieldref with a number", HEAD + RULE.replace(
        "keywords: [bad phrase]", "'tool.name|fieldref': 3"),
     "r.yaml:12:7: r1: 'tool.name|fieldref': 'fieldref' takes field selectors, got 3"),
    ("count with contains", HEAD + RULE.replace(
        "keywords: [bad phrase]", "'tool.arguments.to|count|contains': 3"),
     "r.yaml:12:7: r1: 'tool.arguments.to|count|contains': 'count' takes one of equals, gt, gte, "
     "lt, lte and a number, not 'contains'"),
    ("count with a string", HEAD + RULE.replace(
        "keywords: [bad phrase]", "'tool.arguments.to|count|gte': ten"),
     "r.yaml:12:7: r1: 'tool.arguments.to|count|gte': 'count' compares with numbers, got 'ten'"),
    ("count with fieldref", HEAD + RULE.replace(
        "keywords: [bad phrase]", "'tool.arguments.to|count|fieldref': user.role"),
     "r.yaml:12:7: r1: 'tool.arguments.to|count|fieldref': 'count' and 'fieldref' cannot be "
     "combined"),
    ("logic with siblings", HEAD + RULE.replace(
        "keywords: [bad phrase]", "any: [{keywords: [a]}]\n      keywords: [b]"),
     "r.yaml:12:7: r1: 'any' must be the only key of its mapping"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_message_and_location(tmp_path: Path, text: str, expected: str) -> None:
    errors = errors_of(tmp_path, text)
    assert any(e.startswith(expected) for e in errors), errors


def test_macro_cycle(tmp_path: Path) -> None:
    text = (
        HEAD
        + "macros:\n  a: {macro: b}\n  b: {macro: a}\n"
        + RULE.replace("keywords: [bad phrase]", "macro: a")
    )
    errors = errors_of(tmp_path, text)
    assert any("r.yaml:4:14: r1: macro cycle: a -> b -> a" in e for e in errors), errors


def test_duplicate_rule_id_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(HEAD + RULE, encoding="utf-8")
    (tmp_path / "b.yaml").write_text(HEAD + RULE, encoding="utf-8")
    with pytest.raises(RuleSetError) as caught:
        load_rules([tmp_path])
    messages = [str(e) for e in caught.value.errors]
    assert any(
        m.endswith(f"b.yaml:3:9: r1: duplicate rule id 'r1' (first defined at {tmp_path}/a.yaml:3)")
        for m in messages
    ), messages


def test_all_errors_are_collected(tmp_path: Path) -> None:
    text = HEAD + RULE.replace("severity: high", "severity: x").replace("[LLM01]", "[LLM99]")
    path = tmp_path / "two.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RuleSetError) as caught:
        load_rules([path])
    assert len(caught.value.errors) == 2
    assert str(caught.value).startswith("2 errors in rules\n")


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(RuleSetError) as caught:
        load_rules([tmp_path / "nope.yaml"])
    assert str(caught.value.errors[0]).endswith("nope.yaml:0:0: -: no such file or directory")


def test_valid_rule_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(HEAD + RULE, encoding="utf-8")
    ruleset = load_rules([path])
    assert [r.id for r in ruleset.rules] == ["r1"]
    assert ruleset.sources == (str(path),)
