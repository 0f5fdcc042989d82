"""What we can learn about a regex before scanning with it.

Rule regexes use ``regex`` package syntax. Where Python's own regex parser
understands a pattern (nearly always) we use its parse tree to:

* derive the literals every match must contain, so the engine can skip the
  regex unless the shared Aho-Corasick pass (or a substring test) saw one;
* find nested quantifiers such as ``(a+)+`` or ``(\\w|\\d)*`` that make a
  backtracking engine explode;
* build adversarial inputs from the pattern's own repeats, which we then run
  with a timeout.

Patterns the parser does not understand get no literal gate (they always run)
and only the timed check with generic inputs.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from detectors.model import Gate
from detectors.normalise import stable_pieces

# Python's regex parser; private, but stable across 3.11+ and the only parser
# of this syntax in the standard library.
_parser: Any = importlib.import_module("re._parser")
_C: Any = importlib.import_module("re._constants")

_IGNORECASE = 2  # re.IGNORECASE
_MAXREPEAT: int = _C.MAXREPEAT
_LARGE_REPEAT = 8  # an outer repeat allowing more iterations counts as unbounded
_AC_MIN_LITERAL = 3
_AC_MAX_ALTERNATIVES = 64
_SUBSTRING_MAX_ALTERNATIVES = 16
_PUMPS = 64
CHECK_TIMEOUT = 0.25  # seconds allowed per adversarial input

# Characters used to compute first-character sets and sample strings.
_PROBES = (
    "a", "A", "z", "0", "9", "_", " ", "\t", "\n", "-", ".", "/", "+", "=", "@", ":",
    "'", '"', "!", "#", "%", "(", ")", "[", "\\", "é", "Ж", "٣", "\u00a0", "\x00",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class RegexInfo:
    gate: Gate
    min_width: int | None  # None when the pattern could not be parsed
    problems: tuple[str, ...]  # backtracking hazards found statically
    largest_repeat: int | None  # the largest finite upper bound of any repeat


def _name(op: Any) -> str:
    return str(op.name)


def parse(source: str) -> Any | None:
    try:
        return _parser.parse(source)
    except Exception:  # any parser failure means "not understood"
        return None


# ---------------------------------------------------------------- char sets


def _category_matches(category: str, ch: str) -> bool:
    match category:
        case "CATEGORY_DIGIT":
            return ch.isdecimal()
        case "CATEGORY_NOT_DIGIT":
            return not ch.isdecimal()
        case "CATEGORY_SPACE":
            return ch.isspace()
        case "CATEGORY_NOT_SPACE":
            return not ch.isspace()
        case "CATEGORY_WORD":
            return ch.isalnum() or ch == "_"
        case "CATEGORY_NOT_WORD":
            return not (ch.isalnum() or ch == "_")
    return True


def _same(a: str, b: str, icase: bool) -> bool:
    return a == b or (icase and a.casefold() == b.casefold())


def _in_matches(items: Sequence[tuple[Any, Any]], ch: str, icase: bool) -> bool:
    negate = False
    hit = False
    for op, av in items:
        name = _name(op)
        if name == "NEGATE":
            negate = True
        elif name == "LITERAL":
            hit = hit or _same(chr(av), ch, icase)
        elif name == "RANGE":
            low, high = av
            hit = hit or low <= ord(ch) <= high
            if icase and not hit:
                hit = any(low <= ord(c) <= high for c in (ch.lower(), ch.upper()))
        elif name == "CATEGORY":
            hit = hit or _category_matches(_name(av), ch)
        else:  # unknown set member: assume it may match
            hit = True
    return bool(hit != negate)


def _char_matches(op: Any, av: Any, ch: str, icase: bool) -> bool:
    name = _name(op)
    if name == "LITERAL":
        return _same(chr(av), ch, icase)
    if name == "NOT_LITERAL":
        return not _same(chr(av), ch, icase)
    if name == "ANY":
        return ch != "\n"
    if name == "IN":
        return _in_matches(av, ch, icase)
    return False


def _flags_of(icase: bool, add: int, remove: int) -> bool:
    if add & _IGNORECASE:
        return True
    if remove & _IGNORECASE:
        return False
    return icase


def _items(sub: Any) -> list[tuple[Any, Any]]:
    return list(sub.data) if hasattr(sub, "data") else list(sub)


def _nullable(item: tuple[Any, Any]) -> bool:
    op, av = item
    name = _name(op)
    if name in ("AT", "ASSERT", "ASSERT_NOT", "GROUPREF"):
        return True
    if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
        return av[0] == 0 or _seq_nullable(_items(av[2]))
    if name == "SUBPATTERN":
        return _seq_nullable(_items(av[3]))
    if name == "ATOMIC_GROUP":
        return _seq_nullable(_items(av))
    if name == "BRANCH":
        return any(_seq_nullable(_items(b)) for b in av[1])
    return name == "GROUPREF_EXISTS"


def _seq_nullable(items: Sequence[tuple[Any, Any]]) -> bool:
    return all(_nullable(item) for item in items)


def _first_set(items: Sequence[tuple[Any, Any]], icase: bool) -> frozenset[str]:
    """Probe characters that can start a match of the sequence."""
    out: set[str] = set()
    for item in items:
        op, av = item
        name = _name(op)
        if name in ("LITERAL", "NOT_LITERAL", "ANY", "IN"):
            out.update(ch for ch in _PROBES if _char_matches(op, av, ch, icase))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            out |= _first_set(_items(av[2]), icase)
        elif name == "SUBPATTERN":
            out |= _first_set(_items(av[3]), _flags_of(icase, av[1], av[2]))
        elif name == "ATOMIC_GROUP":
            out |= _first_set(_items(av), icase)
        elif name == "BRANCH":
            for branch in av[1]:
                out |= _first_set(_items(branch), icase)
        elif name in ("GROUPREF", "GROUPREF_EXISTS"):
            out.update(_PROBES)
        if not _nullable(item):
            break
    return frozenset(out)


# ---------------------------------------------------------------- hazards


def _is_big_repeat(item: tuple[Any, Any]) -> bool:
    op, av = item
    return _name(op) in ("MAX_REPEAT", "MIN_REPEAT") and (
        av[1] == _MAXREPEAT or av[1] > _LARGE_REPEAT
    )


def _can_repeat_inside(item: tuple[Any, Any]) -> bool:
    """The item can match a run in several ways (it contains a free repeat)."""
    op, av = item
    name = _name(op)
    if name in ("MAX_REPEAT", "MIN_REPEAT"):
        return bool(av[1] > 1)
    if name == "SUBPATTERN":
        return _can_split(_items(av[3]))
    if name == "BRANCH":
        return any(_can_split(_items(b)) for b in av[1])
    return False


def _can_split(items: Sequence[tuple[Any, Any]]) -> bool:
    """One item repeats freely and everything around it may be empty."""
    for index, item in enumerate(items):
        rest = [other for j, other in enumerate(items) if j != index]
        if _can_repeat_inside(item) and _seq_nullable(rest):
            return True
    return False


def _unwrap(items: Sequence[tuple[Any, Any]], icase: bool) -> tuple[list[tuple[Any, Any]], bool]:
    current = list(items)
    while len(current) == 1 and _name(current[0][0]) == "SUBPATTERN":
        av = current[0][1]
        icase = _flags_of(icase, av[1], av[2])
        current = _items(av[3])
    return current, icase


def _width(items: Sequence[tuple[Any, Any]]) -> tuple[int, int]:
    sub = _parser.SubPattern(_parser.State(), list(items))
    low, high = sub.getwidth()
    return int(low), int(high)


def _overlapping_single_chars(items: Sequence[tuple[Any, Any]], icase: bool) -> bool:
    body, icase = _unwrap(items, icase)
    if len(body) != 1 or _name(body[0][0]) != "BRANCH":
        return False
    singles = [_items(b) for b in body[0][1][1] if _width(_items(b)) == (1, 1)]
    seen: set[str] = set()
    for branch in singles:
        first = _first_set(branch, icase)
        if seen & first:
            return True
        seen |= first
    return False


def _hazards(items: Sequence[tuple[Any, Any]], icase: bool, out: list[str]) -> None:
    for item in items:
        op, av = item
        name = _name(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            body = _items(av[2])
            if name != "POSSESSIVE_REPEAT" and _is_big_repeat(item):
                if _can_split(body):
                    out.append("nested quantifiers such as (a+)+ can backtrack exponentially")
                elif _overlapping_single_chars(body, icase):
                    out.append(
                        "a repeated alternation whose branches match the same character, "
                        "such as (\\w|\\d)+, can backtrack exponentially"
                    )
            _hazards(body, icase, out)
        elif name == "SUBPATTERN":
            _hazards(_items(av[3]), _flags_of(icase, av[1], av[2]), out)
        elif name == "ATOMIC_GROUP":
            _hazards(_items(av), icase, out)
        elif name == "BRANCH":
            for branch in av[1]:
                _hazards(_items(branch), icase, out)
        elif name in ("ASSERT", "ASSERT_NOT"):
            _hazards(_items(av[1]), icase, out)


# ---------------------------------------------------------------- literals


def _usable(literal: str) -> str:
    """The longest piece of a literal that survives text folding unchanged."""
    return max(stable_pieces(literal), key=len, default="")


def _alternatives(raw: Iterable[str]) -> frozenset[str] | None:
    out = set()
    for literal in raw:
        piece = _usable(literal)
        if not piece:
            return None
        out.add(piece)
    return frozenset(out)


def _better(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    if a is None:
        return b
    if b is None:
        return a
    key_a = (min(map(_weight, a)), -len(a))
    key_b = (min(map(_weight, b)), -len(b))
    return b if key_b > key_a else a


def _inline_groups(items: Sequence[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Splice plain groups into their parent: groups do not change which literals occur."""
    out: list[tuple[Any, Any]] = []
    for op, av in items:
        name = _name(op)
        if name == "SUBPATTERN":
            out.extend(_inline_groups(_items(av[3])))
        elif name == "ATOMIC_GROUP":
            out.extend(_inline_groups(_items(av)))
        else:
            out.append((op, av))
    return out


def _literal_chars(op: Any, av: Any) -> list[str] | None:
    name = _name(op)
    if name == "LITERAL":
        return [chr(av)]
    if name == "IN" and av and all(_name(o) == "LITERAL" for o, _ in av):
        return sorted({chr(a).lower() for _, a in av})
    return None


def _required(items: Sequence[tuple[Any, Any]]) -> frozenset[str] | None:
    """A set of literals one of which every match contains (None if unknown)."""
    best: frozenset[str] | None = None
    run: list[str] = [""]

    def flush() -> None:
        nonlocal best, run
        if run != [""]:
            best = _better(best, _alternatives(run))
        run = [""]

    for op, av in _inline_groups(items):
        chars = _literal_chars(op, av)
        if chars is not None:
            if len(run) * len(chars) > _AC_MAX_ALTERNATIVES:
                flush()
            run = [prefix + ch for prefix in run for ch in chars]
            continue
        flush()
        name = _name(op)
        if name == "BRANCH":
            branches = [_required(_items(b)) for b in av[1]]
            if all(branch is not None for branch in branches):
                union: set[str] = set()
                for branch in branches:
                    union |= branch or set()
                best = _better(best, frozenset(union))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT") and av[0] >= 1:
            best = _better(best, _required(_items(av[2])))
    flush()
    return best


def _weight(literal: str) -> int:
    """How selective a literal is: non-ASCII characters count double."""
    return sum(1 if ch.isascii() else 2 for ch in literal)


def gate_for(literals: frozenset[str] | None) -> Gate:
    if not literals:
        return Gate("always")
    ordered = tuple(sorted(literals))
    selective = min(map(_weight, literals)) >= _AC_MIN_LITERAL
    if selective and len(literals) <= _AC_MAX_ALTERNATIVES:
        return Gate("ac", ordered)
    if len(literals) <= _SUBSTRING_MAX_ALTERNATIVES:
        return Gate("substring", ordered)
    return Gate("always")


def analyse(source: str) -> RegexInfo:
    tree = parse(source)
    if tree is None:
        return RegexInfo(Gate("always"), None, (), None)
    icase = bool(tree.state.flags & _IGNORECASE)
    problems: list[str] = []
    _hazards(_items(tree), icase, problems)
    low, _ = tree.getwidth()
    return RegexInfo(
        gate_for(_required(_items(tree))),
        int(low),
        tuple(dict.fromkeys(problems)),
        _largest_repeat(_items(tree)),
    )


def _largest_repeat(items: Sequence[tuple[Any, Any]]) -> int:
    largest = 0
    for op, av in items:
        name = _name(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            if av[1] != _MAXREPEAT:
                largest = max(largest, int(av[1]))
            largest = max(largest, _largest_repeat(_items(av[2])))
        elif name == "SUBPATTERN":
            largest = max(largest, _largest_repeat(_items(av[3])))
        elif name == "ATOMIC_GROUP":
            largest = max(largest, _largest_repeat(_items(av)))
        elif name == "BRANCH":
            largest = max([largest, *(_largest_repeat(_items(b)) for b in av[1])])
        elif name in ("ASSERT", "ASSERT_NOT"):
            largest = max(largest, _largest_repeat(_items(av[1])))
    return largest


# ---------------------------------------------------------------- timed check


def _sample(items: Sequence[tuple[Any, Any]], icase: bool) -> str:
    """A short string matching the sequence, as far as a sample is cheap to build."""
    out: list[str] = []
    for op, av in items:
        name = _name(op)
        if name == "LITERAL":
            out.append(chr(av))
        elif name in ("NOT_LITERAL", "ANY", "IN"):
            out.append(next((ch for ch in _PROBES if _char_matches(op, av, ch, icase)), "a"))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            out.append(_sample(_items(av[2]), icase) * av[0])
        elif name == "SUBPATTERN":
            out.append(_sample(_items(av[3]), _flags_of(icase, av[1], av[2])))
        elif name == "ATOMIC_GROUP":
            out.append(_sample(_items(av), icase))
        elif name == "BRANCH":
            out.append(_sample(_items(av[1][0]), icase))
    return "".join(out)


def _pumps(items: Sequence[tuple[Any, Any]], prefix: str, icase: bool, out: list[str]) -> None:
    """Attack strings: the text before a repeat, then its body pumped, then a mismatch."""
    here = prefix
    for op, av in items:
        name = _name(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT") and av[1] > 1:
            body = _items(av[2])
            bodies = [body]
            unwrapped, inner_icase = _unwrap(body, icase)
            if len(unwrapped) == 1 and _name(unwrapped[0][0]) == "BRANCH":
                bodies.extend(_items(b) for b in unwrapped[0][1][1])
            for candidate in bodies:
                pump = _sample(candidate, inner_icase) or "a"
                out.append(here + pump * _PUMPS + "\x00")
            _pumps(body, here, icase, out)
        elif name == "SUBPATTERN":
            _pumps(_items(av[3]), here, _flags_of(icase, av[1], av[2]), out)
        elif name == "BRANCH":
            for branch in av[1]:
                _pumps(_items(branch), here, icase, out)
        here += _sample([(op, av)], icase)


def attack_inputs(source: str) -> list[str]:
    tree = parse(source)
    if tree is None:
        generic = sorted({ch for ch in source if ch.isalnum()} | {"a", "0", " "})
        return [ch * _PUMPS + "\x00" for ch in generic]
    out: list[str] = []
    _pumps(_items(tree), "", bool(tree.state.flags & _IGNORECASE), out)
    return list(dict.fromkeys(out))


def slow_input(compiled: Any, source: str) -> str | None:
    """The first adversarial input the compiled regex cannot finish within the timeout."""
    for attack in attack_inputs(source):
        try:
            compiled.search(attack, timeout=CHECK_TIMEOUT)
        except TimeoutError:
            return attack
    return None
