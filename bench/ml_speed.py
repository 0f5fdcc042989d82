"""How fast the ML classifier scores, next to a bare Aho-Corasick pass in the same run.

Run from the repository root:  python bench/ml_speed.py [--events N] [--batch N] [--corpora DIR]

Texts: a seeded mix of 0.2-4 KB (uniform in size) built by bench/engine_speed.py's
generator (English-like prose with attack phrases, payloads and secrets sprinkled
in), and, when ../shared/data/corpora is there, real corpus texts of 0.2-4 KB
(sharegpt first turns and attack rows). For each mix it prints µs per text of:

* baseline: ``automaton.iter(text.lower())`` over every keyword phrase of rules/;
* ``keyword_view`` alone (the normalisation the classifier shares with the engine);
* ``score(text)`` one text at a time (normalisation included);
* ``score_views([view])`` one at a time, on views already normalised (what an
  engine hook that has the keyword view at hand pays);
* ``score_batch(texts)`` in batches of ``--batch`` (the worker's batches);
* ``score_views(views)`` in batches.

Each figure is the least CPU time of this process over ``--repeats`` runs
(``time.process_time``: other jobs on a shared machine inflate wall time, not
this). Figures only; no assertion.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from engine_speed import Vocabulary, bare_ac, best_of, keyword_phrases, paragraph

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from detectors import load_rules  # noqa: E402
from detectors.ml import Classifier, keyword_view  # noqa: E402

MIN_BYTES, MAX_BYTES = 200, 4000


def synthetic(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    vocabulary = Vocabulary(rng)
    return [
        paragraph(rng, vocabulary, rng.randint(MIN_BYTES, MAX_BYTES), 0.02) for _ in range(count)
    ]


def from_corpora(corpora: Path, seed: int, count: int) -> list[str]:
    texts: list[str] = []
    for path in sorted(corpora.glob("*.jsonl")):
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                text = json.loads(line)["text"]
                if MIN_BYTES <= len(text.encode("utf-8", "surrogatepass")) <= MAX_BYTES:
                    texts.append(text)
    random.Random(seed).shuffle(texts)
    return texts[:count]


def batched(
    run: Callable[[Sequence[str]], object], items: Sequence[str], size: int
) -> Callable[[], None]:
    def go() -> None:
        for lo in range(0, len(items), size):
            run(items[lo : lo + size])

    return go


class _Fresh:
    """The classifier under test, loaded anew before each timed run: it keeps the scores
    of views it saw twice lately, and every run here scores the same texts again."""

    def __init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        self.classifier = Classifier.load()

    def score(self, text: str) -> object:
        return self.classifier.score(text)

    def score_view(self, view: str) -> object:
        return self.classifier.score_views([view])

    def score_batch(self, texts: Sequence[str]) -> object:
        return self.classifier.score_batch(texts)

    def score_views(self, views: Sequence[str]) -> object:
        return self.classifier.score_views(views)


def measure(name: str, texts: list[str], phrases: list[str], args: argparse.Namespace) -> None:
    views = [keyword_view(t) for t in texts]
    n = len(texts)
    mean = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts) / n
    fresh = _Fresh()

    def timed(run: Callable[[], object]) -> float:
        return best_of(args.repeats, run, fresh.renew, time.process_time) * 1e6 / n

    def each(fn: Callable[[str], object], items: Sequence[str]) -> Callable[[], None]:
        def go() -> None:
            for item in items:
                fn(item)

        return go

    baseline = timed(bare_ac(phrases, texts))
    rows = [
        ("baseline: text.lower() + Aho-Corasick", baseline),
        ("keyword_view (normalise)", timed(each(keyword_view, texts))),
        ("score(text), one at a time", timed(each(fresh.score, texts))),
        (
            "score_views([view]), one at a time",
            timed(each(fresh.score_view, views)),
        ),
        (
            f"score_batch(texts), batches of {args.batch}",
            timed(batched(fresh.score_batch, texts, args.batch)),
        ),
        (
            f"score_views(views), batches of {args.batch}",
            timed(batched(fresh.score_views, views, args.batch)),
        ),
    ]
    print(f"\n## {name}: {n} texts, mean {mean:,.0f} bytes ({MIN_BYTES}-{MAX_BYTES})\n")
    print(f"{'what':44} {'µs/text':>9} {'x baseline':>11}")
    for label, us in rows:
        print(f"{label:44} {us:9.1f} {us / baseline:11.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rules", type=Path, nargs="+", default=[ROOT / "rules"])
    ap.add_argument("--corpora", type=Path, default=ROOT.parent / "shared" / "data" / "corpora")
    args = ap.parse_args(argv)
    clf = Classifier.load()
    phrases = keyword_phrases(load_rules(list(args.rules)))
    print(
        f"# ML classifier speed (model: {clf.bits} bits, {2 * clf.stride}-byte windows; "
        f"baseline: {len(phrases)} rule keyword phrases)"
    )
    measure("synthetic prose", synthetic(args.seed, args.events), phrases, args)
    if args.corpora.is_dir():
        measure("corpus texts", from_corpora(args.corpora, args.seed, args.events), phrases, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
