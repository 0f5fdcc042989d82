"""Validators that a regex hit must pass (``validate:`` in a rule).

One small class per validator with a stable ``id``, all listed once in
:data:`VALIDATORS`. A validator sees the hit's value (the ``secret`` group,
else group 1, else the whole hit) and answers yes or no.

The national-id validators check what the issuing scheme defines: check
digits or letters, fixed lengths and the few structural rules that come with
them (a CPF of one repeated digit, an Aadhaar number starting with 0 or 1,
the digit-count rule of the German tax id). They do not decide whether a
number was ever issued.
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


def _digits(value: str, length: int) -> str | None:
    """The value without separators if it is exactly ``length`` ASCII digits."""
    digits = _strip_separators(value)
    if len(digits) != length or not digits.isascii() or not digits.isdigit():
        return None
    return digits


# ICAO 9303 machine-readable zones: '<' counts 0, digits their value, A-Z 10..35.
MRZ_WEIGHTS = (7, 3, 1)
TD3_LINE_LENGTH = 44
# TD3 line 2: (first, end) of each checked field, followed by its check digit.
TD3_DOCUMENT = (0, 9)
TD3_BIRTH = (13, 19)
TD3_EXPIRY = (21, 27)
TD3_PERSONAL = (28, 42)
TD3_COMPOSITE_SPANS = ((0, 10), (13, 20), (21, 43))


def mrz_check_digit(field: str) -> int | None:
    """ICAO 9303 check digit of an MRZ field, None if it holds a character outside 0-9, A-Z, <."""
    total = 0
    for index, char in enumerate(field):
        if char == "<":
            value = 0
        elif "0" <= char <= "9":
            value = ord(char) - 48
        elif "A" <= char <= "Z":
            value = ord(char) - 55
        else:
            return None
        total += value * MRZ_WEIGHTS[index % 3]
    return total % 10


class MrzTd3(Validator):
    """ICAO 9303 TD3 (passport) MRZ line 2: nationality letters, six-digit dates,
    sex M/F/X/<, and the document, birth-date, expiry, personal-number and
    composite check digits all hold."""

    id = "mrz-td3"

    def check(self, value: str) -> bool:
        if len(value) != TD3_LINE_LENGTH or not _td3_layout_ok(value):
            return False
        for first, end in (TD3_DOCUMENT, TD3_BIRTH, TD3_EXPIRY):
            if not _mrz_digit_matches(value[first:end], value[end]):
                return False
        first, end = TD3_PERSONAL
        personal_ok = (value[end] == "<" and value[first:end] == "<" * (end - first)) or (
            _mrz_digit_matches(value[first:end], value[end])
        )
        composite = "".join(value[a:b] for a, b in TD3_COMPOSITE_SPANS)
        return personal_ok and _mrz_digit_matches(composite, value[-1])


def _td3_layout_ok(line: str) -> bool:
    nationality = line[TD3_DOCUMENT[1] + 1 : TD3_BIRTH[0]]
    dates = line[slice(*TD3_BIRTH)] + line[slice(*TD3_EXPIRY)]
    return (
        all(ch == "<" or "A" <= ch <= "Z" for ch in nationality)
        and dates.isascii()
        and dates.isdigit()
        and line[TD3_BIRTH[1] + 1] in "MFX<"
    )


def _mrz_digit_matches(field: str, check: str) -> bool:
    expected = mrz_check_digit(field)
    return expected is not None and check == str(expected)


DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"  # indexed by the number mod 23
NIE_PREFIXES: Mapping[str, str] = MappingProxyType({"X": "0", "Y": "1", "Z": "2"})


class SpanishDni(Validator):
    """Spain DNI (8 digits) or NIE (X/Y/Z + 7 digits, the prefix read as 0/1/2):
    the control letter is the number mod 23 looked up in the DNI letter table."""

    id = "es-dni"

    def check(self, value: str) -> bool:
        text = _strip_separators(value).upper()
        if len(text) != 9 or not text.isascii():
            return False
        number = NIE_PREFIXES.get(text[0], text[0]) + text[1:8]
        if not number.isdigit():
            return False
        return DNI_LETTERS[int(number) % 23] == text[8]


BSN_WEIGHTS = (9, 8, 7, 6, 5, 4, 3, 2, -1)


class DutchBsn(Validator):
    """Netherlands BSN: 9 digits whose weighted sum (9..2, last digit -1) is a
    non-zero multiple of 11 (the "11-proof")."""

    id = "nl-bsn"

    def check(self, value: str) -> bool:
        digits = _digits(value, 9)
        if digits is None:
            return False
        total = sum(int(d) * w for d, w in zip(digits, BSN_WEIGHTS, strict=True))
        return total != 0 and total % 11 == 0


NIR_SEXES = "1278"  # 1/2: registered at birth; 7/8: temporary numbers
NIR_CORSICA: Mapping[str, str] = MappingProxyType({"2A": "19", "2B": "18"})


class FrenchNir(Validator):
    """France NIR (INSEE number): 13 characters and a key of 97 - (number mod 97);
    Corsican departments 2A/2B count as 19/18."""

    id = "fr-nir"

    def check(self, value: str) -> bool:
        text = _strip_separators(value).upper()
        if len(text) != 15 or not text.isascii() or text[0] not in NIR_SEXES:
            return False
        number = text[:5] + NIR_CORSICA.get(text[5:7], text[5:7]) + text[7:13]
        key = text[13:]
        if not number.isdigit() or not key.isdigit():
            return False
        return 97 - int(number) % 97 == int(key)


def _cpf_digit(digits: str) -> str:
    """The next CPF check digit of ``digits`` (weights len+1 down to 2, mod 11)."""
    weight = len(digits) + 1
    remainder = sum(int(d) * (weight - i) for i, d in enumerate(digits)) % 11
    return "0" if remainder < 2 else str(11 - remainder)


class BrazilCpf(Validator):
    """Brazil CPF: 11 digits, not one repeated digit, two mod-11 check digits."""

    id = "br-cpf"

    def check(self, value: str) -> bool:
        digits = _digits(value, 11)
        if digits is None or len(set(digits)) == 1:
            return False
        first = _cpf_digit(digits[:9])
        return digits[9] == first and digits[10] == _cpf_digit(digits[:9] + first)


def _dihedral_product(j: int, k: int) -> int:
    """Product in the dihedral group D5 (0-4 rotations, 5-9 reflections), Verhoeff's numbering."""
    if j < 5:
        return (j + k) % 5 + (0 if k < 5 else 5)
    return (j - k) % 5 + (5 if k < 5 else 0)


VERHOEFF_D = tuple(tuple(_dihedral_product(j, k) for k in range(10)) for j in range(10))
_VERHOEFF_P1 = (1, 5, 7, 6, 2, 8, 3, 0, 9, 4)


def _verhoeff_powers() -> tuple[tuple[int, ...], ...]:
    rows = [tuple(range(10))]
    for _ in range(7):
        rows.append(tuple(_VERHOEFF_P1[digit] for digit in rows[-1]))
    return tuple(rows)


VERHOEFF_P = _verhoeff_powers()


def verhoeff_valid(digits: str) -> bool:
    """The digit string (check digit last) passes Verhoeff's dihedral check."""
    state = 0
    for index, char in enumerate(reversed(digits)):
        state = VERHOEFF_D[state][VERHOEFF_P[index % 8][ord(char) - 48]]
    return state == 0


class Aadhaar(Validator):
    """India Aadhaar: 12 digits, the first 2-9, Verhoeff check digit last."""

    id = "in-aadhaar"

    def check(self, value: str) -> bool:
        digits = _digits(value, 12)
        return digits is not None and digits[0] not in "01" and verhoeff_valid(digits)


def iso7064_mod11_10(digits: str) -> int:
    """ISO 7064 MOD 11,10 check digit of a digit string."""
    product = 10
    for char in digits:
        total = (ord(char) - 48 + product) % 10 or 10
        product = total * 2 % 11
    return (11 - product) % 10


def _steuer_id_counts_ok(digits: str) -> bool:
    """Exactly one digit repeats (twice, or three times but not in three adjacent places)."""
    counts = Counter(digits)
    repeated = [d for d, n in counts.items() if n > 1]
    if len(repeated) != 1 or counts[repeated[0]] > 3:
        return False
    return counts[repeated[0]] == 2 or repeated[0] * 3 not in digits


class GermanSteuerId(Validator):
    """Germany Steuer-ID (IdNr): 11 digits, no leading 0, the digit-count rule over
    the first 10, ISO 7064 MOD 11,10 check digit."""

    id = "de-steuer-id"

    def check(self, value: str) -> bool:
        digits = _digits(value, 11)
        if digits is None or digits[0] == "0" or not _steuer_id_counts_ok(digits[:10]):
            return False
        return iso7064_mod11_10(digits[:10]) == int(digits[10])


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


VALIDATORS: Mapping[str, type[Validator]] = build_registry(
    (
        Luhn, Iban, Ssn, Entropy, MrzTd3, SpanishDni, DutchBsn, FrenchNir, BrazilCpf, Aadhaar,
        GermanSteuerId,
    )
)  # fmt: skip


def make_validator(validator_id: str, *, min_entropy: float | None = None) -> Validator:
    """Instantiate a registered validator (``min_entropy`` only for ``entropy``)."""
    cls = VALIDATORS[validator_id]
    if cls is Entropy:
        return Entropy(DEFAULT_MIN_ENTROPY if min_entropy is None else min_entropy)
    return cls()
