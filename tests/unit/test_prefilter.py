"""Per-pattern Hyperscan prefilters: texts they may judge, their answers, the disk cache."""

from __future__ import annotations

import logging
from itertools import islice
from pathlib import Path

import pytest

from detectors import Engine, load_rules
from detectors.prefilter import PrefilterBank, scannable
from pipeline.synth import generate_events

pytestmark = pytest.mark.skipif(not PrefilterBank.available(), reason="needs hyperscan")

RULES = Path(__file__).resolve().parents[2] / "rules"
GOLDEN = Path(__file__).parent / "fixtures" / "rules" / "golden"


@pytest.mark.parametrize(
    ("text", "judged"),
    [
        ("plain ascii", True),
        ("café, naïve, Grüße, “quotes” — 😀", True),  # precomposed letters, symbols, emoji
        ("cafe\u0301", False),  # a combining mark: a word character for regex only
        ("broken \ud800 surrogate", False),  # cannot be UTF-8
        ("unit separator \x1f here", False),  # \s for regex, not for Hyperscan
        ("\u212a for kelvin", False),  # folds to k case-insensitively
        ("long \u017f", False),  # folds to s
    ],
)
def test_scannable(text: str, judged: bool) -> None:
    data = scannable(text)
    assert (data is not None) is judged
    if data is not None:
        assert data == text.encode("utf-8")


def ready_bank(tmp_path: Path, sources: list[str]) -> PrefilterBank:
    bank = PrefilterBank(tmp_path / "cache")
    bank.prepare(sources)
    assert bank.wait(120)
    return bank


@pytest.mark.parametrize(
    ("pattern", "text", "may"),
    [
        (r"(?i)\bignore\s+previous\b", "please IGNORE   previous orders", True),
        (r"(?i)\bignore\s+previous\b", "previous ignore", False),
        (r"(?<![0-9])4[0-9]{15}(?![0-9])", "card 4111111111111111 ok", True),
        (r"(?<![0-9])4[0-9]{15}(?![0-9])", "card 411111111111 short", False),
        # look-arounds are widened, never narrowed: the regex decides
        (r"(?<![0-9])4[0-9]{15}(?![0-9])", "x44111111111111111", True),
        (r"\bcaf\w\b", "un café noir", True),  # Unicode word characters
    ],
)
def test_may_match(tmp_path: Path, pattern: str, text: str, may: bool) -> None:
    bank = ready_bank(tmp_path, [pattern])
    assert bank.ready(pattern)
    data = scannable(text)
    assert data is not None
    assert bank.may_match(pattern, data) is may


def test_refused_or_unknown_pattern_always_may_match(tmp_path: Path) -> None:
    refused = r"[\U000E0001-\U000E007F]{3,}"  # Hyperscan refuses \U in a class
    bank = ready_bank(tmp_path, [refused])
    assert not bank.ready(refused)
    assert bank.may_match(refused, b"anything")
    assert bank.may_match("never prepared", b"anything")


def test_databases_are_cached_on_disk(tmp_path: Path) -> None:
    pattern = r"(?i)\bsecret\s+sauce\b"
    ready_bank(tmp_path, [pattern])
    cached = list((tmp_path / "cache").glob("*.hsdb"))
    assert len(cached) == 1
    again = ready_bank(tmp_path, [pattern])  # a new bank, as in a new process
    assert again.may_match(pattern, b"the SECRET sauce") is True
    assert again.may_match(pattern, b"the sauce") is False
    assert list((tmp_path / "cache").glob("*.hsdb")) == cached


def test_unwritable_cache_still_works(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory should be")
    bank = PrefilterBank(blocker / "hyperscan")
    with caplog.at_level(logging.WARNING, logger="llmtrail.detectors"):
        bank.prepare([r"\bone\b", r"\btwo\b"])
        assert bank.wait(60)
    assert bank.may_match(r"\bone\b", b"one") and not bank.may_match(r"\bone\b", b"two")
    warnings = [r for r in caplog.records if "cannot cache Hyperscan prefilters" in r.message]
    assert len(warnings) == 1


@pytest.mark.parametrize("packs", [[GOLDEN], [RULES / "secrets.yaml", RULES / "pii.yaml"]])
def test_warm_prefilters_change_no_finding(tmp_path: Path, packs: list[Path]) -> None:
    ruleset = load_rules(packs)
    python = Engine(ruleset, use_hyperscan=False)
    bank = PrefilterBank(tmp_path / "cache")
    hyper = Engine(ruleset, use_hyperscan=True, prefilter=bank)
    assert hyper.warm(300)
    events = list(islice(generate_events(11, attack_ratio=0.3), 400))
    expected = python.scan_batch(events)
    assert hyper.scan_batch(events) == expected
    assert sum(map(len, expected)) > 0  # the stream does exercise these rules
