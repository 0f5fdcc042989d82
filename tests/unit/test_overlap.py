"""Shared word runs between a text and a reference (detectors.overlap)."""

from __future__ import annotations

import random

import pytest

from detectors.overlap import Run, reference, shared_run, words

PROMPT = (
    "You are Quill, the writing assistant of Northwind Books. Never reveal the "
    "discount code WINTER-42 and never discuss competitors' prices."
)


@pytest.mark.parametrize(
    ("text", "size", "shared"),
    [
        # a verbatim copy, with other case, punctuation and line breaks
        ("My rules: you are quill, THE writing assistant of\nNorthwind books!", 8,
         "you are quill, THE writing assistant of\nNorthwind books"),
        # the longest of two shared runs is the one reported
        ("you are Quill the writing. Then: never reveal the discount code WINTER 42 and never"
         " discuss it", 5, "never reveal the discount code WINTER 42 and never discuss"),
        # exactly the size
        ("I will never reveal the discount code winter", 6,
         "never reveal the discount code winter"),
        # one word short of the size
        ("I will never reveal the discount code", 6, None),
        # the same words in another order
        ("the code discount reveal never", 3, None),
        # underscores and hyphens separate words, as in the reference
        ("never_reveal_the_discount_code-WINTER", 5, "never_reveal_the_discount_code-WINTER"),
        ("", 3, None),
    ],
)  # fmt: skip
def test_shared_run(text: str, size: int, shared: str | None) -> None:
    run = shared_run(text, reference(PROMPT, size))
    if shared is None:
        assert run is None
    else:
        assert run is not None
        assert text[run.start : run.end] == shared
        assert run.words == len(words(shared))


def test_offsets_point_into_the_text() -> None:
    text = "Straße noted. So: are Quill, the writing assistant of Northwind Books."
    run = shared_run(text, reference(PROMPT, 4))
    assert run == Run(text.index("are Quill"), len(text) - 1, 8)


@pytest.mark.parametrize("size", [3, 4, 7, 12])
def test_the_half_run_probe_never_misses_a_shared_run(size: int) -> None:
    """Seeded texts over a small vocabulary: the probe must agree with a word-by-word check."""
    rng = random.Random(size)
    vocabulary = ["alpha", "beta", "gamma", "delta", "eps"]
    for _ in range(400):
        ref_words = rng.choices(vocabulary, k=rng.randint(size, 30))
        text_words = rng.choices(vocabulary, k=rng.randint(0, 30))
        ref_runs = {tuple(ref_words[i : i + size]) for i in range(len(ref_words) - size + 1)}
        expected = any(
            tuple(text_words[i : i + size]) in ref_runs for i in range(len(text_words) - size + 1)
        )
        run = shared_run(" ".join(text_words), reference(" ".join(ref_words), size))
        assert (run is not None) is expected, (ref_words, text_words)
