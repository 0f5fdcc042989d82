"""Train the ML injection/jailbreak classifier (detectors/ml.py) on the permissive corpora.

Run from the repository root (needs the ``train`` extra: scikit-learn)::

    .venv/bin/python bench/train_classifier.py [--corpora DIR] [--out MODEL.npz]
                                               [--metrics METRICS.json] [--bits 18]
                                               [--stride 512] [--limit N]

Defaults write ``detectors/models/injection-classifier.npz`` (the shipped model)
and ``detectors/models/injection-classifier.metrics.json``.

Data, licences and the split are in ``bench/ml_corpus.py``. Features are
exactly the scorer's (``detectors.ml.hash_features``): the training matrix
has one row per scoring window, so training and scoring agree to the bucket.
Per head (prompt_injection, jailbreak), an L2 logistic regression is fitted
in two passes: first every window of a positive text counts as positive;
then only each positive text's best window does (the others are dropped,
not made negative), because the scorer takes the maximum over windows and a
long document with one injected sentence is positive in one window only.
Negatives always count with all their windows, each text weighing one in
total. ``C`` is chosen on the validation split, and so is the threshold: the
lowest score that keeps the false-positive rate on validation negatives at
or under ``--max-fpr``. The test split is only scored at the end, with the
numpy scorer reading the written model file.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_corpus as mc
import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))

from detectors import ml  # noqa: E402

SEED = 20261122
GROUP_CAP = 150  # training rows per group and label at most (one template's variants)
C_GRID = (0.5, 2.0, 8.0)
CHUNK = 1500


def window_matrix(
    views: Sequence[str], bits: int, stride: int, power: float, min_count: int
) -> tuple[sparse.csr_matrix, Any]:
    """One row per scoring window (scaled as the scorer scales it) and each row's text."""
    mats = []
    owners = []
    for lo in range(0, len(views), CHUNK):
        part = views[lo : lo + CHUNK]
        hashed = ml.hash_features(part, bits, stride)
        starts = hashed.block_starts
        block_of = np.searchsorted(starts, np.arange(hashed.length), side="right") - 1
        ok = hashed.bigram_ok
        pos = np.concatenate(
            [
                np.tile(np.arange(hashed.length), 3),
                hashed.words,
                hashed.words[:-1][ok],
            ]
        )
        cols = np.concatenate([*hashed.buckets, hashed.unigrams, hashed.bigrams[ok]])
        counted = cols != (1 << bits)  # repetition and padding do not count
        pos, cols = pos[counted], cols[counted]
        blocks = block_of[pos]
        counts = np.bincount(blocks, minlength=len(starts)).astype(np.int64)
        _, n = ml.window_sums(counts.astype(np.float32), counts, hashed.text_blocks)
        firsts = hashed.text_blocks[:-1]
        is_first = np.zeros(len(starts), dtype=bool)
        is_first[firsts] = True
        # an occurrence in block b counts in window b (if one starts there) and in b - 1
        rows_a = blocks[n[blocks] > 0]
        cols_a = cols[n[blocks] > 0]
        back = ~is_first[blocks]
        rows_b = blocks[back] - 1
        cols_b = cols[back]
        r = np.concatenate([rows_a, rows_b])
        c = np.concatenate([cols_a, cols_b])
        mat = sparse.csr_matrix(
            (np.ones(len(r), dtype=np.float32), (r, c)), shape=(len(starts), 1 << bits)
        )
        keep = np.flatnonzero(n > 0)
        mat = mat[keep]
        sizes = np.asarray(mat.sum(axis=1)).ravel()
        if not np.array_equal(sizes, n[keep]):
            raise AssertionError("training windows disagree with the scorer's feature counts")
        scale = np.maximum(n[keep], min_count).astype(np.float32) ** -power
        mat = sparse.diags(scale) @ mat
        mats.append(mat.tocsr().astype(np.float32))
        owner = np.repeat(np.arange(len(part)), np.diff(hashed.text_blocks))[keep] + lo
        owners.append(owner)
    return sparse.vstack(mats).tocsr(), np.concatenate(owners)


def capped(rows: list[mc.Row], rng: random.Random) -> list[mc.Row]:
    """At most GROUP_CAP rows per group and label (a probe's carriers are not crowded out)."""
    by_group: dict[tuple[str, str], list[mc.Row]] = defaultdict(list)
    for row in rows:
        by_group[(row.group, row.label)].append(row)
    out: list[mc.Row] = []
    for key in sorted(by_group):
        members = by_group[key]
        if len(members) > GROUP_CAP:
            members = rng.sample(members, GROUP_CAP)
        out.extend(members)
    return out


def fit_head(x: sparse.csr_matrix, owner: Any, targets: Any, c: float) -> LogisticRegression:
    """Two-pass fit (all windows, then each positive text's best window)."""
    used = targets[owner] >= 0
    y = targets[owner]
    per_text = np.bincount(owner, minlength=len(targets))
    weight = 1.0 / per_text[owner]
    model = LogisticRegression(C=c, solver="liblinear", class_weight="balanced", max_iter=200)
    model.fit(x[used], y[used], sample_weight=weight[used])
    margin = model.decision_function(x)
    best = np.full(len(targets), -np.inf)
    np.maximum.at(best, owner, margin)
    chosen = (y == 1) & (margin == best[owner])
    # one window per positive text (the first of ties)
    _, first = np.unique(owner[chosen], return_index=True)
    keep_pos = np.flatnonzero(chosen)[first]
    mask = (y == 0).copy()
    mask[keep_pos] = True
    weight2 = np.where(y == 1, 1.0, weight)
    model2 = LogisticRegression(C=c, solver="liblinear", class_weight="balanced", max_iter=200)
    model2.fit(x[mask], y[mask], sample_weight=weight2[mask])
    return model2


def threshold_at(neg_scores: Any, max_fpr: float) -> float:
    """Lowest threshold (scores >= it flag) with FPR <= max_fpr on these negatives, at least 0.5."""
    ordered = np.sort(np.asarray(neg_scores, dtype=np.float64))[::-1]
    allowed = int(np.floor(max_fpr * len(ordered)))
    if allowed >= len(ordered):
        return 0.5
    cut = float(np.nextafter(np.float32(ordered[allowed]), np.float32(1.0)))
    return max(cut, 0.5)


def metrics(
    scores: Sequence[float], rows: Sequence[mc.Row], head: str, thr: float
) -> dict[str, Any]:
    tp = fp = fn = tn = fp_benign = n_benign = 0
    for s, row in zip(scores, rows, strict=True):
        t = row.target(head)
        if t is None:
            continue
        hit = s >= thr
        if t == 1:
            tp += hit
            fn += not hit
        else:
            fp += hit
            tn += not hit
            if row.label in mc.BENIGN:
                n_benign += 1
                fp_benign += hit
    return {
        "threshold": round(thr, 6),
        "positives": tp + fn,
        "negatives": fp + tn,
        "benign": n_benign,
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "recall": round(tp / (tp + fn), 4) if tp + fn else None,
        "fpr_negatives": round(fp / (fp + tn), 4) if fp + tn else None,
        "fpr_benign": round(fp_benign / n_benign, 4) if n_benign else None,
    }


def save(path: Path, weights: Any, meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    with path.open("wb") as fh:
        np.savez_compressed(fh, weights=weights.astype(np.float16), meta=header)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpora", type=Path, default=mc.DEFAULT_CORPORA)
    ap.add_argument("--out", type=Path, default=ml.DEFAULT_MODEL)
    ap.add_argument("--metrics", type=Path, default=None, help="default: next to --out")
    ap.add_argument("--bits", type=int, default=18)
    ap.add_argument("--stride", type=int, default=128, help="bytes per block (window = 2 blocks)")
    ap.add_argument(
        "--power", type=float, default=0.5, help="window vector = counts / n_features**power"
    )
    ap.add_argument(
        "--min-count", type=int, default=64, help="scale as if a window had at least N features"
    )
    ap.add_argument(
        "--max-fpr",
        type=float,
        default=0.001,
        help="false-positive rate allowed on validation negatives (they are easier than real traffic)",
    )
    ap.add_argument("--limit", type=int, default=None, help="rows per split at most (smoke test)")
    args = ap.parse_args(argv)
    metrics_path = args.metrics or args.out.with_suffix(".metrics.json")
    rng = random.Random(SEED)
    t0 = time.perf_counter()

    all_rows = list(mc.rows(args.corpora))
    if not all_rows:
        print(f"no corpus rows under {args.corpora}", file=sys.stderr)
        return 2
    split: dict[str, list[mc.Row]] = defaultdict(list)
    for row in all_rows:
        split[row.split].append(row)
    train = capped(split["train"], rng)
    if args.limit is not None:
        for name in ("validation", "test", "unseen"):
            split[name] = rng.sample(split[name], min(args.limit, len(split[name])))
        train = rng.sample(train, min(args.limit, len(train)))
    print(
        f"rows: train {len(train)} (capped {GROUP_CAP}/group and label), validation "
        f"{len(split['validation'])}, test {len(split['test'])}, never trainable {len(split['unseen'])}"
    )

    train_views = [ml.keyword_view(r.text) for r in train]
    x, owner = window_matrix(train_views, args.bits, args.stride, args.power, args.min_count)
    print(
        f"training matrix: {x.shape[0]} windows x {x.shape[1]} buckets, {x.nnz} entries "
        f"({time.perf_counter() - t0:.1f} s)"
    )

    val_rows = split["validation"]
    val_views = [ml.keyword_view(r.text) for r in val_rows]
    weights = np.zeros((1 << args.bits, len(ml.LABELS)), dtype=np.float32)
    bias: dict[str, float] = {}
    chosen_c: dict[str, float] = {}
    thresholds: dict[str, float] = {}
    for k, head in enumerate(ml.LABELS):
        targets = np.array([-1 if (t := r.target(head)) is None else t for r in train])
        best: tuple[float, float, Any, float] | None = None
        for c in C_GRID:
            model = fit_head(x, owner, targets, c)
            w = np.zeros_like(weights)
            w[:, k] = model.coef_.ravel()
            b = {label: 0.0 for label in ml.LABELS}
            b[head] = float(model.intercept_[0])
            clf = ml.Classifier(
                w,
                np.array([b[label] for label in ml.LABELS], dtype=np.float32),
                dict.fromkeys(ml.LABELS, 0.5),
                stride=args.stride,
                power=args.power,
                min_count=args.min_count,
                meta={},
            )
            scores = [s[head] for s in clf.score_views(val_views)]
            neg = [s for s, r in zip(scores, val_rows, strict=True) if r.target(head) == 0]
            thr = threshold_at(neg, args.max_fpr)
            recall = metrics(scores, val_rows, head, thr)["recall"] or 0.0
            print(f"  {head:17} C={c:<4} validation recall {recall:.4f} at threshold {thr:.4f}")
            if best is None or recall > best[0]:
                best = (recall, c, model, thr)
        assert best is not None
        _, chosen_c[head], model, thresholds[head] = best
        weights[:, k] = model.coef_.ravel()
        bias[head] = float(model.intercept_[0])

    files = [mc.file_record(p) for p in sorted(args.corpora.glob("*.jsonl"))]
    used = Counter((r.file, r.label) for r in train)
    meta: dict[str, Any] = {
        "format": ml.MODEL_FORMAT,
        "version": ml.MODEL_VERSION,
        "labels": list(ml.LABELS),
        "bias": bias,
        "threshold": thresholds,
        "features": {
            "bits": args.bits,
            "stride": args.stride,
            "window": 2 * args.stride,
            "scale_power": args.power,
            "min_count": args.min_count,
            "char_ngrams": [3, 4, 5],
            "word_ngrams": [1, 2],
            "normalisation": "detectors.normalise keyword view, no payload decoding",
        },
        "training": {
            "script": "bench/train_classifier.py",
            "seed": SEED,
            "group_cap": GROUP_CAP,
            "C": chosen_c,
            "max_fpr_validation": args.max_fpr,
            "split": {
                "salt": mc.SPLIT_SALT,
                "test": mc.TEST_SHARE,
                "validation": mc.VALIDATION_SHARE,
            },
            "files": [f for f in files if f["file"] in mc.TRAINABLE],
            "not_trained_on": [f for f in files if f["file"] not in mc.TRAINABLE]
            + [{"rows": "misc_pypi_corpora.jsonl rows whose source is GPL (easyjailbreak)"}],
            "rows_used": {f"{f}:{lab}": n for (f, lab), n in sorted(used.items())},
        },
    }
    save(args.out, weights, meta)
    clf = ml.Classifier.load(args.out)  # score with exactly what was written (float16 weights)

    report: dict[str, Any] = {"model": str(args.out), "meta_training": meta["training"]}
    for name in ("validation", "test", "unseen"):
        rows_ = split[name]
        scored = clf.score_batch([r.text for r in rows_])
        report[name] = {
            head: metrics([s[head] for s in scored], rows_, head, clf.thresholds[head])
            for head in ml.LABELS
        }
        per_label: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for s, r in zip(scored, rows_, strict=True):
            cell = per_label[f"{r.file}:{r.label}"]
            cell[0] += 1
            cell[1] += any(s[h] >= clf.thresholds[h] for h in ml.LABELS)
        report[name]["flagged_by_file_label"] = {
            k: {"n": n, "flagged": f} for k, (n, f) in sorted(per_label.items())
        }
    metrics_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    print(f"\nwrote {args.out} ({args.out.stat().st_size:,} bytes) and {metrics_path}")
    print(
        f"\n{'split':11} {'label':17} {'thresh':>7} {'pos':>6} {'neg':>6} {'precision':>9} {'recall':>7} {'FPR(neg)':>8} {'FPR(benign)':>11} {'benign n':>8}"
    )
    for name in ("validation", "test", "unseen"):
        for head in ml.LABELS:
            m = report[name][head]

            def f(v: float | None) -> str:
                return "-" if v is None else f"{v:.4f}"

            print(
                f"{name:11} {head:17} {m['threshold']:7.4f} {m['positives']:6d} {m['negatives']:6d} "
                f"{f(m['precision']):>9} {f(m['recall']):>7} {f(m['fpr_negatives']):>8} "
                f"{f(m['fpr_benign']):>11} {m['benign']:8d}"
            )
    print(
        "\n('unseen' = never trainable: sharegpt first turns (benign_unverified) and the GPL rows)"
    )
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
