"""Sigma-style value modifiers: ``"selector|mod1|mod2": value``.

Each modifier is a small class with a stable ``id``. Operators turn one
expected value into a predicate over one field value; flags (``all``,
``cased``, ``count``, ``fieldref``) change how operators are applied. Every
modifier is listed once in :data:`MODIFIERS`, the only registry.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Any, ClassVar

import regex

from detectors.fields import split_selector, values_at

Scalar = str | int | float | bool
Predicate = Callable[[Scalar], bool]


class ModifierError(ValueError):
    """A modifier chain or its value is invalid; the message says why."""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fold(text: str, cased: bool) -> str:
    return text if cased else text.casefold()


def _expect_str(value: Scalar, modifier: str) -> str:
    if not isinstance(value, str):
        raise ModifierError(f"'{modifier}' needs string values, got {value!r}")
    return value


def _expect_number(value: Scalar, modifier: str) -> float:
    if not _is_number(value):
        raise ModifierError(f"'{modifier}' needs numeric values, got {value!r}")
    return float(value)


class Modifier:
    """Base of every modifier. Flags only carry their id."""

    id: ClassVar[str]
    is_flag: ClassVar[bool] = False

    @classmethod
    def predicate(cls, expected: Scalar, *, cased: bool) -> Predicate:
        raise NotImplementedError

    @classmethod
    def any_of(cls, expected: Sequence[Scalar], *, cased: bool) -> Predicate:
        """One predicate that holds where any of the expected values' predicates holds."""
        predicates = tuple(cls.predicate(value, cased=cased) for value in expected)
        if len(predicates) == 1:
            return predicates[0]
        return lambda v: any(p(v) for p in predicates)


class Equals(Modifier):
    id = "equals"

    @classmethod
    def predicate(cls, expected: Scalar, *, cased: bool) -> Predicate:
        if isinstance(expected, bool):
            return lambda v: isinstance(v, bool) and v is expected
        if _is_number(expected):
            number = float(expected)
            return lambda v: _is_number(v) and float(v) == number
        want = _fold(_expect_str(expected, cls.id), cased)
        return lambda v: isinstance(v, str) and _fold(v, cased) == want

    @classmethod
    def any_of(cls, expected: Sequence[Scalar], *, cased: bool) -> Predicate:
        """A set lookup for the strings (a list of tool names is one fold and one probe)."""
        strings = frozenset(_fold(value, cased) for value in expected if isinstance(value, str))
        others = super().any_of([v for v in expected if not isinstance(v, str)], cased=cased)

        def test(value: Scalar) -> bool:
            if isinstance(value, str):
                return _fold(value, cased) in strings
            return others(value)

        return test


class In(Equals):
    id = "in"


class _TextTest(Modifier):
    """A string operator: the field value (folded unless ``cased``) compared with the expected."""

    @staticmethod
    def compare(value: str, want: str) -> bool:
        raise NotImplementedError

    @classmethod
    def predicate(cls, expected: Scalar, *, cased: bool) -> Predicate:
        want = _fold(_expect_str(expected, cls.id), cased)
        compare = cls.compare
        return lambda v: isinstance(v, str) and compare(_fold(v, cased), want)

    @classmethod
    def any_of(cls, expected: Sequence[Scalar], *, cased: bool) -> Predicate:
        """The field value folded once for all the expected values."""
        wants = tuple(_fold(_expect_str(value, cls.id), cased) for value in expected)
        compare = cls.compare

        def test(value: Scalar) -> bool:
            if not isinstance(value, str):
                return False
            folded = _fold(value, cased)
            return any(compare(folded, want) for want in wants)

        return test


class Contains(_TextTest):
    id = "contains"

    @staticmethod
    def compare(value: str, want: str) -> bool:
        return want in value


class StartsWith(_TextTest):
    id = "startswith"

    @staticmethod
    def compare(value: str, want: str) -> bool:
        return value.startswith(want)


class EndsWith(_TextTest):
    id = "endswith"

    @staticmethod
    def compare(value: str, want: str) -> bool:
        return value.endswith(want)


_RE_TIMEOUT = 0.05
_RE_CACHE_SIZE = 4096
_RE_CACHED_CHARS = 256
_REFERENCED_CACHED_CHARS = 4096  # field-reference values kept with their predicate, at most


class Re(Modifier):
    id = "re"

    @classmethod
    def predicate(cls, expected: Scalar, *, cased: bool) -> Predicate:
        source = _expect_str(expected, cls.id)
        try:
            pattern = regex.compile(source, 0 if cased else regex.IGNORECASE)
        except regex.error as exc:
            raise ModifierError(f"invalid regex {source!r}: {exc}") from None

        # Field values such as tool names repeat from event to event: remember the
        # verdicts on short ones (a search with a timeout costs microseconds).
        @lru_cache(maxsize=_RE_CACHE_SIZE)
        def found(value: str) -> bool:
            return pattern.search(value, timeout=_RE_TIMEOUT) is not None

        def test(value: Scalar) -> bool:
            if not isinstance(value, str):
                return False
            if len(value) <= _RE_CACHED_CHARS:
                return found(value)
            return pattern.search(value, timeout=_RE_TIMEOUT) is not None

        return test


class Cidr(Modifier):
    id = "cidr"

    @classmethod
    def predicate(cls, expected: Scalar, *, cased: bool) -> Predicate:
        source = _expect_str(expected, cls.id)
        try:
            network = ipaddress.ip_network(source, strict=False)
        except ValueError as exc:
            raise ModifierError(f"invalid network {source!r}: {exc}") from None

        def inside(value: Scalar) -> bool:
            if not isinstance(value, str):
                return False
            try:
                return ipaddress.ip_address(value.strip()) in network
            except ValueError:
                return False

        return inside


class _Compare(Modifier):
    @staticmethod
    def compare(value: float, bound: float) -> bool:
        raise NotImplementedError

    @classmethod
    def predicate(cls, expected: Scalar, *, cased: bool) -> Predicate:
        bound = _expect_number(expected, cls.id)
        compare = cls.compare
        return lambda v: _is_number(v) and compare(float(v), bound)


class Gt(_Compare):
    id = "gt"

    @staticmethod
    def compare(value: float, bound: float) -> bool:
        return value > bound


class Gte(_Compare):
    id = "gte"

    @staticmethod
    def compare(value: float, bound: float) -> bool:
        return value >= bound


class Lt(_Compare):
    id = "lt"

    @staticmethod
    def compare(value: float, bound: float) -> bool:
        return value < bound


class Lte(_Compare):
    id = "lte"

    @staticmethod
    def compare(value: float, bound: float) -> bool:
        return value <= bound


class Exists(Modifier):
    """``true``: the selector resolves to a non-null value; ``false``: it does not."""

    id = "exists"


class All(Modifier):
    id = "all"
    is_flag = True


class Cased(Modifier):
    id = "cased"
    is_flag = True


class Count(Modifier):
    """The operator compares the number of values the selector reaches, not the values."""

    id = "count"
    is_flag = True


class FieldRef(Modifier):
    """The expected values are selectors: compare with what they reach in the same event."""

    id = "fieldref"
    is_flag = True


def build_registry(classes: Iterable[type[Modifier]]) -> Mapping[str, type[Modifier]]:
    registry: dict[str, type[Modifier]] = {}
    for cls in classes:
        if cls.id in registry:
            raise ValueError(f"modifier id {cls.id!r} registered twice")
        registry[cls.id] = cls
    return MappingProxyType(registry)


MODIFIERS: Mapping[str, type[Modifier]] = build_registry(
    (
        Equals, In, Contains, StartsWith, EndsWith, Re, Cidr, Gt, Gte, Lt, Lte, Exists,
        All, Cased, Count, FieldRef,
    )
)  # fmt: skip
COUNT_OPERATORS = ("equals", "gt", "gte", "lt", "lte")
FIELDREF_OPERATORS = ("equals", "in", "contains", "startswith", "endswith")


@dataclass(frozen=True, eq=False, slots=True)
class ValueTest:
    """A compiled ``selector|modifiers: values`` test over the selector's values."""

    operator: str
    predicates: tuple[Predicate, ...]
    match_all: bool
    exists: bool | None = None
    count: bool = False  # compare the number of values
    refs: tuple[tuple[str, ...], ...] = ()  # fieldref: the selectors' segments
    cased: bool = False

    def bind(self, event: Mapping[str, Any]) -> tuple[Predicate, ...]:
        """The predicates, a field reference resolved in ``event`` (none if it reaches nothing)."""
        if not self.refs:
            return self.predicates
        found = [value for segments in self.refs for value in values_at(event, segments)[0]]
        if not found:
            return ()
        if sum(len(v) for v in found if isinstance(v, str)) > _REFERENCED_CACHED_CHARS:
            return (MODIFIERS[self.operator].any_of(found, cased=self.cased),)  # too big to keep
        # typed: True and 1 are equal keys of the cache
        wanted = tuple(zip(map(type, found), found, strict=True))
        return (_referenced(self.operator, wanted, self.cased),)

    def holds(
        self, values: Sequence[Scalar], present: bool, event: Mapping[str, Any] | None = None
    ) -> bool:
        """The test over a selector's values (``event``: where a field reference resolves)."""
        if self.exists is not None:
            return present is self.exists
        return self.met(values, self.bind(event) if event is not None else self.predicates)

    def met(self, values: Sequence[Scalar], predicates: Sequence[Predicate]) -> bool:
        """The operator's test over the values, with :meth:`bind`'s predicates."""
        if self.count:
            values = [len(values)]
        if self.match_all:
            return all(any(p(v) for v in values) for p in predicates)
        return any(p(v) for p in predicates for v in values)


@lru_cache(maxsize=_RE_CACHE_SIZE)
def _referenced(operator: str, wanted: tuple[tuple[type, Scalar], ...], cased: bool) -> Predicate:
    """The predicate for values a field reference reached; they recur (a user's allowed tools)."""
    return MODIFIERS[operator].any_of([value for _, value in wanted], cased=cased)


def build_value_test(modifier_ids: Sequence[str], values: Sequence[object]) -> ValueTest:
    """Compile a modifier chain and its expected values; raise ModifierError if invalid."""
    unknown = [m for m in modifier_ids if m not in MODIFIERS]
    if unknown:
        known = ", ".join(sorted(MODIFIERS))
        raise ModifierError(f"unknown modifier {unknown[0]!r} (known: {known})")
    if len(set(modifier_ids)) != len(modifier_ids):
        raise ModifierError("a modifier is repeated")
    operators = [m for m in modifier_ids if not MODIFIERS[m].is_flag]
    if len(operators) > 1:
        raise ModifierError(f"at most one operator modifier, got {', '.join(operators)}")
    operator = operators[0] if operators else "equals"
    cased = "cased" in modifier_ids
    match_all = "all" in modifier_ids
    if not values:
        raise ModifierError("an empty list of values never matches")
    if "count" in modifier_ids and "fieldref" in modifier_ids:
        raise ModifierError("'count' and 'fieldref' cannot be combined")
    if "fieldref" in modifier_ids:
        return _fieldref_test(operator, values, cased=cased, match_all=match_all)
    if "count" in modifier_ids and (operator not in COUNT_OPERATORS or cased):
        raise ModifierError(
            f"'count' takes one of {', '.join(COUNT_OPERATORS)} and a number, "
            f"not {'cased' if cased else repr(operator)}"
        )
    if operator == "exists":
        if len(values) != 1 or not isinstance(values[0], bool):
            raise ModifierError("'exists' takes true or false")
        if match_all or cased:
            raise ModifierError("'exists' cannot be combined with 'all' or 'cased'")
        return ValueTest(operator, (), False, exists=values[0])
    cls = MODIFIERS[operator]
    scalars: list[Scalar] = []
    for value in values:
        if value is None:
            raise ModifierError("null is not a value to compare; use '|exists: false'")
        if not isinstance(value, str | int | float | bool):
            raise ModifierError(f"values must be strings, numbers or booleans, got {value!r}")
        scalars.append(value)
    count = "count" in modifier_ids
    if count and not all(_is_number(v) for v in scalars):
        raise ModifierError(f"'count' compares with numbers, got {scalars[0]!r}")
    if match_all:  # each expected value must be met on its own
        predicates = tuple(cls.predicate(v, cased=cased) for v in scalars)
        return ValueTest(operator, predicates, True, count=count, cased=cased)
    return ValueTest(operator, (cls.any_of(scalars, cased=cased),), False, count=count, cased=cased)


def _fieldref_test(
    operator: str, values: Sequence[object], *, cased: bool, match_all: bool
) -> ValueTest:
    if operator not in FIELDREF_OPERATORS:
        raise ModifierError(
            f"'fieldref' takes one of {', '.join(FIELDREF_OPERATORS)}, not {operator!r}"
        )
    if match_all:
        raise ModifierError("'fieldref' cannot be combined with 'all'")
    selectors = [v for v in values if isinstance(v, str) and v]
    if len(selectors) != len(values):
        raise ModifierError(f"'fieldref' takes field selectors, got {values[0]!r}")
    refs = tuple(split_selector(selector) for selector in selectors)
    return ValueTest(operator, (), False, refs=refs, cased=cased)
