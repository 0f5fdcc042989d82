"""Context words can come from a value's own JSON key, and underscores separate words."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from detectors import Engine, load_rules
from detectors.engine import field_key

RULE = """\
schema: llmtrail.rules/v1
rules:
  - id: t-member-number
    title: Member number next to a member word
    description: Nine digits count only next to "member" or "membership".
    severity: medium
    category: pii
    owasp: [LLM02]
    applies_to: [prompt, tool_call]
    fields: [prompt.text, tool.arguments, tool.result]
    condition:
      regex: '(?<![0-9])[0-9]{9}(?![0-9])'
      context:
        near: [member, membership]
        absent: [order]
        window: 30
        require: true
    examples:
      match:
        - "membership 482910375"
      no_match:
        - "invoice 482910375"
"""


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    path = Path(tmp_path_factory.mktemp("rules")) / "member.yaml"
    path.write_text(RULE)
    return Engine(load_rules([path]))


def tool_call(arguments: Any = None, result: Any = None) -> dict[str, Any]:
    tool: dict[str, Any] = {"name": "crm.update"}
    if arguments is not None:
        tool["arguments"] = arguments
    if result is not None:
        tool["result"] = result
    return {"event_id": "e1", "trace_id": "t1", "ts": "2026-01-01T00:00:00Z",
            "kind": "tool_call", "tool": tool}


def prompt(text: str) -> dict[str, Any]:
    return {"event_id": "e1", "trace_id": "t1", "ts": "2026-01-01T00:00:00Z",
            "kind": "prompt", "prompt": {"text": text}}


@pytest.mark.parametrize("event, fires", [
    (tool_call({"member": "482910375"}), True),  # the key is the context word
    (tool_call({"memberId": "482910375"}), True),  # camelCase key
    (tool_call({"customer": {"membership_no": "482910375"}}), True),  # nested, snake_case
    (tool_call(result={"members": [{"member-id": "482910375"}]}), True),
    (tool_call({"note": "member 482910375"}), True),  # the word in the value, as before
    (tool_call({"order_member": "482910375"}), False),  # an absent word in the key
    (tool_call({"count": "482910375"}), False),  # a key that is no context word
    (tool_call(result="482910375"), False),  # tool.result itself: a schema field, no key
    (prompt("member_no 482910375"), True),  # underscore between words in the text
    (prompt("482910375"), False),
    (prompt("text 482910375"), False),  # "text" of prompt.text is not a caller's key
])
def test_context_words_from_keys(engine: Engine, event: dict[str, Any], fires: bool) -> None:
    assert bool(engine.scan(event)) is fires


@pytest.mark.parametrize("path, words", [
    ("tool.arguments.member", "member"),
    ("tool.arguments.customer.taxId", "tax Id"),
    ("tool.result[2].aadhaar_no", "aadhaar no"),
    ("tool.arguments.steuer-id", "steuer id"),
    ("tool.arguments.ids[3]", "ids"),
    ("tags.team", "team"),
    ("tool.result[0]", ""),
    ("tool.result", ""),
    ("tool.arguments", ""),
    ("prompt.text", ""),
    ("prompt.messages[0].content", ""),
])
def test_field_key(path: str, words: str) -> None:
    assert field_key(path) == words
