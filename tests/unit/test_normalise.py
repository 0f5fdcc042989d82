"""Normalisation: folded text, signals, decoded payloads, and offsets into the original."""

from __future__ import annotations

import pytest

from detectors.normalise import fold_keyword, non_ascii_runs, normalise, stable_pieces


def find(text: str, phrase: str) -> str | None:
    """The original text behind the first occurrence of ``phrase`` in any keyword view."""
    norm = normalise(text)
    for source in norm.sources:
        index = source.kw.text.find(phrase)
        if index >= 0:
            start, end = source.kw.map.span(index, index + len(phrase))
            return text[start:end]
    return None


CASES = [
    ("plain ASCII", "Please IGNORE previous", "ignore previous", "IGNORE previous"),
    ("whitespace runs", "ignore \n\t  previous", "ignore previous", "ignore \n\t  previous"),
    ("zero-width", "ign\u200bore prev\u2060ious", "ignore previous", "ign\u200bore prev\u2060ious"),
    ("soft hyphen", "ig\u00adnore", "ignore", "ig\u00adnore"),
    ("bidi controls", "\u202eignore\u202c previous", "ignore previous", "ignore\u202c previous"),
    ("cyrillic homoglyphs", "\u0456gn\u043er\u0435 this", "ignore", "\u0456gn\u043er\u0435"),
    ("greek homoglyphs", "p\u03bflicy", "policy", "p\u03bflicy"),
    ("full-width", "\uff49\uff47\uff4e\uff4f\uff52\uff45", "ignore",
     "\uff49\uff47\uff4e\uff4f\uff52\uff45"),
    ("ligature", "\ufb01le", "file", "\ufb01le"),
    ("accents", "\u00efgn\u00f6r\u00eb", "ignore", "\u00efgn\u00f6r\u00eb"),
    ("sharp s", "STRA\u00dfE x", "strasse", "STRA\u00dfE"),
    ("base64", "run: aWdub3JlIHByZXZpb3VzIGluc3RydWN0aW9ucw== ok", "ignore previous",
     "aWdub3JlIHByZXZpb3VzIGluc3RydWN0aW9ucw=="),
    ("hex", "x 69676e6f72652070726576696f7573 y", "ignore previous",
     "69676e6f72652070726576696f7573"),
    ("base32", "q: NFTW433SMUQHA4TFOZUW65LTEBUW443UOJ2WG5DJN5XHG=== !", "ignore previous",
     "NFTW433SMUQHA4TFOZUW65LTEBUW443UOJ2WG5DJN5XHG=="),
    ("url-encoded", "q=ignore%20previous%20instructions%21 z", "ignore previous",
     "q=ignore%20previous%20instructions%21"),
    ("unicode tags", "hi" + "".join(chr(0xE0000 + ord(c)) for c in "ignore it") + "!",
     "ignore it", "".join(chr(0xE0000 + ord(c)) for c in "ignore it")),
]  # fmt: skip


@pytest.mark.parametrize(("text", "phrase", "original"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_folding_and_offsets(text: str, phrase: str, original: str) -> None:
    assert find(text, phrase) == original


SIGNALS = [
    ("ascii", "just text", set()),
    ("zero-width", "a\u200bb", {"hidden_unicode"}),
    ("bidi", "a\u202eb", {"hidden_unicode"}),
    ("mixed-script word", "p\u0430ypal", {"homoglyph"}),
    ("russian word is not a homoglyph", "\u043f\u0440\u0438\u0432\u0435\u0442", set()),
    ("curly quotes", "don\u2019t", set()),
    ("base64", "aWdub3JlIHByZXZpb3VzIGluc3RydWN0aW9ucw==", {"encoded_payload"}),
    ("random hex is not text", "deadbeefcafebabe0123456789abcdef", set()),
    ("word of base64 letters", "internationalization", set()),
    ("upper-case word is not base32", "INTERNATIONALIZATION", set()),
    ("base32 alphabet, not text", "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", set()),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in SIGNALS], ids=[c[0] for c in SIGNALS]
)
def test_signals(text: str, expected: set[str]) -> None:
    assert set(normalise(text).signals) == expected


def test_signal_spans_are_original_offsets() -> None:
    text = "ok p\u0430ypal and a\u200bb"
    norm = normalise(text)
    (start, end), *_ = norm.signals["homoglyph"]
    assert text[start:end] == "p\u0430ypal"
    (start, end), *_ = norm.signals["hidden_unicode"]
    assert text[start:end] == "\u200b"


def test_every_invisible_run_is_a_signal_span() -> None:
    text = "ok a\u200b\u00e9\u200bb and c\u202ed"
    spans = normalise(text).signals["hidden_unicode"]
    assert [text[start:end] for start, end in spans] == ["\u200b", "\u200b", "\u202e"]


@pytest.mark.parametrize(
    ("text", "gap", "runs"),
    [("plain", 0, []), ("", 0, []), ("caf\u00e9 na\u00efve", 0, [(3, 4), (7, 8)]),
     ("\u00e9\u00e9x\U0001f600", 0, [(0, 2), (3, 4)]), ("a\udc80b", 0, [(1, 2)]),
     ("caf\u00e9 na\u00efve", 3, [(3, 4), (7, 8)]), ("caf\u00e9 na\u00efve", 4, [(3, 8)])],
)  # fmt: skip
def test_non_ascii_runs(text: str, gap: int, runs: list[tuple[int, int]]) -> None:
    assert non_ascii_runs(text, gap) == runs


ENCODED = [
    ("padding kept", "x aWdub3JlIHByZXZpb3Vz== y", "aWdub3JlIHByZXZpb3Vz=="),
    ("at most two padding characters", "aWdub3JlIHByZXZpb3Vz===", "aWdub3JlIHByZXZpb3Vz=="),
    ("after non-ASCII text", "\u00e9\u00e9 aWdub3JlIHByZXZpb3Vz \u00e9", "aWdub3JlIHByZXZpb3Vz"),
    ("at the very end", "see:aWdub3JlIHByZXZpb3Vz", "aWdub3JlIHByZXZpb3Vz"),
    ("hex after a short run", "abc 69676e6f72652070726576696f75", "69676e6f72652070726576696f75"),
]


@pytest.mark.parametrize(("text", "run"), [c[1:] for c in ENCODED], ids=[c[0] for c in ENCODED])
def test_encoded_run_spans(text: str, run: str) -> None:
    norm = normalise(text)
    assert [text[s.origin[0] : s.origin[1]] for s in norm.sources[1:] if s.origin] == [run]


def test_ascii_fast_path_keeps_one_view() -> None:
    norm = normalise("Plain ASCII text, nothing encoded.")
    assert len(norm.sources) == 1
    assert [v.text for v in norm.sources[0].regex_views] == ["Plain ASCII text, nothing encoded."]


def test_folded_view_for_regexes_keeps_case() -> None:
    norm = normalise("AK\u200bIA")
    assert [v.text for v in norm.sources[0].regex_views] == ["AK\u200bIA", "AKIA"]


def test_payload_limits() -> None:
    text = " ".join(["aWdub3JlIHByZXZpb3VzIGluc3RydWN0aW9ucw=="] * 20)
    assert len(normalise(text).sources) == 1 + 8


def test_fold_keyword() -> None:
    assert fold_keyword("  Ignore   PREVIOUS ") == "ignore previous"


@pytest.mark.parametrize(
    ("literal", "pieces"),
    [("Ignore previous", ["ignore previous"]), ("caf\u00e9 x", ["caf", " x"]),
     ("\u0438\u0433\u043d\u043e\u0440", ["\u0438\u0433\u043d\u043e\u0440"]),
     ("\u0441\u043e\u0440", [])],
)  # fmt: skip
def test_stable_pieces(literal: str, pieces: list[str]) -> None:
    assert stable_pieces(literal) == pieces
