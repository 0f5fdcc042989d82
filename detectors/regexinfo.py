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
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
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
_AC_MAX_ALTERNATIVES = 1024
_MIN_RUN_GATE = 12  # a required run of at least this many class characters is checked
_NARROW_CLASS = 22  # ASCII members of a class as narrow as hex digits
_MIN_NARROW_RUN = 3  # a run this long of a narrow class is already worth a test
_SUBSTRING_MAX_ALTERNATIVES = 16
_MAX_GATE_SETS = 16
_MAX_CHECKS = 3
_EXACT_MAX_REPEAT = 3
_SPACES_RE = re.compile(r"\s+")
_PUMPS = 64
CHECK_TIMEOUT = 0.25  # seconds allowed per adversarial input

# The most frequent English words: as the only literal a regex requires they
# would send it to nearly every text, so sets holding one do not gate.
COMMON_WORDS = frozenset((
    "a", "about", "after", "again", "all", "also", "am", "an", "and", "any", "are", "as", "at",
    "be", "because", "been", "before", "being", "but", "by", "can", "could", "did", "do",
    "does", "doing", "done", "down", "each", "even", "every", "for", "from", "get", "give",
    "go", "going", "good", "got", "had", "has", "have", "he", "her", "here", "him", "his",
    "how", "i", "if", "in", "into", "is", "it", "its", "just", "know", "like", "make", "many",
    "may", "me", "more", "most", "much", "must", "my", "new", "no", "not", "now", "of", "off",
    "on", "one", "only", "or", "other", "our", "out", "over", "people", "please", "said",
    "say", "see", "she", "should", "so", "some", "such", "take", "than", "that", "the",
    "their", "them", "then", "there", "these", "they", "thing", "think", "this", "those",
    "through", "time", "to", "too", "two", "up", "us", "use", "used", "very", "want", "was",
    "way", "we", "well", "were", "what", "when", "where", "which", "while", "who", "why",
    "will", "with", "without", "would", "year", "yes", "you", "your",
))  # fmt: skip

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
    max_width: int | None  # longest possible match; None if unbounded or unknown
    reach: int | None  # how far past a match's end its assertions look; None: unbounded/unknown


def _name(op: Any) -> str:
    return str(op.name)


# An escape, a character class, or a standalone inline flag group such as "(?i)".
_INLINE_FLAGS = re.compile(r"\\.|\[\^?\]?(?:\\.|[^\]\\])*\]|\(\?([aiLmsux]+)\)", re.S)
# Flags that only widen what a pattern matches: moving them to the front keeps
# every literal, run and width the analysis derives valid for the real pattern.
_HOISTABLE = frozenset("ims")


def parse(source: str) -> Any | None:
    """The parse tree, or None if the pattern is not understood.

    The regex package applies an inline flag such as ``(?i)`` from where it
    stands; the parser used here refuses one after the start. When such flags
    only widen the pattern (i, m, s), the pattern is analysed with them moved
    to the front.
    """
    tree = _parsed(source)
    if tree is None and (hoisted := _hoisted(source)) is not None:
        tree = _parsed(hoisted)
    return tree


def _parsed(source: str) -> Any | None:
    try:
        return _parser.parse(source)
    except Exception:  # any parser failure means "not understood"
        return None


def _hoisted(source: str) -> str | None:
    """``source`` with its standalone inline flags moved to the front, if they only widen."""
    flags: list[str] = []

    def lift(match: re.Match[str]) -> str:
        if match.group(1) is None:
            return match.group()
        flags.append(match.group(1))
        return ""

    body = _INLINE_FLAGS.sub(lift, source)
    letters = "".join(dict.fromkeys("".join(flags)))
    if not letters or not set(letters) <= _HOISTABLE:
        return None
    return f"(?{letters}){body}"


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
    return max(stable_pieces(_SPACES_RE.sub(" ", literal)), key=len, default="")


def _alternatives(raw: Iterable[str]) -> frozenset[str] | None:
    """Usable pieces of each literal, minimised: one containing another is dropped."""
    pieces = set()
    for literal in raw:
        piece = _usable(literal).strip(" ")
        if not piece:
            return None
        pieces.add(piece)
    kept: list[str] = []
    for piece in sorted(pieces, key=len):
        if not any(shorter in piece for shorter in kept):
            kept.append(piece)
    return frozenset(kept)


def _weight(literal: str) -> int:
    """How selective a literal is: non-ASCII characters count double, spaces not at all."""
    return sum(0 if ch == " " else 1 if ch.isascii() else 2 for ch in literal)


def _selective(literal: str) -> bool:
    return _weight(literal) >= _AC_MIN_LITERAL and literal.strip(" ") not in COMMON_WORDS


def _strength(alternatives: frozenset[str]) -> tuple[int, int]:
    """Orders literal sets: a set is as selective as its weakest literal."""
    weakest = min(_weight(a) if _selective(a) else 0 for a in alternatives)
    return weakest, -len(alternatives)


def _best(sets: Sequence[frozenset[str]]) -> frozenset[str] | None:
    return max(sets, key=_strength, default=None)


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


def _is_space_item(op: Any, av: Any) -> bool:
    name = _name(op)
    return (name == "CATEGORY" and _name(av) == "CATEGORY_SPACE") or (
        name == "LITERAL" and chr(av).isspace()
    )


def _is_space(op: Any, av: Any) -> bool:
    """The item matches whitespace only (the keyword view shows any run as one space)."""
    if _name(op) == "IN":
        return bool(av) and all(_is_space_item(o, a) for o, a in av)
    return _is_space_item(op, av)


def _product(left: frozenset[str], right: frozenset[str]) -> frozenset[str] | None:
    if len(left) * len(right) > _AC_MAX_ALTERNATIVES:
        return None
    return frozenset(a + b for a in left for b in right)


def _exact(items: Sequence[tuple[Any, Any]]) -> frozenset[str] | None:
    """Every string the sequence can match, if that is a small finite set."""
    out: frozenset[str] | None = frozenset({""})
    for op, av in items:
        options = _exact_item(op, av)
        if options is None or out is None:
            return None
        out = _product(out, options)
    return out


def _exact_item(op: Any, av: Any) -> frozenset[str] | None:
    name = _name(op)
    if _is_space(op, av):
        return frozenset({" "})
    if name == "LITERAL":
        return frozenset({chr(av)})
    if name == "IN" and av and all(_name(o) == "LITERAL" or _is_space_item(o, a) for o, a in av):
        return frozenset(" " if _is_space_item(o, a) else chr(a) for o, a in av)
    if name in ("AT", "ASSERT", "ASSERT_NOT"):
        return frozenset({""})
    if name == "SUBPATTERN":
        return _exact(_items(av[3]))
    if name == "ATOMIC_GROUP":
        return _exact(_items(av))
    if name == "BRANCH":
        union: set[str] = set()
        for branch in av[1]:
            options = _exact(_items(branch))
            if options is None:
                return None
            union |= options
        return frozenset(union) if len(union) <= _AC_MAX_ALTERNATIVES else None
    if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
        return _exact_repeat(av[0], av[1], _items(av[2]))
    return None


def _exact_repeat(low: int, high: int, body: Sequence[tuple[Any, Any]]) -> frozenset[str] | None:
    if len(body) == 1 and _is_space(*body[0]):
        return frozenset({" "}) if low >= 1 else frozenset({"", " "})
    if high > _EXACT_MAX_REPEAT:
        return None
    inner = _exact(body)
    if inner is None:
        return None
    result: set[str] = set()
    power: frozenset[str] | None = frozenset({""})
    for count in range(high + 1):
        if power is None:
            return None
        if count >= low:
            result |= power
        if count < high:
            power = _product(power, inner)
    return frozenset(result) if len(result) <= _AC_MAX_ALTERNATIVES else None


def _required_sets(items: Sequence[tuple[Any, Any]]) -> list[frozenset[str]]:
    """Sets of literals such that every match contains one literal of each set."""
    sets: list[frozenset[str]] = []
    run: frozenset[str] = frozenset({""})

    def flush() -> None:
        nonlocal run
        alternatives = _alternatives(run) if run != {""} else None
        if alternatives:
            sets.append(alternatives)
        run = frozenset({""})

    for op, av in _inline_groups(items):
        options = _exact_item(op, av)
        if options is not None:
            merged = _product(run, options)
            if merged is None:
                flush()
                merged = options
            run = merged
            continue
        flush()
        name = _name(op)
        if name == "BRANCH":
            branches = [_best(_required_sets(_items(b))) for b in av[1]]
            if all(branch is not None for branch in branches):
                sets.append(frozenset().union(*(b for b in branches if b is not None)))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT") and av[0] >= 1:
            sets.extend(_required_sets(_items(av[2])))
    flush()
    return sets


def _start_literals(items: Sequence[tuple[Any, Any]]) -> tuple[str, ...]:
    """Literals one of which every match *starts* with, as the keyword view spells them.

    Empty unless the pattern opens with a small finite set of selective
    literals that folding leaves intact (the engine then tries the regex only at
    the places where the automaton saw one of them).
    """
    run: frozenset[str] = frozenset({""})
    for op, av in _inline_groups(items):
        options = _exact_item(op, av)
        merged = _product(run, options) if options is not None else None
        if merged is None:
            break
        run = merged
    prefixes = set()
    for raw in run:
        literal = _SPACES_RE.sub(" ", raw).casefold()
        pieces = stable_pieces(literal)
        if not pieces or not literal.startswith(pieces[0]) or literal[0] == " ":
            return ()
        prefixes.add(pieces[0])
    kept: list[str] = []
    for literal in sorted(prefixes, key=len):
        if not any(literal.startswith(prefix) for prefix in kept):
            kept.append(literal)
    if len(kept) > _AC_MAX_ALTERNATIVES or not all(map(_selective, kept)):
        return ()
    return tuple(sorted(kept))


def gate_for(sets: Sequence[frozenset[str]], starts: tuple[str, ...] = ()) -> Gate:
    """Selective sets go to the automaton; a few others become substring checks."""
    unique = list(dict.fromkeys(sets))
    strong = [
        s for s in unique if _strength(s)[0] >= _AC_MIN_LITERAL and len(s) <= _AC_MAX_ALTERNATIVES
    ]
    strong.sort(key=_strength, reverse=True)
    weak = [s for s in unique if s not in strong and len(s) <= _SUBSTRING_MAX_ALTERNATIVES]
    weak.sort(key=_strength, reverse=True)
    checks = tuple(tuple(sorted(s)) for s in weak[:_MAX_CHECKS])
    if strong:
        return Gate("ac", tuple(tuple(sorted(s)) for s in strong[:_MAX_GATE_SETS]), starts, checks)
    return Gate("substring" if checks else "always", (), (), checks)


@lru_cache(maxsize=4096)
def analyse(source: str) -> RegexInfo:
    """What the engine needs to know of a regex; kept per source, so a rule reload only
    analyses the regexes that changed (the shipped packs take about 1.6 s of CPU)."""
    tree = parse(source)
    if tree is None:
        return RegexInfo(Gate("always"), None, (), None, None, None)
    icase = bool(tree.state.flags & _IGNORECASE)
    problems: list[str] = []
    _hazards(_items(tree), icase, problems)
    low, high = tree.getwidth()
    items = _items(tree)
    gate = gate_for(_required_sets(items), _start_literals(items))
    run = _required_run(items, icase)
    if run is not None:
        gate = Gate(gate.kind, gate.sets, gate.starts, gate.checks, run[0], run[1])
    return RegexInfo(
        gate,
        int(low),
        tuple(dict.fromkeys(problems)),
        _largest_repeat(items),
        int(high) if high < _MAXREPEAT else None,
        _reach(items),
    )


def _ascii_only_class(op: Any, av: Any) -> bool:
    name = _name(op)
    if name == "LITERAL":
        return bool(av < 128)
    if name == "IN":
        return all(
            (_name(o) == "LITERAL" and a < 128) or (_name(o) == "RANGE" and a[1] < 128)
            for o, a in av
        )
    return False


def _required_run(items: Sequence[tuple[Any, Any]], icase: bool) -> tuple[bytes, int] | None:
    """A byte class and length such that every match holds that many class bytes in a row.

    Taken from the longest repeat of one character class the pattern requires
    (for example ``[A-Za-z0-9/+]{40}``). Bytes of non-ASCII characters count as
    in the class unless the class is pure ASCII, so the test over UTF-8 bytes
    never rejects a text the regex could match.
    """
    best: tuple[bytes, int] | None = None
    for op, av in _inline_groups(items):
        if _name(op) not in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            continue
        low, body = av[0], _items(av[2])
        if low < 1 or len(body) != 1 or (best is not None and low <= best[1]):
            continue
        cop, cav = body[0]
        if _name(cop) not in ("LITERAL", "NOT_LITERAL", "ANY", "IN"):
            continue
        low_half = bytes(
            ord("x") if _char_matches(cop, cav, chr(b), icase) else ord(" ") for b in range(128)
        )
        narrow = low_half.count(b"x") <= _NARROW_CLASS  # digits, hex digits and the like
        if low < (_MIN_NARROW_RUN if narrow else _MIN_RUN_GATE) and b"x" in low_half:
            continue  # a short run of common ASCII characters is not worth a test
        high = ord("x") if not _ascii_only_class(cop, cav) else ord(" ")
        best = (low_half + bytes([high] * 128), low)
    return best


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


# How many characters past the position they are tested at assertions may read.
_AT_REACH = {"AT_BOUNDARY": 1, "AT_NON_BOUNDARY": 1, "AT_END": 2, "AT_END_LINE": 1}


def _reach(items: Sequence[tuple[Any, Any]]) -> int | None:
    """How far past a match's end its assertions may look; None if without bound."""
    furthest = 0
    for op, av in items:
        name = _name(op)
        nested: list[int | None] = []
        if name == "AT":
            nested.append(_AT_REACH.get(_name(av), 0))
        elif name in ("ASSERT", "ASSERT_NOT"):
            inner = _reach(_items(av[1]))
            if av[0] == 1:  # a look-ahead reads its own width, then its assertions' reach
                high = _width(_items(av[1]))[1]
                inner = None if inner is None or high >= _MAXREPEAT else high + inner
            nested.append(inner)
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            nested.append(_reach(_items(av[2])))
        elif name == "SUBPATTERN":
            nested.append(_reach(_items(av[3])))
        elif name == "ATOMIC_GROUP":
            nested.append(_reach(_items(av)))
        elif name == "BRANCH":
            nested.extend(_reach(_items(b)) for b in av[1])
        elif name == "GROUPREF_EXISTS":
            nested.extend(_reach(_items(b)) for b in av[1:] if b is not None)
        for value in nested:
            if value is None:
                return None
            furthest = max(furthest, value)
    return furthest


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
