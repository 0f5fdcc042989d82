"""The compiled rule model: pure, immutable data produced by the loader.

Condition nodes are plain frozen dataclasses compared by identity; the engine
turns them into its own matching structures. Nothing here scans text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import regex

from detectors.modifiers import ValueTest
from detectors.validators import Validator

SCHEMA = "llmtrail.rules/v1"
SEVERITIES: tuple[str, ...] = ("info", "low", "medium", "high", "critical")
CATEGORIES: tuple[str, ...] = (
    "prompt_injection",
    "jailbreak",
    "pii",
    "secret",
    "insecure_output",
    "tool_abuse",
    "data_exfiltration",
    "system_prompt_leak",
    "compliance",
    "anomaly",
)
OWASP_IDS: tuple[str, ...] = tuple(f"LLM{n:02d}" for n in range(1, 11))
KINDS: tuple[str, ...] = ("prompt", "response", "tool_call")
MATURITIES: tuple[str, ...] = ("stable", "test", "experimental")
SELECTOR_ROOTS: tuple[str, ...] = (
    "prompt",
    "response",
    "tool",
    "system_prompt",
    "user",
    "model",
    "usage",
    "tags",
    "service",
    "environment",
    "kind",
    "session_id",
    "trace_id",
    "latency_ms",
)
MASKED_CATEGORIES = frozenset({"pii", "secret"})

# How a regex is skipped cheaply when it cannot match. Literal sets are
# case-folded, as the keyword view spells them, and every match holds one
# literal of each set:
#   ``sets``: selective sets, each of which the shared Aho-Corasick pass must
#             have seen (kind "ac");
#   ``checks``: a few less selective sets, tested with ``in`` on the keyword view
#               once the rest of the gate has passed (kind "substring" when a
#               pattern has only these);
#   ``starts``: literals one of which every match starts with: the engine tries
#               the regex only where the automaton saw one of them;
#   ``run_table``/``run_length``: every match holds ``run_length`` consecutive
#               bytes (of the UTF-8 text) that ``run_table`` maps to b"x".
# Kind "always": nothing usable; the regex runs (Hyperscan may still skip it).
GateKind = Literal["ac", "substring", "always"]


@dataclass(frozen=True, slots=True)
class Gate:
    kind: GateKind
    sets: tuple[tuple[str, ...], ...] = ()
    starts: tuple[str, ...] = ()
    checks: tuple[tuple[str, ...], ...] = ()
    run_table: bytes = b""
    run_length: int = 0


@dataclass(frozen=True, eq=False, slots=True)
class Pattern:
    """One compiled regex with what the engine needs to run it cheaply."""

    source: str
    compiled: regex.Pattern[str]
    gate: Gate
    # Evidence spans the named group ``secret`` if the pattern has one.
    evidence_group: str | int
    # Validators check ``secret``, else group 1, else the whole hit.
    check_group: str | int
    # Largest finite repeat bound (None: not parsed); large bounds make
    # Hyperscan's compile slow, so such patterns stay out of its database.
    largest_repeat: int | None = None
    # Longest possible match (None: unbounded or unknown).
    max_width: int | None = None
    # How far past a match's end its look-aheads and word boundaries read
    # (None: unbounded or unknown).
    reach: int | None = None


@dataclass(frozen=True, eq=False, slots=True)
class Context:
    """Words searched near a hit (in the folded text of a window around it)."""

    near: regex.Pattern[str] | None
    absent: regex.Pattern[str] | None
    window: int
    require: bool
    boost: float


@dataclass(frozen=True, eq=False, slots=True)
class KeywordLeaf:
    phrases: tuple[str, ...]  # already normalised (folded) phrases
    fields: tuple[str, ...]
    context: Context | None
    line: int


@dataclass(frozen=True, eq=False, slots=True)
class RegexLeaf:
    patterns: tuple[Pattern, ...]
    fields: tuple[str, ...]
    validator: Validator | None
    context: Context | None
    line: int


@dataclass(frozen=True, eq=False, slots=True)
class SignalLeaf:
    signal: str
    fields: tuple[str, ...]
    line: int


@dataclass(frozen=True, eq=False, slots=True)
class MlLeaf:
    """The ML classifier's score for ``label`` on the fields, at least ``min_score``."""

    label: str
    min_score: float | None  # None: the model's own threshold for the label
    fields: tuple[str, ...]
    line: int


@dataclass(frozen=True, eq=False, slots=True)
class OverlapLeaf:
    """A field text shares ``min_words`` consecutive words with what ``reference`` reaches."""

    reference: tuple[str, ...]  # selector segments, e.g. ("system_prompt", "text")
    min_words: int
    fields: tuple[str, ...]
    line: int


@dataclass(frozen=True, eq=False, slots=True)
class ValueLeaf:
    selector: str
    test: ValueTest
    line: int


@dataclass(frozen=True, eq=False, slots=True)
class AnyOf:
    children: tuple[Node, ...]


@dataclass(frozen=True, eq=False, slots=True)
class AllOf:
    children: tuple[Node, ...]


@dataclass(frozen=True, eq=False, slots=True)
class NotOf:
    child: Node


TextLeaf = KeywordLeaf | RegexLeaf | SignalLeaf | MlLeaf | OverlapLeaf
Node = (
    AnyOf | AllOf | NotOf | KeywordLeaf | RegexLeaf | SignalLeaf | MlLeaf | OverlapLeaf | ValueLeaf
)


@dataclass(frozen=True, slots=True)
class Example:
    expect: Literal["match", "no_match"]
    value: str | Mapping[str, Any]
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    title: str
    description: str
    severity: str
    category: str
    owasp: tuple[str, ...]
    applies_to: tuple[str, ...]
    fields: tuple[str, ...]
    maturity: str
    score: float
    mask: bool
    tags: tuple[str, ...]
    references: tuple[str, ...]
    enabled: bool
    condition: Node
    exceptions: tuple[Node, ...]
    examples: tuple[Example, ...]
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class Macro:
    name: str
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class RuleSet:
    """A validated, compiled set of rules. Immutable; build engines from it."""

    rules: tuple[Rule, ...]
    lists: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    macros: Mapping[str, Macro] = field(default_factory=dict)
    sources: tuple[str, ...] = ()

    def rule(self, rule_id: str) -> Rule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)


def iter_nodes(node: Node) -> list[Node]:
    """Every node of a condition tree, parents before children."""
    out: list[Node] = []
    stack: list[Node] = [node]
    while stack:
        current = stack.pop()
        out.append(current)
        if isinstance(current, AnyOf | AllOf):
            stack.extend(reversed(current.children))
        elif isinstance(current, NotOf):
            stack.append(current.child)
    return out
