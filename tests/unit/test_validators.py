"""Validators, value modifiers and evidence masking: tables of (input, expected)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from detectors import findings, modifiers, validators
from detectors.findings import mask_value
from detectors.modifiers import MODIFIERS, ModifierError, build_value_test
from detectors.validators import VALIDATORS, make_validator, shannon_entropy

VALIDATOR_CASES = [
    ("luhn", "4111 1111 1111 1111", True), ("luhn", "4111-1111-1111-1112", False),
    ("luhn", "0000 0000 0000 0000", False), ("luhn", "1234", False),
    ("luhn", "5555555555554444", True),
    ("iban", "DE89 3704 0044 0532 0130 00", True), ("iban", "DE89 3704 0044 0532 0130 01", False),
    ("iban", "GB82WEST12345698765432", True), ("iban", "GB82WEST1234569876543", False),
    ("iban", "XX82WEST12345698765432", False),
    ("ssn", "078-05-1120", True), ("ssn", "000-12-3456", False), ("ssn", "666-12-3456", False),
    ("ssn", "912-12-3456", False), ("ssn", "123-00-4567", False), ("ssn", "123-45-0000", False),
    ("entropy", "aaaaaaaaaaaaaaaaaaaa", False), ("entropy", "wJalrXUtnFEMI/K7MDENG/bPxRfiCY", True),
]  # fmt: skip


@pytest.mark.parametrize(("name", "value", "ok"), VALIDATOR_CASES)
def test_validators(name: str, value: str, ok: bool) -> None:
    assert make_validator(name).check(value) is ok


def test_entropy_threshold_and_value() -> None:
    assert shannon_entropy("abcd") == 2.0
    assert make_validator("entropy", min_entropy=1.5).check("abcd")
    assert not make_validator("entropy", min_entropy=2.5).check("abcd")


MODIFIER_CASES = [
    (["equals"], ["Admin"], ["admin"], True), (["cased"], ["Admin"], ["admin"], False),
    ([], [True], [True], True), ([], [True], ["true"], False), ([], [42], [42.0], True),
    (["in"], ["a", "b"], ["B"], True), (["in"], ["a", "b"], ["c"], False),
    (["contains"], ["shell"], ["my.SHELL.exec"], True),
    (["contains", "cased"], ["shell"], ["SHELL"], False),
    (["startswith"], ["shell."], ["Shell.exec"], True), (["endswith"], [".exe"], ["a.EXE"], True),
    (["re"], ["^rm\\s+-rf"], ["RM -rf /"], True), (["re", "cased"], ["^rm"], ["RM"], False),
    (["re"], ["shell$"], ["x" * 300 + "shell"], True), (["re"], ["shell$"], ["x" * 300], False),
    (["re"], ["^4"], [42], False),  # long values (not remembered) and non-strings
    (["cidr"], ["10.0.0.0/8"], ["10.1.2.3"], True), (["cidr"], ["10.0.0.0/8"], ["11.1.2.3"], False),
    (["cidr"], ["2001:db8::/32"], ["2001:db8::1"], True),
    (["cidr"], ["10.0.0.0/8"], ["nope"], False),
    (["gt"], [5], [6], True), (["gt"], [5], [5], False), (["gte"], [5], [5], True),
    (["lt"], [5], [4.5], True), (["lte"], [5], [6], False), (["gt"], [5], ["6"], False),
    (["contains", "all"], ["a", "b"], ["xa", "yb"], True),
    (["contains", "all"], ["a", "b"], ["xa"], False),
]  # fmt: skip


@pytest.mark.parametrize(("mods", "expected", "values", "ok"), MODIFIER_CASES)
def test_modifiers(mods: list[str], expected: list[object], values: list[object], ok: bool) -> None:
    assert build_value_test(mods, expected).holds(values, present=bool(values)) is ok  # type: ignore[arg-type]


@pytest.mark.parametrize(("expected", "present", "ok"), [(True, True, True), (True, False, False),
                                                         (False, False, True)])  # fmt: skip
def test_exists(expected: bool, present: bool, ok: bool) -> None:
    assert build_value_test(["exists"], [expected]).holds([], present) is ok


@pytest.mark.parametrize(
    ("mods", "values", "message"),
    [(["nope"], ["x"], "unknown modifier 'nope'"), (["gt", "lt"], [1], "at most one operator"),
     (["gt"], ["x"], "'gt' needs numeric values"), (["cidr"], ["10.0.0.0/33"], "invalid network"),
     (["exists"], ["yes"], "'exists' takes true or false"), (["re"], ["a("], "invalid regex"),
     ([], [None], "null is not a value"), ([], [], "an empty list")],
)  # fmt: skip
def test_modifier_errors(mods: list[str], values: list[object], message: str) -> None:
    with pytest.raises(ModifierError, match=message.replace("(", r"\(")):
        build_value_test(mods, values)


def _subclasses(module: object, base: type[Any]) -> set[Any]:
    return {
        cls for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, base) and cls is not base and "id" in cls.__dict__
    }  # fmt: skip


def test_every_modifier_registered_exactly_once() -> None:
    classes = _subclasses(modifiers, modifiers.Modifier)
    assert set(MODIFIERS.values()) == classes
    assert len(set(MODIFIERS.values())) == len(MODIFIERS)
    assert all(MODIFIERS[cls.id] is cls for cls in classes)
    with pytest.raises(ValueError, match="registered twice"):
        modifiers.build_registry([modifiers.Equals, modifiers.Equals])


def test_every_validator_registered_exactly_once() -> None:
    classes = _subclasses(validators, validators.Validator)
    assert set(VALIDATORS.values()) == classes
    assert all(VALIDATORS[cls.id] is cls for cls in classes)
    with pytest.raises(ValueError, match="registered twice"):
        validators.build_registry([validators.Luhn, validators.Luhn])


@pytest.mark.parametrize(
    ("value", "masked"),
    [("AKIAABCDEFGHIJKLWXYZ", "AKIA************WXYZ"), ("12345678", "12****78"),
     ("abc", "***"), ("", ""), ("x" * 100, "xxxx" + "*" * 32 + "xxxx")],
)  # fmt: skip
def test_mask_value(value: str, masked: str) -> None:
    assert mask_value(value) == masked
    assert (
        sum(1 for a, b in zip(value, masked, strict=False) if a == b and b != "*")
        <= len(value) // 2
    )


def test_excerpt_masks_neighbouring_hits() -> None:
    text = "k1=AAAABBBBCCCCDDDD k2=EEEEFFFFGGGGHHHH"
    shown = findings.excerpt(text, 3, 19, masked=True, other_spans=[(3, 19), (23, 39)])
    assert "BBBBCCCC" not in shown and "FFFFGGGG" not in shown and "EEEE" not in shown
