"""Field selectors: dotted paths into an Event v1 mapping.

A selector resolves through mappings by key and fans out over lists, then
yields every scalar leaf under what it reached, at any depth, with the
concrete path of each leaf (``prompt.messages[1].content``). Walking is
bounded in depth and in number of leaves; anything of an unexpected type is
skipped, never an error.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

Scalar = str | int | float | bool

MAX_DEPTH = 12
MAX_LEAVES = 512


def split_selector(selector: str) -> tuple[str, ...]:
    return tuple(selector.split("."))


def _is_list(value: object) -> bool:
    return isinstance(value, list | tuple)


def _resolve(root: Mapping[str, Any], segments: Sequence[str]) -> Iterator[tuple[str, Any]]:
    """Nodes reached by the selector's segments, with their concrete paths."""
    frontier: list[tuple[str, Any]] = [("", root)]
    for segment in segments:
        following: list[tuple[str, Any]] = []
        for path, node in frontier:
            if isinstance(node, Mapping):
                child = node.get(segment)
                if child is not None:
                    following.append((f"{path}.{segment}" if path else segment, child))
            elif _is_list(node):
                for index, item in enumerate(node[:MAX_LEAVES]):
                    if isinstance(item, Mapping) and item.get(segment) is not None:
                        following.append((f"{path}[{index}].{segment}", item[segment]))
        frontier = following
        if not frontier:
            break
    return iter(frontier)


def _leaves(path: str, node: Any, depth: int, budget: list[int]) -> Iterator[tuple[str, Scalar]]:
    if budget[0] <= 0:
        return
    if isinstance(node, str | int | float | bool):
        budget[0] -= 1
        yield path, node
    elif depth >= MAX_DEPTH:
        return
    elif isinstance(node, Mapping):
        for key, child in node.items():
            if isinstance(key, str) and child is not None:
                yield from _leaves(f"{path}.{key}", child, depth + 1, budget)
    elif _is_list(node):
        for index, child in enumerate(node):
            if child is not None:
                yield from _leaves(f"{path}[{index}]", child, depth + 1, budget)


def iter_leaves(
    event: Mapping[str, Any], segments: Sequence[str], *, max_leaves: int = MAX_LEAVES
) -> Iterator[tuple[str, Scalar]]:
    """Every scalar leaf under the selector, with its concrete path."""
    budget = [max_leaves]
    for path, node in _resolve(event, segments):
        if isinstance(node, str):  # the common case, kept cheap
            budget[0] -= 1
            yield path, node
        else:
            yield from _leaves(path, node, 0, budget)
        if budget[0] <= 0:
            return


def iter_strings(
    event: Mapping[str, Any], segments: Sequence[str], *, max_leaves: int = MAX_LEAVES
) -> Iterator[tuple[str, str]]:
    for path, value in iter_leaves(event, segments, max_leaves=max_leaves):
        if isinstance(value, str):
            yield path, value


def values_at(event: Mapping[str, Any], segments: Sequence[str]) -> tuple[list[Scalar], bool]:
    """The scalar values under the selector and whether it resolved to anything non-null."""
    present = False
    values: list[Scalar] = []
    for path, node in _resolve(event, segments):
        present = True
        values.extend(value for _, value in _leaves(path, node, 0, [MAX_LEAVES]))
    return values, present


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
