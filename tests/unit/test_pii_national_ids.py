"""National ids and passport MRZs: the checksum validators and the PII rules that use them.

Valid numbers were computed with each scheme's published algorithm (and
checked against an independent implementation); every near miss changes one
thing: a digit, the letter, the length, a structural rule. Pure: no broker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from detectors import Engine, load_rules
from detectors.validators import iso7064_mod11_10, make_validator, mrz_check_digit, verhoeff_valid
from tests.unit.test_rule_packs import event

RULES = Path(__file__).resolve().parents[2] / "rules"

MRZ_DE = "C4RT7K2N11D<<8503149F3109225<<<<<<<<<<<<<<<6"
MRZ_NL = "NX4827Q050NLD9207019M2901189731049562<<<<<50"
MRZ_ES = "E1904Z7<<6ESP7802269<3306057FRAQ4471<<<<<<68"
MRZ_GB = "5334019283GBR0111300X3407116<<<<<<<<<<<<<<<2"

VALIDATOR_CASES = [
    # ICAO 9303 TD3 line 2
    ("mrz-td3", MRZ_DE, True), ("mrz-td3", MRZ_NL, True), ("mrz-td3", MRZ_ES, True),
    ("mrz-td3", MRZ_GB, True),
    ("mrz-td3", "C4RT7K2N12D<<8503149F3109225<<<<<<<<<<<<<<<6", False),  # document check digit
    ("mrz-td3", "C4RT7K2N11D<<8503148F3109225<<<<<<<<<<<<<<<6", False),  # birth-date check digit
    ("mrz-td3", "C4RT7K2N11D<<8503149F3109224<<<<<<<<<<<<<<<6", False),  # expiry check digit
    ("mrz-td3", "NX4827Q050NLD9207019M2901189731049562<<<<<60", False),  # personal check digit
    ("mrz-td3", "C4RT7K2N11D<<8503149F3109225<<<<<<<<<<<<<<<7", False),  # composite
    ("mrz-td3", "C4RT7K2N11D<<8503149F3109225<<<<<<<<<<<<<<6", False),  # 43 characters
    ("mrz-td3", "C4RT7K2N11D<<8503149Q3109225<<<<<<<<<<<<<<<6", False),  # sex Q
    ("mrz-td3", "C4RT7K2N11D1<8503149F3109225<<<<<<<<<<<<<<<6", False),  # digit in nationality
    ("mrz-td3", "C4RT7K2N11D<<85O3143F3109225<<<<<<<<<<<<<<<6", False),  # letter in a date
    ("mrz-td3", "c4rt7k2n11d<<8503149f3109225<<<<<<<<<<<<<<<6", False),  # lower case
    # Spain DNI / NIE
    ("es-dni", "94580730S", True), ("es-dni", "21573681A", True), ("es-dni", "93036426T", True),
    ("es-dni", "21.573.681-A", True), ("es-dni", "X0332245X", True), ("es-dni", "Y6224154T", True),
    ("es-dni", "Z9095145F", True), ("es-dni", "Y-6224154 T", True),
    ("es-dni", "94580730T", False), ("es-dni", "94580731S", False), ("es-dni", "9458073S", False),
    ("es-dni", "945807300S", False), ("es-dni", "X0332245Y", False), ("es-dni", "W0332245X", False),
    ("es-dni", "9458073OS", False),
    # Netherlands BSN
    ("nl-bsn", "405608652", True), ("nl-bsn", "690702930", True), ("nl-bsn", "1375.85.846", True),
    ("nl-bsn", "719 540 616", True),
    ("nl-bsn", "405608653", False), ("nl-bsn", "405608625", False), ("nl-bsn", "40560865", False),
    ("nl-bsn", "000000000", False), ("nl-bsn", "4056086520", False),
    # France NIR
    ("fr-nir", "195057600753250", True), ("fr-nir", "112124701986056", True),
    ("fr-nir", "1 58 10 2A 481 454 10", True), ("fr-nir", "187082a47621612", True),
    ("fr-nir", "278062B42205842", True), ("fr-nir", "2 77 02 2B 589 062 57", True),
    ("fr-nir", "195057600753251", False), ("fr-nir", "195057600753350", False),
    ("fr-nir", "158102B48145410", False), ("fr-nir", "158102C48145410", False),
    ("fr-nir", "558102A48145410", False), ("fr-nir", "19505760075325", False),
    # Brazil CPF
    ("br-cpf", "90458474428", True), ("br-cpf", "529.078.454-38", True),
    ("br-cpf", "27558282349", True),
    ("br-cpf", "90458474429", False), ("br-cpf", "90458474438", False),
    ("br-cpf", "90458574428", False), ("br-cpf", "11111111111", False),
    ("br-cpf", "00000000000", False), ("br-cpf", "9045847442", False),
    # India Aadhaar
    ("in-aadhaar", "774162998648", True), ("in-aadhaar", "6032 9792 3209", True),
    ("in-aadhaar", "9320-2152-7385", True), ("in-aadhaar", "267569193358", True),
    ("in-aadhaar", "774162998649", False), ("in-aadhaar", "774162989648", False),
    ("in-aadhaar", "174162998647", False),  # Verhoeff-valid, but starts with 1
    ("in-aadhaar", "77416299864", False), ("in-aadhaar", "7741629986480", False),
    # Germany Steuer-ID
    ("de-steuer-id", "81406947423", True), ("de-steuer-id", "84 965 771 324", True),
    ("de-steuer-id", "12564903867", True), ("de-steuer-id", "10309025649", True),
    ("de-steuer-id", "81406947424", False), ("de-steuer-id", "81406947433", False),
    ("de-steuer-id", "01234567888", False),  # check digit right, leading zero
    ("de-steuer-id", "12345678903", False),  # check digit right, no digit repeated
    ("de-steuer-id", "10209825632", False),  # check digit right, two digits repeated
    ("de-steuer-id", "10009825636", False),  # check digit right, one digit three in a row
    ("de-steuer-id", "8140694742", False),
]  # fmt: skip


@pytest.mark.parametrize(("name", "value", "ok"), VALIDATOR_CASES)
def test_national_id_validators(name: str, value: str, ok: bool) -> None:
    assert make_validator(name).check(value) is ok


@pytest.mark.parametrize(
    ("field", "digit"),
    [("L898902C3", 6), ("740812", 2), ("120415", 9), ("<<<<<<<<<", 0), ("AZ<", 5)],
)  # fmt: skip
def test_mrz_check_digit(field: str, digit: int) -> None:
    assert mrz_check_digit(field) == digit


def test_mrz_check_digit_rejects_other_characters() -> None:
    assert mrz_check_digit("AB-12") is None


@pytest.mark.parametrize(
    ("digits", "ok"), [("2363", True), ("2364", False), ("0", True), ("1", False)]
)
def test_verhoeff(digits: str, ok: bool) -> None:
    assert verhoeff_valid(digits) is ok


@pytest.mark.parametrize(("digits", "check"), [("8140694742", 3), ("1030902564", 9), ("0", 2)])
def test_iso7064_mod11_10(digits: str, check: int) -> None:
    assert iso7064_mod11_10(digits) == check


# ------------------------------------------------------------------ rules

NATIONAL_ID_RULES = frozenset({
    "pii-passport-mrz", "pii-es-dni-nie", "pii-nl-bsn", "pii-fr-nir", "pii-br-cpf",
    "pii-in-aadhaar", "pii-de-steuer-id",
})  # fmt: skip

# (kind, text, rule that must fire | None: no national-id rule fires)
TABLE: list[tuple[str, str, str | None]] = [
    ("tool_call", f"P<GBRSMITH<<ALEX<<<<<<<<<<<<<<<<<<<<<<<<<<<<\n{MRZ_GB}", "pii-passport-mrz"),
    ("prompt", f"scan of the data page, last line: {MRZ_ES} - legible?", "pii-passport-mrz"),
    ("prompt", "passport number 533401928, expires 2034", None),
    ("prompt", MRZ_GB.replace("0X34", "0X35"), None),
    ("prompt", "please fill the form: nombre Ana, DNI 93036426T, edad 41", "pii-es-dni-nie"),
    ("response", "Su NIE es Z9095145F.", "pii-es-dni-nie"),
    ("prompt", "SKU 93036426T-XL is out of stock", None),
    ("prompt", "DNI 93036426K", None),
    ("prompt", "Sample DNI for the docs: 93036426T", None),
    ("prompt", "BSN: 719 540 616 (gecontroleerd)", "pii-nl-bsn"),
    ("tool_call", '{"naam": "J. de Vries", "bsn": "137585846"}', "pii-nl-bsn"),
    ("prompt", "Mijn sofinummer is 690702930", "pii-nl-bsn"),
    ("prompt", "tracking 719540616 for your parcel", None),
    ("prompt", "BSN 719540617", None),
    ("prompt", "Carte Vitale : 1 12 12 47 019 860 56", "pii-fr-nir"),
    ("response", "numéro de sécurité sociale 278062B42205842", "pii-fr-nir"),
    ("prompt", "ticket 112124701986056 closed", None),
    ("prompt", "1 12 12 47 019 860 57", None),
    ("prompt", "Nome: Ana Souza, CPF 275.582.823-49, nascida em 1990", "pii-br-cpf"),
    ("tool_call", '{"cpf": "74855456551"}', "pii-br-cpf"),
    ("prompt", "protocolo 74855456551 registrado", None),
    ("prompt", "CPF 275.582.823-40", None),
    ("prompt", "Aadhaar card no. 2675 6919 3358 attached", "pii-in-aadhaar"),
    ("response", "UIDAI record 932021527385 matches the applicant", "pii-in-aadhaar"),
    ("prompt", "order 932021527385 dispatched", None),
    ("prompt", "card 4539 1488 0343 6467 and 2675 6919 3358 9", None),
    ("prompt", "Budget for 2023 2024 2025 is fixed", None),
    ("prompt", "Steuer-ID: 12564903867", "pii-de-steuer-id"),
    ("response", "Steuerliche Identifikationsnummer: 84 965 771 324.", "pii-de-steuer-id"),
    ("prompt", "Telefon 12564903867", None),
    ("prompt", "Steuer-ID 12345678903", None),
]


@pytest.fixture(scope="module")
def ruleset() -> Any:
    return load_rules([RULES])


@pytest.fixture(scope="module", params=[False, True], ids=["regex-path", "hyperscan"])
def engine(request: pytest.FixtureRequest, ruleset: Any) -> Engine:
    return Engine(ruleset, use_hyperscan=request.param)


def test_the_rules_are_in_the_pii_pack(ruleset: Any) -> None:
    by_id = {rule.id: rule for rule in ruleset.rules}
    for rule_id in NATIONAL_ID_RULES:
        rule = by_id[rule_id]
        assert Path(rule.file).name == "pii.yaml"
        assert (rule.category, rule.owasp, rule.mask) == ("pii", ("LLM02",), True), rule_id
        expected = "high" if rule_id == "pii-passport-mrz" else "medium"
        assert rule.severity == expected, rule_id


@pytest.mark.parametrize(("kind", "text", "expected"), TABLE)
def test_national_id_table(engine: Engine, kind: str, text: str, expected: str | None) -> None:
    fired = {f.rule_id for f in engine.scan(event(kind, text))} & NATIONAL_ID_RULES
    assert fired == ({expected} if expected else set())


@pytest.mark.parametrize(
    ("text", "value"),
    [(f"line two: {MRZ_NL}", MRZ_NL), ("DNI 94580730S", "94580730S"),
     ("BSN 405608652", "405608652"), ("CPF 904.584.744-28", "904.584.744-28"),
     ("aadhaar 603297923209", "603297923209"), ("IdNr 81406947423", "81406947423")],
)  # fmt: skip
def test_evidence_is_masked_and_fingerprinted(engine: Engine, text: str, value: str) -> None:
    findings = [f for f in engine.scan(event("prompt", text)) if f.rule_id in NATIONAL_ID_RULES]
    assert len(findings) == 1
    (evidence,) = findings[0].evidence
    assert text[evidence.start : evidence.end] == value
    assert value not in evidence.excerpt and "*" in evidence.excerpt
    assert evidence.fingerprint
