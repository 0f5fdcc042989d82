"""The one error root for rule problems: every error says where it is."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RuleError:
    """One problem in a rule file, located by 1-based line and column.

    ``line`` and ``col`` are 0 when the problem concerns the file as a whole
    (for example a path that does not exist).
    """

    file: str
    line: int
    col: int
    rule_id: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.rule_id or '-'}: {self.message}"


class RuleSetError(Exception):
    """Raised by :func:`detectors.load_rules` with every problem found in one run."""

    def __init__(self, errors: Iterable[RuleError]) -> None:
        self.errors: list[RuleError] = sorted(
            errors, key=lambda e: (e.file, e.line, e.col, e.message)
        )
        super().__init__(self._render())

    def _render(self) -> str:
        count = len(self.errors)
        head = f"{count} error{'s' if count != 1 else ''} in rules"
        return "\n".join([head, *(str(e) for e in self.errors)])

    def __str__(self) -> str:
        return self._render()
