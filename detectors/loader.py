"""Load, validate and compile rule files (``llmtrail.rules/v1``, see docs/rules.md).

Every problem in every file is collected with its file, line, column and rule
id; if there is any, one :class:`RuleSetError` carrying all of them is raised.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import regex

from detectors import regexinfo
from detectors.errors import RuleError, RuleSetError
from detectors.fields import split_selector
from detectors.ml import LABELS
from detectors.model import (
    CATEGORIES,
    KINDS,
    MASKED_CATEGORIES,
    MATURITIES,
    OWASP_IDS,
    SCHEMA,
    SELECTOR_ROOTS,
    SEVERITIES,
    AllOf,
    AnyOf,
    Context,
    Example,
    KeywordLeaf,
    Macro,
    MlLeaf,
    Node,
    NotOf,
    OverlapLeaf,
    Pattern,
    RegexLeaf,
    Rule,
    RuleSet,
    SignalLeaf,
    ValueLeaf,
)
from detectors.modifiers import ModifierError, build_value_test
from detectors.normalise import SIGNALS, fold_keyword
from detectors.validators import VALIDATORS, make_validator
from detectors.yamltree import Loc, YMap, YNode, YScalar, YSeq, describe, parse_yaml

TOP_KEYS = ("schema", "lists", "macros", "rules")
REQUIRED_RULE_KEYS = (
    "id", "title", "description", "severity", "category", "owasp", "applies_to",
    "condition", "examples",
)  # fmt: skip
OPTIONAL_RULE_KEYS = (
    "fields", "maturity", "score", "mask", "tags", "references", "enabled", "exceptions",
)  # fmt: skip
TEXT_LEAF_KEYS = (
    "keywords",
    "regex",
    "signal",
    "ml",
    "min_score",
    "overlap",
    "min_words",
    "field",
    "validate",
    "min_entropy",
    "context",
)
CONTEXT_KEYS = ("near", "absent", "window", "require", "boost")
EXAMPLE_KEYS = ("match", "no_match")
LOGIC_KEYS = ("any", "all", "not", "macro")

DEFAULT_SCORE = 0.8
DEFAULT_MIN_WORDS = 8  # an overlap leaf's run: a sentence, not a common phrase
MIN_WORDS, MAX_WORDS = 3, 64
MAX_COUNT = 100_000  # the largest whole number a rule option takes
DEFAULT_WINDOW = 40
DEFAULT_BOOST = 0.1
MAX_WINDOW = 1000

_RULE_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9_-]+")

UPGRADE_HINT = (
    f"this engine reads '{SCHEMA}'; to upgrade, set 'schema: {SCHEMA}', apply the "
    "changes described in docs/rules.md, and check the file with 'llmtrail rules lint'"
)


def _suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class RuleHeader(NamedTuple):
    """What single-event and stateful rules have in common."""

    title: str
    description: str
    severity: str
    category: str
    owasp: tuple[str, ...]
    tags: tuple[str, ...]
    enabled: bool
    score: float


@dataclass(slots=True)
class _RuleScope:
    """Where we are while compiling one rule's condition."""

    rule_id: str | None
    fields: tuple[str, ...] | None
    strict_fields: bool = True
    macro_stack: tuple[str, ...] = ()
    used_macros: set[str] = field(default_factory=set)


class _Loader:
    def __init__(self) -> None:
        self.errors: list[RuleError] = []
        self.lists: dict[str, tuple[Any, ...]] = {}
        self.list_locs: dict[str, Loc] = {}
        self.macros: dict[str, tuple[YNode, Loc]] = {}
        self.rule_locs: dict[str, Loc] = {}
        self.patterns: dict[str, Pattern | None] = {}
        self.checked_value_regexes: dict[str, str | None] = {}

    # ------------------------------------------------------------ reporting

    def error(self, loc: Loc, rule_id: str | None, message: str) -> None:
        self.errors.append(RuleError(loc.file, loc.line, loc.col, rule_id, message))

    def expect_map(self, node: YNode, what: str, rule_id: str | None) -> YMap | None:
        if isinstance(node, YMap):
            return node
        self.error(node.loc, rule_id, f"{what} must be a mapping, got {describe(node)}")
        return None

    def expect_list(self, node: YNode, what: str, rule_id: str | None) -> YSeq | None:
        if isinstance(node, YSeq):
            return node
        self.error(node.loc, rule_id, f"{what} must be a list, got {describe(node)}")
        return None

    def check_keys(
        self, node: YMap, allowed: Sequence[str], what: str, rule_id: str | None
    ) -> None:
        for key, _ in node.entries:
            if key.text not in allowed:
                self.error(
                    key.loc,
                    rule_id,
                    f"unknown key {key.text!r} in {what}{_suggest(key.text, allowed)}; "
                    f"allowed: {', '.join(allowed)}",
                )

    def text(self, node: YNode, what: str, rule_id: str | None) -> str | None:
        """A free-text scalar (numbers and booleans are taken as written)."""
        if isinstance(node, YScalar) and node.value is not None:
            return node.value if isinstance(node.value, str) else node.text
        self.error(node.loc, rule_id, f"{what} must be a string, got {describe(node)}")
        return None

    def string(self, node: YNode, what: str, rule_id: str | None) -> str | None:
        if isinstance(node, YScalar) and isinstance(node.value, str):
            return node.value
        self.error(node.loc, rule_id, f"{what} must be a string, got {describe(node)}")
        return None

    def enum(
        self, node: YNode, what: str, options: Sequence[str], rule_id: str | None
    ) -> str | None:
        value = self.string(node, what, rule_id)
        if value is None:
            return None
        if value not in options:
            self.error(
                node.loc,
                rule_id,
                f"{what} {value!r} is not one of {', '.join(options)}{_suggest(value, options)}",
            )
            return None
        return value

    def boolean(self, node: YNode, what: str, rule_id: str | None) -> bool | None:
        if isinstance(node, YScalar) and isinstance(node.value, bool):
            return node.value
        self.error(node.loc, rule_id, f"{what} must be true or false, got {describe(node)}")
        return None

    def number(
        self, node: YNode, what: str, rule_id: str | None, low: float, high: float
    ) -> float | None:
        value = node.value if isinstance(node, YScalar) else None
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.error(node.loc, rule_id, f"{what} must be a number, got {describe(node)}")
            return None
        if not low <= value <= high:
            self.error(node.loc, rule_id, f"{what} must be between {low:g} and {high:g}")
            return None
        return float(value)

    def count(
        self, node: YNode, what: str, rule_id: str | None, low: int, high: int = MAX_COUNT
    ) -> int | None:
        value = node.value if isinstance(node, YScalar) else None
        if not isinstance(value, int) or isinstance(value, bool):
            got = repr(value) if isinstance(value, float) else describe(node)
            self.error(node.loc, rule_id, f"{what} must be a whole number, got {got}")
            return None
        if not low <= value <= high:
            self.error(node.loc, rule_id, f"{what} must be between {low} and {high}")
            return None
        return value

    def text_list(
        self,
        node: YNode,
        what: str,
        rule_id: str | None,
        convert: Callable[[YNode, str, str | None], str | None] | None = None,
    ) -> tuple[str, ...] | None:
        seq = self.expect_list(node, what, rule_id)
        if seq is None:
            return None
        convert = convert or self.text
        items = [convert(item, f"each item of {what}", rule_id) for item in seq.items]
        if any(item is None for item in items):
            return None
        return tuple(item for item in items if item is not None)

    def enum_list(
        self, node: YNode, what: str, options: Sequence[str], rule_id: str | None
    ) -> tuple[str, ...] | None:
        seq = self.expect_list(node, what, rule_id)
        if seq is None:
            return None
        values = [self.enum(item, f"{what} item", options, rule_id) for item in seq.items]
        if any(v is None for v in values):
            return None
        out = tuple(v for v in values if v is not None)
        if len(set(out)) != len(out):
            self.error(node.loc, rule_id, f"{what} lists a value twice")
        return out

    def header(self, mapping: YMap, rule_id: str | None) -> RuleHeader:
        """The keys every kind of rule shares, checked (missing ones get neutral defaults)."""

        def opt(key: str, convert: Callable[[YNode], Any], default: Any) -> Any:
            value = mapping.get(key)
            return default if value is None else convert(value)

        return RuleHeader(
            title=opt("title", lambda n: self.text(n, "'title'", rule_id), ""),
            description=opt("description", lambda n: self.text(n, "'description'", rule_id), ""),
            severity=opt("severity", lambda n: self.enum(n, "'severity'", SEVERITIES, rule_id), ""),
            category=opt("category", lambda n: self.enum(n, "'category'", CATEGORIES, rule_id), ""),
            owasp=opt("owasp", lambda n: self.enum_list(n, "'owasp'", OWASP_IDS, rule_id), ()),
            tags=opt("tags", lambda n: self.text_list(n, "'tags'", rule_id), ()),
            enabled=opt("enabled", lambda n: self.boolean(n, "'enabled'", rule_id), True),
            score=opt("score", lambda n: self.number(n, "'score'", rule_id, 0, 1), DEFAULT_SCORE),
        )

    # ------------------------------------------------------------ files

    def load_file(
        self,
        path: Path,
        schema: str = SCHEMA,
        keys: Sequence[str] = TOP_KEYS,
        hint: str = UPGRADE_HINT,
        what: str = "a rule file",
    ) -> YMap | None:
        """Read and parse one file; its top-level mapping if it declares ``schema``.

        ``keys``: the top-level keys allowed; ``hint``: what to do about another
        version of the same schema family.
        """
        file = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            self.error(Loc(file, 0, 0), None, f"not UTF-8 text: {exc.reason}")
            return None
        except OSError as exc:
            self.error(Loc(file, 0, 0), None, f"cannot read: {exc.strerror or exc}")
            return None
        root = parse_yaml(text, file, self.errors)
        if root is None:
            if not any(e.file == file for e in self.errors):
                self.error(Loc(file, 1, 1), None, f"empty file: expected 'schema: {schema}'")
            return None
        top = self.expect_map(root, what, None)
        if top is None:
            return None
        self.check_keys(top, keys, "the file", None)
        node = top.get("schema")
        if node is None:
            self.error(top.loc, None, f"missing 'schema': add 'schema: {schema}' at the top")
            return None
        value = self.string(node, "'schema'", None)
        if value is None:
            return None
        if value != schema:
            family = schema.split("/", maxsplit=1)[0] + "/"
            if value.startswith(family):
                message = f"unsupported schema version {value!r}: {hint}"
            else:
                message = f"unknown schema {value!r}: expected {schema!r}"
            self.error(node.loc, None, message)
            return None
        return top

    def collect_lists(self, top: YMap) -> None:
        node = top.get("lists")
        if node is None:
            return
        lists = self.expect_map(node, "'lists'", None)
        if lists is None:
            return
        for key, value in lists.entries:
            name = key.text
            if not _NAME_RE.fullmatch(name):
                self.error(key.loc, None, f"list name {name!r} is not a valid name")
                continue
            seq = self.expect_list(value, f"list {name!r}", None)
            if seq is None:
                continue
            items: list[Any] = []
            for item in seq.items:
                if isinstance(item, YScalar) and item.value is not None:
                    items.append(item.value)
                else:
                    self.error(item.loc, None, f"list {name!r} items must be scalars")
            if not seq.items:
                self.error(value.loc, None, f"list {name!r} is empty")
            first = self.list_locs.get(name)
            if first is not None:
                self.error(
                    key.loc,
                    None,
                    f"list {name!r} is already defined at {first.file}:{first.line}",
                )
                continue
            self.list_locs[name] = key.loc
            self.lists[name] = tuple(items)

    def collect_macros(self, top: YMap) -> None:
        node = top.get("macros")
        if node is None:
            return
        macros = self.expect_map(node, "'macros'", None)
        if macros is None:
            return
        for key, value in macros.entries:
            name = key.text
            if not _NAME_RE.fullmatch(name):
                self.error(key.loc, None, f"macro name {name!r} is not a valid name")
                continue
            first = self.macros.get(name)
            if first is not None:
                loc = first[1]
                self.error(
                    key.loc, None, f"macro {name!r} is already defined at {loc.file}:{loc.line}"
                )
                continue
            self.macros[name] = (value, key.loc)

    # ------------------------------------------------------------ lists & selectors

    def list_ref(self, node: YScalar, rule_id: str | None) -> tuple[Any, ...] | None:
        name = str(node.value)[1:]
        if name in self.lists:
            return self.lists[name]
        self.error(node.loc, rule_id, f"unknown list '${name}'{_suggest(name, self.lists)}")
        return None

    def scalars(self, node: YNode, what: str, rule_id: str | None) -> list[Any] | None:
        """A scalar or list of scalars, with '$name' items expanded from lists."""
        items = node.items if isinstance(node, YSeq) else (node,)
        out: list[Any] = []
        ok = True
        for item in items:
            if not isinstance(item, YScalar):
                self.error(item.loc, rule_id, f"{what} must be scalars, got {describe(item)}")
                ok = False
            elif isinstance(item.value, str) and item.value.startswith("$"):
                expanded = self.list_ref(item, rule_id)
                ok = ok and expanded is not None
                out.extend(expanded or ())
            else:
                out.append(item.value)
        return out if ok else None

    def phrases(self, node: YNode, what: str, rule_id: str | None) -> tuple[str, ...] | None:
        if isinstance(node, YScalar) and not (
            isinstance(node.value, str) and node.value.startswith("$")
        ):
            self.error(node.loc, rule_id, f"{what} must be a list of phrases or '$listname'")
            return None
        values = self.scalars(node, what, rule_id)
        if values is None:
            return None
        if not values:
            self.error(node.loc, rule_id, f"{what} is empty")
            return None
        out: list[str] = []
        for value in values:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                self.error(node.loc, rule_id, f"{what} must be strings, got {value!r}")
                return None
            folded = fold_keyword(str(value))
            if not folded:
                self.error(node.loc, rule_id, f"{what}: {value!r} is empty after normalisation")
                return None
            out.append(folded)
        return tuple(dict.fromkeys(out))

    def selector(self, text: str, loc: Loc, rule_id: str | None) -> str | None:
        segments = text.split(".")
        if "*" in text:
            self.error(loc, rule_id, f"selector {text!r}: wildcards are not supported")
            return None
        if not all(_SEGMENT_RE.fullmatch(s) for s in segments):
            self.error(loc, rule_id, f"selector {text!r} is not a dotted path of names")
            return None
        if segments[0] not in SELECTOR_ROOTS:
            self.error(
                loc,
                rule_id,
                f"selector {text!r} has unknown root {segments[0]!r}"
                f"{_suggest(segments[0], SELECTOR_ROOTS)}; known roots: "
                f"{', '.join(SELECTOR_ROOTS)}",
            )
            return None
        return text

    def selectors(self, node: YNode, what: str, rule_id: str | None) -> tuple[str, ...] | None:
        items = node.items if isinstance(node, YSeq) else (node,)
        out: list[str] = []
        for item in items:
            text = self.string(item, what, rule_id)
            if text is None:
                return None
            selector = self.selector(text, item.loc, rule_id)
            if selector is None:
                return None
            out.append(selector)
        if not out:
            self.error(node.loc, rule_id, f"{what} is empty")
            return None
        return tuple(dict.fromkeys(out))

    # ------------------------------------------------------------ regexes

    def regex_problem(self, source: str) -> str | None:
        """Why a regex is unusable (syntax, empty match, backtracking), or None."""
        return self.check_regex(source)[1]

    def check_regex(self, source: str) -> tuple[Pattern | None, str | None]:
        try:
            compiled = regex.compile(source)
        except regex.error as exc:
            return None, f"invalid regex {source!r}: {exc}"
        info = regexinfo.analyse(source)
        if info.min_width == 0 or (info.min_width is None and compiled.search("") is not None):
            return None, f"regex {source!r} can match the empty string"
        if info.problems:
            return None, f"regex {source!r} rejected: {info.problems[0]}"
        slow = regexinfo.slow_input(compiled, source)
        if slow is not None:
            return None, (
                f"regex {source!r} may backtrack catastrophically: a {len(slow)}-character "
                f"input took longer than {regexinfo.CHECK_TIMEOUT:g}s"
            )
        secret: str | int = "secret" if "secret" in compiled.groupindex else 0
        check: str | int = secret if secret else (1 if compiled.groups else 0)
        pattern = Pattern(
            source,
            compiled,
            info.gate,
            secret,
            check,
            info.largest_repeat,
            info.max_width,
            info.reach,
        )
        return pattern, None

    def pattern(self, node: YNode, rule_id: str | None) -> Pattern | None:
        source = self.string(node, "'regex'", rule_id)
        if source is None:
            return None
        if source not in self.patterns:
            pattern, problem = self.check_regex(source)
            self.patterns[source] = pattern
            if problem is not None:
                self.error(node.loc, rule_id, problem)
            return pattern
        cached = self.patterns[source]
        if cached is None:
            self.error(node.loc, rule_id, f"regex {source!r} is rejected (see above)")
        return cached

    # ------------------------------------------------------------ conditions

    def node(self, node: YNode, scope: _RuleScope) -> Node | None:
        rule_id = scope.rule_id
        if not isinstance(node, YMap):
            hint = "; use 'any:' or 'all:' for a list" if isinstance(node, YSeq) else ""
            self.error(
                node.loc, rule_id, f"a condition must be a mapping, got {describe(node)}{hint}"
            )
            return None
        if not node.entries:
            self.error(node.loc, rule_id, "empty condition")
            return None
        logic = [k for k in node.names() if k in LOGIC_KEYS]
        if logic:
            if len(node.entries) > 1:
                self.error(
                    node.loc,
                    rule_id,
                    f"{logic[0]!r} must be the only key of its mapping; "
                    "wrap siblings in 'all:' or 'any:'",
                )
                return None
            return self.logic(logic[0], node, scope)
        return self.leaf(node, scope)

    def logic(self, key: str, node: YMap, scope: _RuleScope) -> Node | None:
        value = node.get(key)
        assert value is not None
        if key == "not":
            child = self.node(value, scope)
            return NotOf(child) if child is not None else None
        if key == "macro":
            return self.macro(value, scope)
        seq = self.expect_list(value, f"'{key}'", scope.rule_id)
        if seq is None:
            return None
        if not seq.items:
            self.error(value.loc, scope.rule_id, f"'{key}' needs at least one condition")
            return None
        children = [self.node(item, scope) for item in seq.items]
        if any(child is None for child in children):
            return None
        kept = tuple(child for child in children if child is not None)
        if len(kept) == 1:
            return kept[0]
        return AnyOf(kept) if key == "any" else AllOf(kept)

    def macro(self, value: YNode, scope: _RuleScope) -> Node | None:
        name = self.string(value, "'macro'", scope.rule_id)
        if name is None:
            return None
        if name not in self.macros:
            self.error(
                value.loc, scope.rule_id, f"unknown macro {name!r}{_suggest(name, self.macros)}"
            )
            return None
        if name in scope.macro_stack:
            cycle = " -> ".join((*scope.macro_stack[scope.macro_stack.index(name) :], name))
            self.error(value.loc, scope.rule_id, f"macro cycle: {cycle}")
            return None
        scope.used_macros.add(name)
        body, _ = self.macros[name]
        inner = _RuleScope(
            scope.rule_id,
            scope.fields,
            scope.strict_fields,
            (*scope.macro_stack, name),
            scope.used_macros,
        )
        return self.node(body, inner)

    def leaf(self, node: YMap, scope: _RuleScope) -> Node | None:
        rule_id = scope.rule_id
        parts: list[Node] = []
        ok = True
        text_keys = {k.text: (k, v) for k, v in node.entries if k.text in TEXT_LEAF_KEYS}
        for key, value in node.entries:
            if key.text in TEXT_LEAF_KEYS:
                continue
            built = self.value_leaf(key, value, rule_id)
            ok = ok and built is not None
            if built is not None:
                parts.append(built)
        if text_keys:
            built_text = self.text_leaves(node, text_keys, scope)
            ok = ok and built_text is not None
            parts.extend(built_text or ())
        if not ok:
            return None
        return parts[0] if len(parts) == 1 else AllOf(tuple(parts))

    def text_leaves(
        self, node: YMap, keys: dict[str, tuple[YScalar, YNode]], scope: _RuleScope
    ) -> list[Node] | None:
        rule_id = scope.rule_id
        matchers = [k for k in ("keywords", "regex", "signal", "ml", "overlap") if k in keys]
        if not matchers:
            first = next(iter(keys.values()))[0]
            self.error(
                first.loc,
                rule_id,
                f"{first.text!r} needs 'keywords', 'regex', 'signal', 'ml' or 'overlap' "
                "in the same mapping",
            )
            return None
        for option, owner in (("min_score", "ml"), ("min_words", "overlap")):
            if option in keys and owner not in keys:
                self.error(
                    keys[option][0].loc, rule_id, f"'{option}' needs '{owner}' in the same mapping"
                )
                return None
        fields = scope.fields
        if "field" in keys:
            fields = self.selectors(keys["field"][1], "'field'", rule_id)
            if fields is None:
                return None
        if fields is None:
            if scope.strict_fields:
                self.error(
                    node.loc,
                    rule_id,
                    "no fields to search: set 'fields' on the rule or 'field' on this leaf",
                )
                return None
            fields = ("prompt.text",)  # placeholder while checking an unused macro
        context = None
        if "context" in keys:
            if "keywords" not in keys and "regex" not in keys:
                self.error(keys["context"][0].loc, rule_id, "'context' needs 'keywords' or 'regex'")
                return None
            context = self.context(keys["context"][1], rule_id)
            if context is None:
                return None
        validator = self.validator(keys, rule_id)
        if validator is False:
            return None
        out: list[Node] = []
        if "keywords" in keys:
            phrases = self.phrases(keys["keywords"][1], "'keywords'", rule_id)
            if phrases is None:
                return None
            out.append(KeywordLeaf(phrases, fields, context, keys["keywords"][0].loc.line))
        if "regex" in keys:
            value = keys["regex"][1]
            items = value.items if isinstance(value, YSeq) else (value,)
            if not items:
                self.error(value.loc, rule_id, "'regex' is empty")
                return None
            patterns = [self.pattern(item, rule_id) for item in items]
            if any(p is None for p in patterns):
                return None
            out.append(
                RegexLeaf(
                    tuple(p for p in patterns if p is not None),
                    fields,
                    validator or None,
                    context,
                    keys["regex"][0].loc.line,
                )
            )
        if "signal" in keys:
            signal = self.enum(keys["signal"][1], "'signal'", SIGNALS, rule_id)
            if signal is None:
                return None
            out.append(SignalLeaf(signal, fields, keys["signal"][0].loc.line))
        if "ml" in keys:
            label = self.enum(keys["ml"][1], "'ml'", LABELS, rule_id)
            min_score = None
            if "min_score" in keys:
                min_score = self.number(keys["min_score"][1], "'min_score'", rule_id, 0.0, 1.0)
                if min_score is None:
                    return None
            if label is None:
                return None
            out.append(MlLeaf(label, min_score, fields, keys["ml"][0].loc.line))
        if "overlap" in keys:
            overlap = self.overlap(keys, fields, rule_id)
            if overlap is None:
                return None
            out.append(overlap)
        return out

    def overlap(
        self, keys: dict[str, tuple[YScalar, YNode]], fields: tuple[str, ...], rule_id: str | None
    ) -> OverlapLeaf | None:
        key, value = keys["overlap"]
        text = self.string(value, "'overlap'", rule_id)
        reference = None if text is None else self.selector(text, value.loc, rule_id)
        min_words: int | None = DEFAULT_MIN_WORDS
        if "min_words" in keys:
            min_words = self.count(
                keys["min_words"][1], "'min_words'", rule_id, MIN_WORDS, MAX_WORDS
            )
        if reference is None or min_words is None:
            return None
        return OverlapLeaf(split_selector(reference), min_words, fields, key.loc.line)

    def validator(self, keys: dict[str, tuple[YScalar, YNode]], rule_id: str | None) -> Any:
        """The leaf's validator, None without one, False after an error."""
        if "validate" not in keys:
            if "min_entropy" in keys:
                self.error(
                    keys["min_entropy"][0].loc, rule_id, "'min_entropy' needs 'validate: entropy'"
                )
                return False
            return None
        key, value = keys["validate"]
        if "regex" not in keys:
            self.error(key.loc, rule_id, "'validate' needs 'regex' in the same mapping")
            return False
        name = self.enum(value, "'validate'", tuple(VALIDATORS), rule_id)
        if name is None:
            return False
        min_entropy = None
        if "min_entropy" in keys:
            if name != "entropy":
                self.error(
                    keys["min_entropy"][0].loc, rule_id, "'min_entropy' needs 'validate: entropy'"
                )
                return False
            min_entropy = self.number(keys["min_entropy"][1], "'min_entropy'", rule_id, 0, 16)
            if min_entropy is None:
                return False
        return make_validator(name, min_entropy=min_entropy)

    def word_pattern(self, node: YNode, what: str, rule_id: str | None) -> Any:
        words = self.phrases(node, what, rule_id)
        if words is None:
            return None
        alternatives = "|".join(regex.escape(w) for w in sorted(words, key=len, reverse=True))
        return regex.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")

    def context(self, node: YNode, rule_id: str | None) -> Context | None:
        mapping = self.expect_map(node, "'context'", rule_id)
        if mapping is None:
            return None
        self.check_keys(mapping, CONTEXT_KEYS, "'context'", rule_id)
        if mapping.get("near") is None and mapping.get("absent") is None:
            self.error(mapping.loc, rule_id, "'context' needs 'near' or 'absent'")
            return None
        near = absent = None
        window, require, boost = float(DEFAULT_WINDOW), True, DEFAULT_BOOST
        ok = all(key.text in CONTEXT_KEYS for key, _ in mapping.entries)
        if (value := mapping.get("near")) is not None:
            near = self.word_pattern(value, "'near'", rule_id)
            ok = ok and near is not None
        if (value := mapping.get("absent")) is not None:
            absent = self.word_pattern(value, "'absent'", rule_id)
            ok = ok and absent is not None
        if (value := mapping.get("window")) is not None:
            got = self.number(value, "'window'", rule_id, 1, MAX_WINDOW)
            ok = ok and got is not None
            window = got if got is not None else window
        if (value := mapping.get("require")) is not None:
            flag = self.boolean(value, "'require'", rule_id)
            ok = ok and flag is not None
            require = flag if flag is not None else require
        if (value := mapping.get("boost")) is not None:
            got = self.number(value, "'boost'", rule_id, 0, 1)
            ok = ok and got is not None
            boost = got if got is not None else boost
        if not ok:
            return None
        return Context(near, absent, int(window), require, boost)

    def value_leaf(self, key: YScalar, value: YNode, rule_id: str | None) -> Node | None:
        selector_text, *mods = key.text.split("|")
        root = selector_text.split(".")[0]
        if not mods and root not in SELECTOR_ROOTS:
            allowed = (*LOGIC_KEYS, *TEXT_LEAF_KEYS)
            self.error(
                key.loc,
                rule_id,
                f"unknown key {key.text!r} in a condition{_suggest(key.text, allowed)}; "
                f"expected one of {', '.join(allowed)} or a field selector",
            )
            return None
        selector = self.selector(selector_text, key.loc, rule_id)
        if selector is None:
            return None
        values = self.scalars(value, f"the values of {key.text!r}", rule_id)
        if values is None:
            return None
        try:
            test = build_value_test(mods, values)
        except ModifierError as exc:
            self.error(key.loc, rule_id, f"{key.text!r}: {exc}")
            return None
        if test.refs:  # the values are selectors: check them where they are written
            items = value.items if isinstance(value, YSeq) else (value,)
            bad = [
                v
                for v in items
                if isinstance(v, YScalar) and self.selector(str(v.value), v.loc, rule_id) is None
            ]
            if bad:
                return None
        if test.operator == "re":
            for source in values:
                problem = self.checked_value_regexes.setdefault(
                    str(source), self.regex_problem(str(source))
                )
                if problem is not None:
                    self.error(key.loc, rule_id, problem)
                    return None
        return ValueLeaf(selector, test, key.loc.line)

    # ------------------------------------------------------------ rules

    def examples(self, node: YNode, rule_id: str | None) -> list[Example]:
        mapping = self.expect_map(node, "'examples'", rule_id)
        if mapping is None:
            return []
        self.check_keys(mapping, EXAMPLE_KEYS, "'examples'", rule_id)
        out: list[Example] = []
        has_match = False
        for key in EXAMPLE_KEYS:
            value = mapping.get(key)
            if value is None:
                continue
            seq = self.expect_list(value, f"'examples.{key}'", rule_id)
            items = seq.items if seq is not None else ()
            has_match = has_match or (key == "match" and bool(items))
            for item in items:
                example = self.example(item, rule_id)
                if example is not None:
                    expect: Literal["match", "no_match"] = "match" if key == "match" else "no_match"
                    out.append(Example(expect, example, item.loc.line, item.loc.col))
        if not has_match:
            self.error(
                mapping.loc,
                rule_id,
                "the rule has no match examples: add at least one under 'examples.match'",
            )
        return out

    def example(self, node: YNode, rule_id: str | None) -> str | dict[str, Any] | None:
        if isinstance(node, YScalar) and isinstance(node.value, str):
            return node.value
        if isinstance(node, YMap):
            event = to_python(node)
            assert isinstance(event, dict)
            kind = event.get("kind")
            if kind is not None and kind not in KINDS:
                self.error(
                    node.loc, rule_id, f"example kind {kind!r} is not one of {', '.join(KINDS)}"
                )
                return None
            return event
        self.error(
            node.loc,
            rule_id,
            f"an example must be a string or a partial event mapping, got {describe(node)}",
        )
        return None

    def rule(self, node: YNode) -> tuple[Rule | None, _RuleScope | None]:
        mapping = self.expect_map(node, "a rule", None)
        if mapping is None:
            return None, None
        rule_id = self.rule_id(mapping)
        self.check_keys(mapping, REQUIRED_RULE_KEYS + OPTIONAL_RULE_KEYS, "a rule", rule_id)
        missing = [k for k in REQUIRED_RULE_KEYS if mapping.get(k) is None]
        for key in missing:
            self.error(mapping.loc, rule_id, f"missing required key {key!r}")
        before = len(self.errors)
        get = mapping.get

        def opt(key: str, convert: Callable[[YNode], Any], default: Any) -> Any:
            value = get(key)
            return default if value is None else convert(value)

        head = self.header(mapping, rule_id)
        applies_to = opt(
            "applies_to", lambda n: self.enum_list(n, "'applies_to'", KINDS, rule_id), ()
        )
        if (kinds_node := get("applies_to")) is not None and applies_to == ():
            self.error(kinds_node.loc, rule_id, "'applies_to' needs at least one kind")
        fields = opt("fields", lambda n: self.selectors(n, "'fields'", rule_id), None)
        maturity = opt(
            "maturity", lambda n: self.enum(n, "'maturity'", MATURITIES, rule_id), "stable"
        )
        mask = opt("mask", lambda n: self.boolean(n, "'mask'", rule_id), None)
        references = opt("references", lambda n: self.text_list(n, "'references'", rule_id), ())
        scope = _RuleScope(rule_id, fields)
        condition = opt("condition", lambda n: self.node(n, scope), None)
        exceptions: list[Node | None] = []
        if (exc_node := get("exceptions")) is not None:
            seq = self.expect_list(exc_node, "'exceptions'", rule_id)
            exceptions = [self.node(item, scope) for item in (seq.items if seq else ())]
        examples = opt("examples", lambda n: self.examples(n, rule_id), [])
        if missing or len(self.errors) > before or rule_id is None or condition is None:
            return None, scope
        return (
            Rule(
                id=rule_id,
                title=head.title,
                description=head.description,
                severity=head.severity,
                category=head.category,
                owasp=head.owasp,
                applies_to=applies_to,
                fields=fields or (),
                maturity=maturity,
                score=head.score,
                mask=head.category in MASKED_CATEGORIES if mask is None else mask,
                tags=head.tags,
                references=references,
                enabled=head.enabled,
                condition=condition,
                exceptions=tuple(e for e in exceptions if e is not None),
                examples=tuple(examples),
                file=mapping.loc.file,
                line=mapping.loc.line,
            ),
            scope,
        )

    def rule_id(self, mapping: YMap) -> str | None:
        node = mapping.get("id")
        if node is None:
            return None
        value = self.string(node, "'id'", None)
        if value is None:
            return None
        if not _RULE_ID_RE.fullmatch(value):
            self.error(node.loc, None, f"rule id {value!r} must match [a-z0-9][a-z0-9._-]*")
            return None
        first = self.rule_locs.get(value)
        if first is not None:
            self.error(
                node.loc,
                value,
                f"duplicate rule id {value!r} (first defined at {first.file}:{first.line})",
            )
            return None
        self.rule_locs[value] = node.loc
        return value

    def check_unused_macros(self, used: set[str]) -> None:
        for name, (body, _) in self.macros.items():
            if name not in used:
                self.node(body, _RuleScope(None, None, strict_fields=False, macro_stack=(name,)))


def to_python(node: YNode) -> Any:
    if isinstance(node, YScalar):
        return node.value
    if isinstance(node, YSeq):
        return [to_python(item) for item in node.items]
    return {key.text: to_python(value) for key, value in node.entries}


def _expand(paths: Sequence[str | Path], loader: _Loader) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
            )
            if not found:
                loader.error(Loc(str(path), 0, 0), None, "no rule files (*.yaml, *.yml) here")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            loader.error(Loc(str(path), 0, 0), None, "no such file or directory")
    unique: dict[Path, Path] = {}
    for file in files:
        unique.setdefault(file.resolve(), file)
    return list(unique.values())


def load_rules(paths: Sequence[str | Path]) -> RuleSet:
    """Load rule files and directories (``*.yaml``/``*.yml`` inside, sorted, not recursive).

    Raises :class:`RuleSetError` with every problem found, in file order.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    loader = _Loader()
    files = _expand(paths, loader)
    tops = [(file, loader.load_file(file)) for file in files]
    loaded = [(file, top) for file, top in tops if top is not None]
    for _, top in loaded:
        loader.collect_lists(top)
        loader.collect_macros(top)
    rules: list[Rule] = []
    used_macros: set[str] = set()
    for _, top in loaded:
        node = top.get("rules")
        if node is None:
            continue
        seq = loader.expect_list(node, "'rules'", None)
        for item in seq.items if seq is not None else ():
            rule, scope = loader.rule(item)
            if scope is not None:
                used_macros |= scope.used_macros
            if rule is not None:
                rules.append(rule)
    loader.check_unused_macros(used_macros)
    if loader.errors:
        raise RuleSetError(dict.fromkeys(loader.errors))
    return RuleSet(
        rules=tuple(rules),
        lists=MappingProxyType(dict(loader.lists)),
        macros=MappingProxyType(
            {name: Macro(name, loc.file, loc.line) for name, (_, loc) in loader.macros.items()}
        ),
        sources=tuple(str(f) for f, _ in loaded),
    )
