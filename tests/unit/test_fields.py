"""Field selectors and value tests: what a selector reaches, and how modifiers compare."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from detectors.fields import MAX_DEPTH, MAX_LEAVES, leaves_at, split_selector, strings_at, values_at
from detectors.modifiers import build_value_test

EVENT: dict[str, Any] = {
    "kind": "tool_call",
    "prompt": {
        "text": "hi",
        "messages": [
            {"role": "user", "content": "first"},
            "not a mapping",
            {"role": "assistant", "content": None},
            {"role": "user", "content": "second"},
        ],
    },
    "tool": {
        "name": "shell.exec",
        "arguments": {"cmd": "ls", "opts": {"depth": 2, "all": True}, "skip": None, 7: "int key"},
        "result": ["a", ["b", {"c": "d"}], 3.5],
        "authenticated": False,
    },
    "tags": ("x", "y"),
}


class FrozenMapping(Mapping[str, Any]):
    """A mapping that is not a dict: selectors still walk it."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("prompt.text", [("prompt.text", "hi")]),
        ("prompt.messages.content", [("prompt.messages[0].content", "first"),
                                     ("prompt.messages[3].content", "second")]),
        ("tool.arguments", [("tool.arguments.cmd", "ls"), ("tool.arguments.opts.depth", 2),
                            ("tool.arguments.opts.all", True)]),
        ("tool.result", [("tool.result[0]", "a"), ("tool.result[1][0]", "b"),
                         ("tool.result[1][1].c", "d"), ("tool.result[2]", 3.5)]),
        ("tool.authenticated", [("tool.authenticated", False)]),
        ("tags", [("tags[0]", "x"), ("tags[1]", "y")]),
        ("tool.arguments.skip", []),
        ("tool.missing", []),
        ("prompt.text.deeper", []),
        ("kind.x", []),
    ],
)  # fmt: skip
def test_leaves_at(selector: str, expected: list[tuple[str, Any]]) -> None:
    assert leaves_at(EVENT, split_selector(selector)) == expected


def test_strings_at_keeps_only_text() -> None:
    assert strings_at(EVENT, split_selector("tool.arguments")) == [("tool.arguments.cmd", "ls")]
    assert strings_at(EVENT, split_selector("tool.name")) == [("tool.name", "shell.exec")]


@pytest.mark.parametrize(
    ("selector", "values", "present"),
    [
        ("tool.name", ["shell.exec"], True),
        ("tool.authenticated", [False], True),
        ("tool.arguments.opts", [2, True], True),
        ("tool.arguments.skip", [], False),
        ("tool.missing", [], False),
        ("prompt.messages.content", ["first", "second"], True),
    ],
)  # fmt: skip
def test_values_at(selector: str, values: list[Any], present: bool) -> None:
    assert values_at(EVENT, split_selector(selector)) == (values, present)


def test_mappings_that_are_not_dicts_are_walked() -> None:
    event = FrozenMapping({"tool": FrozenMapping({"arguments": FrozenMapping({"q": "x"})})})
    assert leaves_at(event, ("tool", "arguments")) == [("tool.arguments.q", "x")]
    assert leaves_at(event, ("tool", "arguments", "q")) == [("tool.arguments.q", "x")]


def test_depth_is_bounded() -> None:
    node: Any = "bottom"
    for _ in range(MAX_DEPTH + 3):
        node = {"k": node}
    assert leaves_at({"deep": node}, ("deep",)) == []
    shallow: Any = "bottom"
    for _ in range(MAX_DEPTH):
        shallow = {"k": shallow}
    assert leaves_at({"deep": shallow}, ("deep",)) == [("deep" + ".k" * MAX_DEPTH, "bottom")]


def test_leaves_are_bounded() -> None:
    event = {"tool": {"result": [str(i) for i in range(MAX_LEAVES + 10)]}}
    assert len(leaves_at(event, ("tool", "result"))) == MAX_LEAVES
    assert leaves_at(event, ("tool", "result"), max_leaves=3) == [
        ("tool.result[0]", "0"), ("tool.result[1]", "1"), ("tool.result[2]", "2")]  # fmt: skip
    many = {"m": [{"t": str(i)} for i in range(MAX_LEAVES * 2)]}
    assert len(leaves_at(many, ("m", "t"))) == MAX_LEAVES  # at most MAX_LEAVES list items


@pytest.mark.parametrize(
    ("modifiers", "expected", "value", "holds"),
    [
        ([], ["Shell.Exec"], "shell.exec", True),  # equals folds case
        (["in"], ["a", "shell.exec", "b"], "SHELL.EXEC", True),
        (["in"], ["a", "b"], "shell.exec", False),
        (["in", "cased"], ["Shell.Exec"], "shell.exec", False),
        (["in"], ["1", 1], 1, True),  # a number matches the number, not its text
        (["in"], ["1"], 1, False),
        (["in"], [1, "x"], True, False),  # true is not the number 1
        (["in"], [True, "x"], True, True),
        (["in"], [2.0, "x"], 2, True),
        (["contains"], ["exec", "zzz"], "SHELL.EXEC", True),
        (["contains"], ["zzz", "yyy"], "shell.exec", False),
        (["startswith"], ["bash", "shell."], "Shell.run", True),
        (["endswith"], [".exec", ".sh"], "run.SH", True),
        (["endswith", "cased"], [".SH"], "run.sh", False),
        (["contains"], ["exec"], 5, False),
        (["re"], ["^sh", "^py"], "python", True),
        (["gt"], [3, 10], 5, True),
    ],
)  # fmt: skip
def test_value_test_any_of(
    modifiers: list[str], expected: list[Any], value: Any, holds: bool
) -> None:
    test = build_value_test(modifiers, expected)
    assert test.holds([value], True) is holds
    assert any(p(value) for p in test.bind({})) is holds


def test_value_test_all_needs_every_expected_value() -> None:
    test = build_value_test(["contains", "all"], ["rm", "-rf"])
    assert test.holds(["rm -rf /"], True)
    assert not test.holds(["rm file"], True)
    assert test.holds(["rm x", "ls -rf"], True)  # each expected value met by some value


CONTEXT_EVENT: dict[str, Any] = {
    "user": {"role": "Analyst", "allowed_tools": ["search", "Mail.Send"], "tags": []},
    "tool": {"name": "mail.send", "arguments": {"to": ["a@x.io", "b@x.io", "c@x.io"]}},
}


@pytest.mark.parametrize(
    ("selector", "modifiers", "expected", "holds"),
    [
        ("tool.arguments.to", ["count", "gte"], [3], True),
        ("tool.arguments.to", ["count", "gt"], [3], False),
        ("tool.arguments.to", ["count"], [3], True),  # equals
        ("tool.arguments.to", ["count", "lt"], [1], False),
        ("tool.arguments.cc", ["count"], [0], True),  # an absent field has no values
        ("user.tags", ["count", "lte"], [0], True),
        ("tool.name", ["fieldref"], ["user.allowed_tools"], True),  # case folded
        ("tool.name", ["fieldref", "cased"], ["user.allowed_tools"], False),
        ("tool.name", ["fieldref", "startswith"], ["user.role", "user.allowed_tools"], True),
        ("tool.name", ["fieldref"], ["user.role"], False),
        ("tool.name", ["fieldref"], ["user.missing"], False),  # nothing to compare with
        ("user.role", ["fieldref", "contains"], ["tool.name"], False),
    ],
)  # fmt: skip
def test_count_and_fieldref(
    selector: str, modifiers: list[str], expected: list[Any], holds: bool
) -> None:
    test = build_value_test(modifiers, expected)
    values, present = values_at(CONTEXT_EVENT, split_selector(selector))
    assert test.holds(values, present, CONTEXT_EVENT) is holds


def test_fieldref_keeps_types_apart() -> None:
    """A number does not equal a boolean, even through the cache of referenced values."""
    test = build_value_test(["fieldref"], ["user.level"])
    assert test.holds([1], True, {"user": {"level": 1}})
    assert not test.holds([1], True, {"user": {"level": True}})
    assert test.holds([True], True, {"user": {"level": True}})


def test_fieldref_to_a_long_text_gives_the_same_answers() -> None:
    """Values too long to keep in the cache are compared all the same."""
    long_text = "x" * 5000 + " needle"
    test = build_value_test(["fieldref", "contains"], ["response.text"])
    event = {"response": {"text": long_text}}
    assert test.holds(["needle"], True, event) is False  # the value contains the reference
    assert test.holds([long_text + "!"], True, event)
