"""YAML parsed into a small tree whose every node knows its file, line and column.

PyYAML's composer gives nodes with marks; we convert them into three frozen
node types (scalar, sequence, mapping) so the validator can point at the exact
place of every problem. Duplicate keys are reported with both locations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from detectors.errors import RuleError

_MAX_DEPTH = 64

# Scalars YAML resolves to these tags become Python values; anything else
# (timestamps, binary, custom tags) keeps its source text.
_TYPED_TAGS = frozenset(
    {
        "tag:yaml.org,2002:str",
        "tag:yaml.org,2002:int",
        "tag:yaml.org,2002:float",
        "tag:yaml.org,2002:bool",
        "tag:yaml.org,2002:null",
    }
)

Scalar = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class Loc:
    file: str
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class YScalar:
    value: Scalar
    text: str
    plain: bool
    loc: Loc


@dataclass(frozen=True, slots=True)
class YSeq:
    items: tuple[YNode, ...]
    loc: Loc


@dataclass(frozen=True, slots=True)
class YMap:
    entries: tuple[tuple[YScalar, YNode], ...]
    loc: Loc

    def names(self) -> list[str]:
        return [k.text for k, _ in self.entries]

    def get(self, key: str) -> YNode | None:
        for k, v in self.entries:
            if k.text == key:
                return v
        return None

    def key_loc(self, key: str) -> Loc:
        for k, _ in self.entries:
            if k.text == key:
                return k.loc
        return self.loc


YNode = YScalar | YSeq | YMap


def describe(node: YNode) -> str:
    """A short human name for a node's type, for 'expected X, got Y' messages."""
    if isinstance(node, YMap):
        return "a mapping"
    if isinstance(node, YSeq):
        return "a list"
    value = node.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string"


def _loc(file: str, node: yaml.Node) -> Loc:
    mark = node.start_mark
    return Loc(file, mark.line + 1, mark.column + 1)


class _Converter:
    def __init__(self, file: str, errors: list[RuleError]) -> None:
        self.file = file
        self.errors = errors
        self.constructor = SafeConstructor()

    def error(self, loc: Loc, message: str) -> None:
        self.errors.append(RuleError(loc.file, loc.line, loc.col, None, message))

    def convert(self, node: yaml.Node, depth: int = 0) -> YNode:
        loc = _loc(self.file, node)
        if depth > _MAX_DEPTH:
            self.error(loc, f"nesting deeper than {_MAX_DEPTH} levels")
            return YScalar(None, "", True, loc)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, loc)
        if isinstance(node, yaml.SequenceNode):
            return YSeq(tuple(self.convert(item, depth + 1) for item in node.value), loc)
        assert isinstance(node, yaml.MappingNode)
        return self.mapping(node, loc, depth)

    def scalar(self, node: yaml.ScalarNode, loc: Loc) -> YScalar:
        plain = node.style is None
        if node.tag not in _TYPED_TAGS:
            return YScalar(str(node.value), str(node.value), plain, loc)
        try:
            value: Any = self.constructor.construct_object(node)
        except (ConstructorError, ValueError) as exc:
            self.error(loc, f"bad scalar {node.value!r}: {exc}")
            return YScalar(None, str(node.value), plain, loc)
        return YScalar(value, str(node.value), plain, loc)

    def mapping(self, node: yaml.MappingNode, loc: Loc, depth: int) -> YMap:
        entries: list[tuple[YScalar, YNode]] = []
        seen: dict[str, Loc] = {}
        for key_node, value_node in node.value:
            key_loc = _loc(self.file, key_node)
            if not isinstance(key_node, yaml.ScalarNode):
                self.error(key_loc, "mapping keys must be plain strings")
                continue
            key = YScalar(str(key_node.value), str(key_node.value), True, key_loc)
            first = seen.get(key.text)
            if first is not None:
                self.error(
                    key_loc,
                    f"duplicate key {key.text!r} (first defined at line {first.line})",
                )
                continue
            seen[key.text] = key_loc
            entries.append((key, self.convert(value_node, depth + 1)))
        return YMap(tuple(entries), loc)


def parse_yaml(text: str, file: str, errors: list[RuleError]) -> YNode | None:
    """Parse one YAML document; append problems to ``errors``; None if unusable."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        errors.append(RuleError(file, line, col, None, f"YAML syntax error: {problem}"))
        return None
    except yaml.YAMLError as exc:
        errors.append(RuleError(file, 1, 1, None, f"YAML error: {exc}"))
        return None
    if root is None:
        return None
    return _Converter(file, errors).convert(root)
