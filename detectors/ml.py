"""A linear injection/jailbreak classifier over hashed n-grams, scored with numpy.

What the model sees
-------------------
A text is normalised like the engine's keyword view (``detectors.normalise``:
NFKC-style folding, look-alikes folded, case folded, whitespace collapsed),
encoded as UTF-8 and padded with ``PAD`` spaces on each side. Every byte
position ``p`` starts three features, the byte 3-, 4- and 5-grams at ``p``
(n-grams may run into the padding); every word (a run of ASCII letters,
digits and non-ASCII bytes) adds a word feature at its first byte, and every
pair of adjacent words a bigram feature. A feature goes to one of
``2**bits`` buckets by 32-bit multiply-shift hashing of its code (the bytes
themselves for 3- and 4-grams; 5-grams and words are mixed into 32 bits
first), with the constants below: the same buckets in every process and on
every machine, unlike Python's salted ``hash()``.

The padded text is cut into blocks of ``stride`` bytes; a window is two
consecutive blocks (one block when the text fits in one). A window's feature
vector is its bucket counts divided by its feature count (at least
``min_count``, so a handful of features cannot make an extreme score) to the
power ``scale_power`` (0.5 in the shipped model),
and its score per label is ``sigmoid(bias + weights . vector)``. A text's
score is the maximum over its windows, so an injection at the end of a long
benign document is scored on its own window, not diluted by the whole text.

Scoring a batch concatenates the padded texts into one buffer and runs each
step once for the whole batch; every block is summed on its own, so a text
gets bit-for-bit the same scores alone or in any batch.

The model file is a ``.npz`` with ``weights`` (float16, ``(2**bits, labels)``)
and ``meta`` (UTF-8 JSON: format, version, labels, biases, thresholds,
feature parameters, training data provenance and held-out metrics).
Training lives in ``bench/train_classifier.py`` (scikit-learn, never
imported here).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from detectors.findings import Evidence, Finding, excerpt
from detectors.normalise import Limits, Normalised, Source, Utf8Positions, normalise
from detectors.recent import Recent

MODEL_FORMAT = "llmtrail.ml-model"
MODEL_VERSION = 1
LABELS: tuple[str, ...] = ("prompt_injection", "jailbreak")
DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "injection-classifier.npz"
DETECTOR = "ml"
# The scores and best windows of recurring keyword views are kept (see
# detectors.recent): at most this many views, of this many characters in all.
RECENT_VIEWS = 4096
RECENT_BUDGET = 4_000_000
PAD = 4  # spaces on each side of a text: every 5-gram of the text exists, padding included

_NO_PAYLOADS = Limits(max_payloads=0)
# odd 32-bit multipliers (multiply-shift hashing and mixing), one per use
_K3 = np.uint32(0x9E3779B1)
_K4 = np.uint32(0x85EBCA77)
_K5_STEP = np.uint32(0x27D4EB2F)
_K5 = np.uint32(0xC2B2AE3D)
_KWORD_PART = np.uint32(0x165667B1)
_KUNI = np.uint32(0xD3A2646D)
_KBI_LEFT = np.uint32(0xFD7046C5)
_KBI = np.uint32(0xB55A4F09)
_EIGHT = np.uint32(8)
_SPACES3 = np.uint32(0x202020)
REPEAT_SPAN = 8
_SIXTEEN = np.uint32(16)
_WORD_BYTES = np.zeros(256, dtype=bool)
_WORD_BYTES[ord("a") : ord("z") + 1] = True
_WORD_BYTES[ord("A") : ord("Z") + 1] = True
_WORD_BYTES[ord("0") : ord("9") + 1] = True
_WORD_BYTES[0x80:] = True

U32 = npt.NDArray[np.uint32]
I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]


class ModelError(Exception):
    """The model file is missing, unreadable or from an unsupported format version."""


@dataclass(frozen=True, slots=True)
class Scores:
    """Per-label probabilities of one text, and where its best window lies.

    ``windows[label]`` is ``(start, end)`` in the normalised keyword view
    (characters), the window that gave the label's score.
    """

    scores: dict[str, float]
    windows: dict[str, tuple[int, int]]


@dataclass(frozen=True, slots=True)
class Hashed:
    """Bucket indices of every feature of a batch of texts (see the module docstring).

    ``buckets[n - 3, p]`` is the bucket of the n-gram at buffer position ``p``;
    ``words``/``unigrams`` the first byte and bucket of each word;
    ``bigrams[i]`` the bucket of words ``i`` and ``i + 1`` (valid only where
    ``bigram_ok[i]``: both in one text, and not the same word). Features that
    do not count (repetition, padding) have the bucket ``2**bits``, whose
    weight is zero; ``kept[p]`` / ``word_kept[i]`` say which count.
    ``block_starts`` cut the buffer into blocks; text ``t`` owns blocks
    ``text_blocks[t]:text_blocks[t + 1]``.
    """

    length: int
    buckets: U32
    kept: npt.NDArray[np.bool_]
    word_kept: npt.NDArray[np.bool_]
    words: I64
    unigrams: U32
    bigrams: U32
    bigram_ok: npt.NDArray[np.bool_]
    block_starts: I64
    text_blocks: I64


def keyword_view(text: str) -> str:
    """The text the classifier scores: the engine's keyword view, without payload decoding."""
    return normalise(text, limits=_NO_PAYLOADS).sources[0].kw.text


def _padded(views: Sequence[str]) -> list[bytes]:
    pad = b" " * PAD
    return [pad + view.encode("utf-8", "surrogatepass") + pad for view in views]


def hash_features(views: Sequence[str], bits: int, stride: int) -> Hashed:
    """Hash the features of already-normalised texts (keyword views) in one pass."""
    units = _padded(views)
    lengths = np.fromiter((len(u) for u in units), dtype=np.int64, count=len(units))
    # PAD more spaces at the very end so the last positions have all n-grams too
    buf = np.frombuffer(b"".join(units) + b" " * PAD, dtype=np.uint8)
    length = int(lengths.sum())
    x = buf.astype(np.uint32)
    shift = np.uint32(32 - bits)
    h = (x[:-1] << _EIGHT) | x[1:]
    h3 = (h[:-1] << _EIGHT) | x[2:]  # the 3 bytes exactly
    h4 = (h3[:-1] << _EIGHT) | x[3:]  # the 4 bytes exactly
    h5 = h4[:-1] * _K5_STEP + x[4:]  # 5 bytes mixed into 32 bits
    buckets = np.empty((3, length), dtype=np.uint32)
    for row, codes, k in ((buckets[0], h3, _K3), (buckets[1], h4, _K4), (buckets[2], h5, _K5)):
        np.multiply(codes[:length], k, out=row)
        np.right_shift(row, shift, out=row)
    # Repetition: a position whose 4 bytes also start 1-REPEAT_SPAN bytes earlier
    # ("-----", "| --- | --- |", "ha ha ha") adds nothing; neither does padding
    # (the keyword view never holds two spaces in a row).
    null = np.uint32(1 << bits)
    kept = h3[:length] != _SPACES3
    for d in range(1, REPEAT_SPAN + 1):
        kept[d:] &= h4[d:length] != h4[: length - d]
    dropped = ~kept
    for row in buckets:
        np.copyto(row, null, where=dropped)

    word = _WORD_BYTES[buf[: length + 1]]
    edges = np.flatnonzero(word[1:] != word[:-1]) + 1  # padding: never a word at 0 or the end
    starts = edges[0::2]
    ends = edges[1::2]
    # a word's code: the sum of mixed trigram codes from the byte before the word to
    # its last byte (order-sensitive through the overlapping trigrams)
    mixed = h3[:length] * _KWORD_PART
    mixed ^= mixed >> _SIXTEEN
    part = np.zeros(length + 1, dtype=np.uint32)
    np.cumsum(mixed, out=part[1:])  # wraps modulo 2**32, so differences stay exact
    code = part[ends - 1] - part[starts - 1]
    unigrams = (code * _KUNI) >> shift
    bigrams = ((code[:-1] * _KBI_LEFT + code[1:]) * _KBI) >> shift
    again = code[1:] == code[:-1]  # a word repeating the one before it
    word_kept = np.ones(len(code), dtype=bool)
    word_kept[1:] = ~again
    unigrams[~word_kept] = null
    if len(units) == 1:
        bigram_ok = ~again
        text_blocks = np.array([0, (length + stride - 1) // stride], dtype=np.int64)
        block_starts = np.arange(0, length, stride, dtype=np.int64)
    else:
        unit_starts = np.zeros(len(units) + 1, dtype=np.int64)
        np.cumsum(lengths, out=unit_starts[1:])
        owner = np.searchsorted(unit_starts, starts, side="right")
        bigram_ok = (owner[:-1] == owner[1:]) & ~again
        per_text = (lengths + stride - 1) // stride
        text_blocks = np.zeros(len(units) + 1, dtype=np.int64)
        np.cumsum(per_text, out=text_blocks[1:])
        local = np.arange(int(text_blocks[-1]), dtype=np.int64)
        local -= np.repeat(text_blocks[:-1], per_text)
        block_starts = np.repeat(unit_starts[:-1], per_text) + local * stride
    return Hashed(
        length=length,
        buckets=buckets,
        kept=kept,
        word_kept=word_kept,
        words=starts.astype(np.int64),
        unigrams=unigrams,
        bigrams=bigrams,
        bigram_ok=bigram_ok,
        block_starts=block_starts,
        text_blocks=text_blocks,
    )


def window_sums(sums: F32, counts: I64, text_blocks: I64) -> tuple[F32, I64]:
    """Per block k: the sums and counts of the window that starts there (blocks k and k + 1).

    A text of one block has that block as its window; the last block of a
    longer text starts no window (its count is 0).
    """
    last = text_blocks[1:] - 1
    total = sums.copy()
    total[:-1] += sums[1:]
    n = counts.copy()
    n[:-1] += counts[1:]
    total[last] = sums[last]
    n[last] = counts[last]
    multi = last[np.diff(text_blocks) > 1]
    n[multi] = 0
    return total, n


def _block_sums(hashed: Hashed, weights: F32) -> tuple[F32, I64]:
    """Per block: the summed weights of its features (per label) and its feature count.

    ``weights`` is label-major, ``(labels, 2**bits + 1)`` (the last bucket, for
    features that do not count, is zero): one gather per label and feature kind
    is much cheaper than gathering rows of a bucket-major table.
    """
    b3, b4, b5 = hashed.buckets
    ok = hashed.bigram_ok
    paired = hashed.words[:-1][ok]
    bigrams = hashed.bigrams[ok]
    starts = hashed.block_starts
    sums = np.empty((len(starts), len(weights)), dtype=np.float32)
    for k, row in enumerate(weights):
        contrib = row.take(b3)  # three takes beat one take of the (3, n) array
        contrib += row.take(b4)
        contrib += row.take(b5)
        contrib[hashed.words] += row.take(hashed.unigrams)
        contrib[paired] += row.take(bigrams)
        sums[:, k] = np.add.reduceat(contrib, starts)
    counts = hashed.kept * 3  # the 3-, 4- and 5-gram of each kept byte
    counts[hashed.words[hashed.word_kept]] += 1
    counts[paired] += 1
    return sums, np.add.reduceat(counts, starts)


class Classifier:
    """Load once, then score texts; thread-safe (scoring never mutates the model, and the
    table of recurring views' scores has its own lock)."""

    def __init__(
        self,
        weights: F32,
        biases: F32,
        thresholds: dict[str, float],
        *,
        stride: int,
        power: float,
        min_count: int,
        meta: dict[str, Any],
    ) -> None:
        bits = int(weights.shape[0]).bit_length() - 1
        if weights.ndim != 2 or weights.shape != (1 << bits, len(LABELS)):
            raise ModelError(
                f"weights must have shape (2**bits, {len(LABELS)}), not {weights.shape}"
            )
        self._weights = np.zeros((len(LABELS), (1 << bits) + 1), dtype=np.float32)
        self._weights[:, :-1] = weights.T
        self._biases = biases
        self._bits = bits
        self._stride = stride
        self._power = np.float32(power)
        self._min_count = max(min_count, 1)
        self.thresholds = dict(thresholds)
        self.meta = meta
        self._recent: Recent[tuple[float, ...]] = Recent(RECENT_VIEWS, RECENT_BUDGET)
        self._explained: Recent[Scores] = Recent(RECENT_VIEWS, RECENT_BUDGET)

    @classmethod
    def load(cls, path: Path | None = None) -> Classifier:
        """Read a model file (default: the one shipped in ``detectors/models/``)."""
        path = DEFAULT_MODEL if path is None else path
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data["meta"]).decode("utf-8"))
                weights = np.asarray(data["weights"], dtype=np.float32)
        except FileNotFoundError:
            raise ModelError(
                f"ML model file not found: {path} (train one with "
                "`python bench/train_classifier.py`, or reinstall llmtrail for the shipped model)"
            ) from None
        except (
            KeyError,
            ValueError,
            OSError,
            EOFError,
            zipfile.BadZipFile,
            UnicodeDecodeError,
        ) as exc:
            raise ModelError(f"{path}: not an llmtrail ML model file ({exc})") from None
        return cls._from_meta(meta, weights, path)

    @classmethod
    def _from_meta(cls, meta: Any, weights: F32, path: Path) -> Classifier:
        """Check the JSON header of a model file and build the classifier."""
        if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
            raise ModelError(
                f"{path}: not an llmtrail ML model file (format is not {MODEL_FORMAT!r})"
            )
        version = meta.get("version")
        if version != MODEL_VERSION:
            raise ModelError(
                f"{path}: model format version {version!r} is not supported (this llmtrail reads "
                f"version {MODEL_VERSION}); retrain with `python bench/train_classifier.py`"
            )
        if tuple(meta.get("labels", ())) != LABELS:
            raise ModelError(f"{path}: labels {meta.get('labels')!r} are not {list(LABELS)!r}")
        try:
            biases = np.asarray([float(meta["bias"][label]) for label in LABELS], dtype=np.float32)
            thresholds = {label: float(meta["threshold"][label]) for label in LABELS}
            stride = int(meta["features"]["stride"])
            power = float(meta["features"]["scale_power"])
            min_count = int(meta["features"]["min_count"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{path}: model header lacks or mistypes {exc}") from None
        try:
            return cls(
                weights,
                biases,
                thresholds,
                stride=stride,
                power=power,
                min_count=min_count,
                meta=meta,
            )
        except ModelError as exc:
            raise ModelError(f"{path}: {exc}") from None

    @property
    def bits(self) -> int:
        return self._bits

    @property
    def stride(self) -> int:
        return self._stride

    def score(self, text: str) -> dict[str, float]:
        """Per-label probability that ``text`` is a prompt injection / a jailbreak."""
        return self.score_batch([text])[0]

    def score_batch(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """``score`` for many texts in one vectorised pass (same results as one by one)."""
        return self.score_views([keyword_view(text) for text in texts])

    def score_views(self, views: Sequence[str]) -> list[dict[str, float]]:
        """Score texts that are already keyword views (the engine has them at hand).

        Scores of recurring views are kept (:class:`detectors.recent.Recent`) and
        reused: a view scores the same alone or in any batch.
        """
        return [dict(zip(LABELS, row, strict=True)) for row in self._probabilities(views)]

    def _probabilities(self, views: Sequence[str]) -> list[tuple[float, ...]]:
        """Per view, its score for each of ``LABELS`` in order."""
        kept = [self._recent.get(view) for view in views]
        missing = [index for index, row in enumerate(kept) if row is None]
        if missing:
            fresh = [views[index] for index in missing]
            logits, text_blocks = self._window_logits(fresh)
            best = np.maximum.reduceat(logits, text_blocks[:-1], axis=0)
            probs = 1.0 / (1.0 + np.exp(-best))
            for index, view, scores in zip(missing, fresh, probs.tolist(), strict=True):
                kept[index] = row = tuple(scores)
                self._recent.offer(view, row)
        return cast(list[tuple[float, ...]], kept)  # every None was filled in

    def explain_views(self, views: Sequence[str]) -> list[Scores]:
        """Scores plus, per label, the best window in characters of the keyword view."""
        if not views:
            return []
        logits, text_blocks = self._window_logits(views)
        out = []
        stride = self._stride
        for t, view in enumerate(views):
            mine = logits[text_blocks[t] : text_blocks[t + 1]]
            size = len(view.encode("utf-8", "surrogatepass"))
            positions = Utf8Positions(view)
            scores = {}
            spans = {}
            for k, label in enumerate(LABELS):
                block = int(np.argmax(mine[:, k]))
                scores[label] = float(1.0 / (1.0 + np.exp(-mine[block, k])))
                start = max(block * stride - PAD, 0)
                end = max(min(block * stride + 2 * stride - PAD, size), start)
                spans[label] = (positions.chars(start), positions.chars(end))
            out.append(Scores(scores, spans))
        return out

    def _window_logits(self, views: Sequence[str]) -> tuple[F32, I64]:
        """Per block: the logits of the window starting there (-inf where none starts)."""
        hashed = hash_features(views, self._bits, self._stride)
        sums, counts = _block_sums(hashed, self._weights)
        total, n = window_sums(sums, counts, hashed.text_blocks)
        scale = np.maximum(n, self._min_count).astype(np.float32) ** -self._power
        logits = total * scale[:, None]
        logits += self._biases
        logits[n == 0] = -np.inf
        return logits, hashed.text_blocks

    def findings(self, field: str, normalised: Normalised) -> list[Finding]:
        """Findings (detector ``ml``) for one field, one per label over its threshold.

        Every source of ``normalised`` (the field and any decoded payload) is
        scored; evidence is the best window mapped back to the field text.
        """
        return self.findings_many([(field, normalised)])[0]

    def findings_many(self, fields: Sequence[tuple[str, Normalised]]) -> list[list[Finding]]:
        """``findings`` for many fields (of one event or of a batch) in one scoring pass."""
        views = [source.kw.text for _, norm in fields for source in norm.sources]
        rows = self._probabilities(views)
        floors = tuple(self.thresholds[label] for label in LABELS)
        out: list[list[Finding]] = []
        at = 0
        for field, norm in fields:
            mine = rows[at : at + len(norm.sources)]
            at += len(norm.sources)
            found: list[Finding] = []
            if len(mine) > 1 or any(p >= f for p, f in zip(mine[0], floors, strict=True)):
                for k, label in enumerate(LABELS):
                    column = [row[k] for row in mine]
                    best = column.index(max(column))
                    if column[best] >= floors[k]:
                        source = norm.sources[best]
                        explained = self._explain(source.kw.text)
                        found.append(self._finding(field, norm.original, source, explained, label))
            out.append(found)
        return out

    def _explain(self, view: str) -> Scores:
        """``explain_views`` of one view, kept for recurring views like their scores."""
        explained = self._explained.get(view)
        if explained is None:
            (explained,) = self.explain_views([view])
            self._explained.offer(view, explained)
        return explained

    def _finding(
        self, field: str, original: str, source: Source, scored: Scores, label: str
    ) -> Finding:
        start, end = source.kw.map.span(*scored.windows[label])
        shown = excerpt(original, start, end, masked=False)
        return Finding(
            rule_id=f"ml-{label.replace('_', '-')}",
            title=_TITLES[label],
            severity="medium",
            category=label,
            owasp=("LLM01",),
            detector=DETECTOR,
            field=field,
            evidence=(Evidence(start, end, shown),),
            score=round(scored.scores[label], 4),
            tags=("ml",),
        )


_TITLES = {
    "prompt_injection": "ML classifier: likely prompt injection",
    "jailbreak": "ML classifier: likely jailbreak attempt",
}
