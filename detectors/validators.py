"""Validators that a regex hit must pass (``validate:`` in a rule).

One small class per validator with a stable ``id``, all listed once in
:data:`VALIDATORS`. A validator sees the hit's value (the ``secret`` group,
else group 1, else the whole hit) and answers yes or no.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

DEFAULT_MIN_ENTROPY = 3.5

# IBAN lengths by country (ISO 13616 registry).
IBAN_LENGTHS: Mapping[str, int] = MappingProxyType(
    {
        "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
        "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
        "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
        "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
        "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
        "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
        "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27,
        "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28,
        "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
        "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
        "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
    }
)  # fmt: skip


def _strip_separators(value: str) -> str:
    return "".join(ch for ch in value if ch not in " -.\t")


class Validator:
    id: ClassVar[str]

    def check(self, value: str) -> bool:
        raise NotImplementedError


class Luhn(Validator):
    """Payment card numbers: 12-19 digits, Luhn checksum, not one repeated digit."""

    id = "luhn"

    def check(self, value: str) -> bool:
        digits = _strip_separators(value)
        if not (12 <= len(digits) <= 19) or not digits.isascii() or not digits.isdigit():
            return False
        if len(set(digits)) == 1:
            return False
        total = 0
        for index, char in enumerate(reversed(digits)):
            digit = ord(char) - 48
            if index % 2 == 1:
                digit *= 2
                if digit > 9:
                    digit -= 9
            total += digit
        return total % 10 == 0


class Iban(Validator):
    """IBAN: known country, that country's length, mod-97 check equals 1."""

    id = "iban"

    def check(self, value: str) -> bool:
        iban = _strip_separators(value).upper()
        if not iban.isascii() or not iban.isalnum():
            return False
        if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban[2:4].isdigit():
            return False
        rearranged = iban[4:] + iban[:4]
        numeric = "".join(str(int(ch, 36)) for ch in rearranged)
        return int(numeric) % 97 == 1


class Ssn(Validator):
    """US SSN: area not 000, 666 or 9xx; group not 00; serial not 0000."""

    id = "ssn"

    def check(self, value: str) -> bool:
        digits = _strip_separators(value)
        if len(digits) != 9 or not digits.isascii() or not digits.isdigit():
            return False
        area, group, serial = digits[:3], digits[3:5], digits[5:]
        if area in ("000", "666") or area[0] == "9":
            return False
        return group != "00" and serial != "0000"


@dataclass(frozen=True, slots=True)
class Entropy(Validator):
    """Shannon entropy of the value, in bits per character, at least ``min_entropy``."""

    id: ClassVar[str] = "entropy"
    min_entropy: float = DEFAULT_MIN_ENTROPY

    def check(self, value: str) -> bool:
        return bool(value) and shannon_entropy(value) >= self.min_entropy


def shannon_entropy(value: str) -> float:
    if not value:
        return 0.0
    length = len(value)
    return -sum((count / length) * math.log2(count / length) for count in Counter(value).values())


def build_registry(classes: Iterable[type[Validator]]) -> Mapping[str, type[Validator]]:
    registry: dict[str, type[Validator]] = {}
    for cls in classes:
        if cls.id in registry:
            raise ValueError(f"validator id {cls.id!r} registered twice")
        registry[cls.id] = cls
    return MappingProxyType(registry)


VALIDATORS: Mapping[str, type[Validator]] = build_registry((Luhn, Iban, Ssn, Entropy))


def make_validator(validator_id: str, *, min_entropy: float | None = None) -> Validator:
    """Instantiate a registered validator (``min_entropy`` only for ``entropy``)."""
    cls = VALIDATORS[validator_id]
    if cls is Entropy:
        return Entropy(DEFAULT_MIN_ENTROPY if min_entropy is None else min_entropy)
    return cls()
