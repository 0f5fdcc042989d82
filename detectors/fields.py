"""Field selectors: dotted paths into an Event v1 mapping.

A selector resolves through mappings by key and fans out over lists, then
yields every scalar leaf under what it reached, at any depth, with the
concrete path of each leaf (``prompt.messages[1].content``). Walking is
bounded in depth and in number of leaves; anything of an unexpected type is
skipped, never an error.

Events are decoded JSON, so plain ``dict`` and ``list`` are tested first: a
check against the ``Mapping`` ABC costs several times more, and the engine
walks every selector of every event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

Scalar = str | int | float | bool

MAX_DEPTH = 12
MAX_LEAVES = 512

_SCALARS = (str, int, float, bool)
_LISTS = (list, tuple)


@lru_cache(maxsize=1024)
def split_selector(selector: str) -> tuple[str, ...]:
    return tuple(selector.split("."))


def _is_mapping(node: object) -> bool:
    return isinstance(node, dict) or (not isinstance(node, _LISTS) and isinstance(node, Mapping))


def _resolve(root: Mapping[str, Any], segments: Sequence[str]) -> list[tuple[str, Any]]:
    """Nodes reached by the selector's segments, with their concrete paths."""
    node: Any = root
    for segment in segments:  # the common case: plain mappings all the way
        if not isinstance(node, dict):
            break
        node = node.get(segment)
        if node is None:
            return []
    else:
        return [(".".join(segments), node)]
    frontier: list[tuple[str, Any]] = [("", root)]
    for segment in segments:
        following: list[tuple[str, Any]] = []
        for path, node in frontier:
            if isinstance(node, _LISTS):
                for index, item in enumerate(node[:MAX_LEAVES]):
                    if _is_mapping(item) and item.get(segment) is not None:
                        following.append((f"{path}[{index}].{segment}", item[segment]))
            elif _is_mapping(node):
                child = node.get(segment)
                if child is not None:
                    following.append((f"{path}.{segment}" if path else segment, child))
        frontier = following
        if not frontier:
            break
    return frontier


def nodes_at(event: Mapping[str, Any], segments: Sequence[str]) -> list[tuple[str, Any]]:
    """The non-null nodes the selector reaches, with their concrete paths (no leaf walk)."""
    return _resolve(event, segments)


def _leaves(path: str, node: Any, depth: int, out: list[tuple[str, Scalar]], limit: int) -> None:
    """Append the scalar leaves under ``node`` to ``out`` while it holds fewer than ``limit``."""
    if isinstance(node, _SCALARS):
        out.append((path, node))
    elif depth >= MAX_DEPTH:
        return
    elif isinstance(node, _LISTS):
        for index, child in enumerate(node):
            if len(out) >= limit:
                return
            if child is not None:
                _leaves(f"{path}[{index}]", child, depth + 1, out, limit)
    elif _is_mapping(node):
        for key, child in node.items():
            if len(out) >= limit:
                return
            if isinstance(key, str) and child is not None:
                _leaves(f"{path}.{key}", child, depth + 1, out, limit)


def leaves_at(
    event: Mapping[str, Any], segments: Sequence[str], *, max_leaves: int = MAX_LEAVES
) -> list[tuple[str, Scalar]]:
    """Every scalar leaf under the selector, with its concrete path (at most ``max_leaves``)."""
    return leaves_of(_resolve(event, segments), max_leaves)


def leaves_of(
    nodes: Sequence[tuple[str, Any]], max_leaves: int = MAX_LEAVES
) -> list[tuple[str, Scalar]]:
    """:func:`leaves_at` of nodes :func:`nodes_at` found."""
    out: list[tuple[str, Scalar]] = []
    for path, node in nodes:
        if len(out) >= max_leaves:
            break
        _leaves(path, node, 0, out, max_leaves)
    return out


def strings_at(
    event: Mapping[str, Any], segments: Sequence[str], *, max_leaves: int = MAX_LEAVES
) -> list[tuple[str, str]]:
    """The string leaves among :func:`leaves_at`."""
    nodes = _resolve(event, segments)
    if len(nodes) == 1 and isinstance(nodes[0][1], str):  # one text field: no walk
        return nodes
    return [(path, value) for path, value in leaves_of(nodes, max_leaves) if isinstance(value, str)]


def values_at(event: Mapping[str, Any], segments: Sequence[str]) -> tuple[list[Scalar], bool]:
    """The scalar values under the selector and whether it resolved to anything non-null.

    Each node the selector reaches contributes at most ``MAX_LEAVES`` values.
    """
    return values_of(_resolve(event, segments))


def values_of(nodes: Sequence[tuple[str, Any]]) -> tuple[list[Scalar], bool]:
    """:func:`values_at` of nodes :func:`nodes_at` found."""
    if len(nodes) == 1 and isinstance(nodes[0][1], _SCALARS):  # one value: no walk
        return [nodes[0][1]], True
    values: list[Scalar] = []
    for path, node in nodes:
        found: list[tuple[str, Scalar]] = []
        _leaves(path, node, 0, found, MAX_LEAVES)
        values.extend(value for _, value in found)
    return values, bool(nodes)


def set_path(target: dict[str, Any], selector: str, value: Any) -> None:
    """Place ``value`` at a dotted path, creating mappings on the way."""
    *parents, last = split_selector(selector)
    node = target
    for segment in parents:
        child = node.get(segment)
        if not isinstance(child, dict):
            child = {}
            node[segment] = child
        node = child
    node[last] = value
