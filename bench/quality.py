"""Detection-quality bench for the shipped rule packs.

Run from the repository root::

    .venv/bin/python bench/quality.py [--corpora DIR] [--rules PATH ...] [--out FILE]
                                      [--limit N] [--misses LABEL]
                                      [--ml [--ml-model FILE] [--ml-min-score S]]

What it measures
----------------
1. Public corpora (``../shared/data/corpora/*.jsonl``, one ``{"text", "label",
   ...}`` object a line). Every text is wrapped into the Event v1 it would
   arrive as (a prompt; a ``tool_call`` whose ``tool.result`` is the text for
   indirect injection and tool outputs) and scanned by the engine with every
   loaded rule. For each file and label: how many events, and the share on
   which a ``prompt_injection``, ``jailbreak``, ``system_prompt_leak`` or
   ``data_exfiltration`` finding fired, any finding at all, and the
   label's own "detected" rate (see LABELS below).
2. Synthetic secrets and PII, generated here with a seeded RNG: real token
   formats with random bodies, Luhn-valid and -invalid cards, valid and
   invalid IBANs, SSNs, phone numbers, e-mail and IP addresses, national
   ids (passport MRZ, DNI/NIE, BSN, NIR, CPF, Aadhaar, Steuer-ID) whose check
   digits are computed here, independently of detectors/validators.py, plus
   look-alikes (placeholders, documentation keys, low-entropy strings,
   public certificates, version numbers, id-shaped digit runs, ids with a
   wrong check value). Recall per kind, false-positive rate per look-alike
   kind, and up to three missed (or wrongly fired) texts under each row.
3. The rules that fire most on benign labels, to tune them.
4. With ``--ml``: the ML classifier (detectors/ml.py) alone, the rules alone
   (findings in categories prompt_injection or jailbreak) and their OR, on the
   rows the classifier never trained on: the held-out test split of the
   permissive files (bench/ml_corpus.py) and the never-trainable rows
   (sharegpt first turns, GPL rows). ``--ml-model`` scores another model file,
   ``--ml-min-score`` replaces the model's thresholds (an operating point).

Nothing here touches the network and every number is deterministic for a
given set of rules and corpora. Labels are other people's and noisy: the
headline numbers use only the labels listed as positives/benign below; the
others are printed for information (see docs/rule-packs.md).
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import string
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Append (not prepend): an installed llmtrail wins, else the working tree.
sys.path.append(str(ROOT))

from detectors import Engine, load_rules  # noqa: E402

INJECTION_CATEGORIES = frozenset(
    {"prompt_injection", "jailbreak", "system_prompt_leak", "data_exfiltration"}
)

# role of each label: "pos" counts toward the injection+jailbreak recall target,
# "pos-aux" is an injection-type label reported separately, "benign" counts
# toward the false-positive target, "info" is reported but not scored.
LABELS: dict[str, str] = {
    "injection": "pos",
    "jailbreak": "pos",
    "indirect_injection": "pos-aux",
    "encoded_injection": "pos-aux",
    "benign": "benign",
    "benign_unverified": "benign",
    "benign_lookalike": "benign",
    "benign_control": "benign",
    # heuristic or out-of-scope labels: reported, not scored
    "override_phrase_benign_task": "info",
    "jailbreak_suspect": "info",
    "injection_goal": "info",
    "harmful_request": "info",
    "obfuscated_harmful": "info",
    "secret_elicitation": "info",
    "other": "info",
}


# --------------------------------------------------------------------------
# events


def _event(n: int, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "event_id": f"bench-{n:07d}",
        "kind": kind,
        "ts": "2026-01-01T00:00:00.000Z",
        "trace_id": f"t-bench-{n:07d}",
        "service": "bench",
        "environment": "bench",
        "user": {"id": "u-bench"},
    }
    ev.update(payload)
    return ev


def prompt_event(n: int, text: str) -> dict[str, Any]:
    return _event(n, "prompt", {"prompt": {"text": text}})


def tool_result_event(n: int, text: str, name: str = "web.fetch") -> dict[str, Any]:
    return _event(
        n,
        "tool_call",
        {"tool": {"name": name, "arguments": {}, "result": text, "status": "ok"}},
    )


def response_event(n: int, text: str) -> dict[str, Any]:
    return _event(n, "response", {"response": {"text": text, "finish_reason": "stop"}})


def corpus_event(n: int, file: str, row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Wrap one corpus row into the event it would arrive as."""
    text, label = row["text"], row["label"]
    if label == "indirect_injection" or row.get("category") == "indirect_injection":
        # content the model reads, not what the user typed (some corpora mark
        # this in a per-row "category" under a coarser label)
        return "tool_call", tool_result_event(n, text)
    if file.startswith("agentdojo_tool_outputs"):
        return "tool_call", tool_result_event(n, text)
    if file.startswith("agentdojo_tasks") and label == "injection":
        # agentdojo attack templates are planted in tool outputs
        return "tool_call", tool_result_event(n, text)
    return "prompt", prompt_event(n, text)


# --------------------------------------------------------------------------
# corpora


@dataclass
class Cell:
    n: int = 0
    cats: Counter[str] = field(default_factory=Counter)
    any: int = 0
    detected: int = 0


def scan_corpora(
    engine: Engine, corpora: Path, limit: int | None, misses_label: str | None
) -> tuple[dict[tuple[str, str], Cell], Counter[str], dict[str, list[str]], list[str], float]:
    cells: dict[tuple[str, str], Cell] = defaultdict(Cell)
    fp_rules: Counter[str] = Counter()
    fp_examples: dict[str, list[str]] = defaultdict(list)
    misses: list[str] = []
    n = 0
    t0 = time.perf_counter()
    for path in sorted(corpora.glob("*.jsonl")):
        with path.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if limit is not None and i >= limit:
                    break
                row = json.loads(line)
                label = row["label"]
                kind, ev = corpus_event(n, path.name, row)
                n += 1
                findings = engine.scan(ev)
                cats = {f.category for f in findings}
                cell = cells[(path.name, label)]
                cell.n += 1
                cell.cats.update(cats)
                cell.any += bool(findings)
                hit = bool(cats & INJECTION_CATEGORIES)
                cell.detected += hit
                role = LABELS.get(label, "info")
                if role == "benign":
                    for f in findings:
                        if f.category in INJECTION_CATEGORIES:
                            fp_rules[f.rule_id] += 1
                            if len(fp_examples[f.rule_id]) < 2:
                                fp_examples[f.rule_id].append(_excerpt(row["text"], f))
                if role == "benign" and kind == "prompt":
                    # the same benign text replayed as a tool result: false positives
                    # of the indirect-injection rules on ordinary content
                    n += 1
                    replay = engine.scan(tool_result_event(n, row["text"]))
                    rcell = cells[(path.name, f"{label}@tool_result")]
                    rcell.n += 1
                    rcats = {f.category for f in replay}
                    rcell.cats.update(rcats)
                    rcell.any += bool(replay)
                    rcell.detected += bool(rcats & INJECTION_CATEGORIES)
                if misses_label and label == misses_label and not hit and len(misses) < 40:
                    misses.append(f"{path.name}: {row['text'][:300]!r}")
    return cells, fp_rules, fp_examples, misses, time.perf_counter() - t0


def _excerpt(text: str, finding: Any) -> str:
    ev = getattr(finding, "evidence", None) or []
    if ev:
        first = ev[0]
        start = first.get("start") if isinstance(first, dict) else getattr(first, "start", None)
        end = first.get("end") if isinstance(first, dict) else getattr(first, "end", None)
        if isinstance(start, int) and isinstance(end, int):
            return text[max(0, start - 40) : end + 40].replace("\n", " ")
    return text[:120].replace("\n", " ")


def print_corpora(
    cells: dict[tuple[str, str], Cell], fp_rules: Counter[str], fp_examples: dict[str, list[str]]
) -> dict[str, float]:
    print("\n## Public corpora: share of events on which a category fired\n")
    hdr = f"{'file':32} {'label':28} {'role':8} {'n':>6} {'inject':>7} {'jailbr':>7} {'sysprm':>7} {'exfil':>7} {'any':>7} {'DETECT':>7}"
    print(hdr)
    print("-" * len(hdr))
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (file, label), c in sorted(cells.items()):
        role = "replay" if label.endswith("@tool_result") else LABELS.get(label, "info")

        def r(x: int, c: Cell = c) -> str:
            return f"{x / c.n:7.3f}"

        print(
            f"{file[:32]:32} {label[:28]:28} {role:8} {c.n:6d} {r(c.cats['prompt_injection'])} "
            f"{r(c.cats['jailbreak'])} {r(c.cats['system_prompt_leak'])} "
            f"{r(c.cats['data_exfiltration'])} {r(c.any)} {r(c.detected)}"
        )
        key = role if role != "pos-aux" else label
        totals[key][0] += c.detected
        totals[key][1] += c.n
        if role == "info":
            totals[f"info:{label}"][0] += c.detected
            totals[f"info:{label}"][1] += c.n
    print()
    summary: dict[str, float] = {}
    pos, npos = totals["pos"]
    ben, nben = totals["benign"]
    if npos:
        summary["recall_injection_jailbreak"] = pos / npos
        print(
            f"HEADLINE recall, injection+jailbreak labels (all files): {pos}/{npos} = {pos / npos:.3f}   (target >= 0.90)"
        )
    if nben:
        summary["fp_benign"] = ben / nben
        print(
            f"HEADLINE false positives on benign labels:               {ben}/{nben} = {ben / nben:.4f}  (target <= 0.01)"
        )
    rep, nrep = totals["replay"]
    if nrep:
        summary["fp_benign_as_tool_output"] = rep / nrep
        print(
            f"false positives, benign texts replayed as tool output:  {rep}/{nrep} = {rep / nrep:.4f}"
        )
    for key in ("indirect_injection", "encoded_injection"):
        d, k = totals[key]
        if k:
            summary[f"recall_{key}"] = d / k
            print(f"recall, {key:42} {d}/{k} = {d / k:.3f}")
    for key, (d, k) in sorted(totals.items()):
        if key.startswith("info:") and k:
            print(f"info,   {key[5:]:42} fired on {d}/{k} = {d / k:.3f}")
    print("\n## Rules firing on benign labels (injection-type categories), top 15\n")
    if not fp_rules:
        print("(none)")
    for rid, cnt in fp_rules.most_common(15):
        print(f"{cnt:5d}  {rid}")
        for ex in fp_examples[rid]:
            print(f"         e.g. …{ex[:160]}…")
    return summary


# --------------------------------------------------------------------------
# synthetic secrets and PII

B32 = string.ascii_uppercase + "234567"
ALNUM = string.ascii_letters + string.digits
B64URL = ALNUM + "-_"
B64STD = ALNUM + "+/"
HEXL = "0123456789abcdef"


def rstr(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def luhn_complete(rng: random.Random, prefix: str, length: int, valid: bool = True) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    check = (10 - total % 10) % 10
    if not valid:
        check = (check + rng.randint(1, 9)) % 10
    return body + str(check)


def group_card(num: str, rng: random.Random) -> str:
    sep = rng.choice(["", " ", "-"])
    if len(num) == 15 or len(num) == 14:  # Amex 4-6-5
        parts = [num[:4], num[4:10], num[10:]]
    else:
        parts = [num[i : i + 4] for i in range(0, len(num), 4)]
    return sep.join(parts)


IBAN_FORMATS = {  # country: (length, bban alphabet pattern: 'n' digit, 'a' upper, 'c' alnum)
    "DE": "n" * 18,
    "GB": "aaaa" + "n" * 14,
    "FR": "n" * 10 + "c" * 11 + "nn",
    "ES": "n" * 20,
    "NL": "aaaa" + "n" * 10,
    "IT": "a" + "n" * 10 + "c" * 12,
    "BE": "n" * 12,
    "CH": "n" * 5 + "c" * 12,
    "PL": "n" * 24,
    "AT": "n" * 16,
}


def make_iban(rng: random.Random, cc: str, valid: bool = True) -> str:
    pat = IBAN_FORMATS[cc]
    bban = "".join(
        rng.choice(
            string.digits
            if p == "n"
            else string.ascii_uppercase
            if p == "a"
            else string.digits + string.ascii_uppercase
        )
        for p in pat
    )
    numeric = "".join(str(int(ch, 36)) for ch in bban + cc + "00")
    check = 98 - int(numeric) % 97
    if not valid:
        check = (check + rng.randint(1, 50)) % 97 + 2
    return f"{cc}{check:02d}{bban}"


def space_iban(s: str, rng: random.Random) -> str:
    if rng.random() < 0.5:
        return s
    return " ".join(s[i : i + 4] for i in range(0, len(s), 4))


def pem_key(r: random.Random) -> str:
    kind = r.choice(["", "RSA ", "EC ", "OPENSSH "])
    return f"-----BEGIN {kind}PRIVATE KEY-----\n{pem_body(r)}\n-----END {kind}PRIVATE KEY-----"


def pem_body(rng: random.Random, lines: int = 12) -> str:
    return "\n".join(rstr(rng, B64STD, 64) for _ in range(lines))


FIRST = [
    "anna",
    "li",
    "omar",
    "jules",
    "maria",
    "kenji",
    "sofia",
    "liam",
    "noor",
    "pavel",
    "ines",
    "tom",
]
LAST = [
    "meyer",
    "chen",
    "haddad",
    "martin",
    "garcia",
    "sato",
    "rossi",
    "byrne",
    "khan",
    "novak",
    "silva",
    "ward",
]
DOMAINS = [
    "gmail.com",
    "outlook.de",
    "proton.me",
    "acme-corp.io",
    "uni-hamburg.de",
    "yahoo.co.uk",
    "mail.ru",
    "fastmail.fm",
]


# National identifiers. The check digits are computed here from the published
# algorithms, on purpose not with detectors/validators.py: a validator that
# is wrong then shows up as lost recall, or as hits on the bad-check
# look-alikes. `valid=False` gives the same number with a wrong check value.


def _other_digit(rng: random.Random, right: str) -> str:
    return str((int(right) + rng.randint(1, 9)) % 10)


def mrz_check(chars: str) -> str:
    """ICAO 9303: 0-9 as themselves, A-Z as 10-35, '<' as 0; weights 7, 3, 1; mod 10."""
    total = sum((0 if ch == "<" else int(ch, 36)) * (7, 3, 1)[i % 3] for i, ch in enumerate(chars))
    return str(total % 10)


MRZ_STATES = ["D<<", "NLD", "FRA", "GBR", "ESP", "ITA", "IND", "BRA", "USA", "POL"]


def mrz_td3_line2(rng: random.Random, valid: bool = True) -> str:
    """Line 2 of a passport MRZ (TD3, 44 characters) with all five check digits."""
    doc = rstr(rng, string.ascii_uppercase + string.digits, rng.choice([8, 9])).ljust(9, "<")
    birth = f"{rng.randint(0, 99):02d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    expiry = f"{rng.randint(26, 36):02d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    if rng.random() < 0.5:
        personal = "<" * 14
        personal_check = rng.choice("<0")  # an unused field's check digit is '<' or 0
    else:
        personal = rstr(rng, string.digits, rng.randint(8, 14)).ljust(14, "<")
        personal_check = mrz_check(personal)
    line = (
        doc
        + mrz_check(doc)
        + rng.choice(MRZ_STATES)
        + birth
        + mrz_check(birth)
        + rng.choice("MF<")
        + expiry
        + mrz_check(expiry)
        + personal
        + personal_check
    )
    # composite: document number, birth date, expiry and personal number, each with its check
    line += mrz_check(line[0:10] + line[13:20] + line[21:43])
    if not valid:
        pos = rng.choice([9, 19, 27, 43])  # document, birth, expiry or composite check digit
        line = line[:pos] + _other_digit(rng, line[pos]) + line[pos + 1 :]
    return line


def mrz_td3_line1(rng: random.Random) -> str:
    name = f"{rng.choice(LAST).upper()}<<{rng.choice(FIRST).upper()}"
    return f"P<{rng.choice(MRZ_STATES)}{name}".ljust(44, "<")


DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"  # control letter of a DNI/NIE number: index = number mod 23


def es_dni_nie(rng: random.Random, nie: bool, valid: bool = True) -> str:
    """Spanish DNI (8 digits) or NIE (X/Y/Z for 0/1/2, then 7 digits) with its control letter."""
    if nie:
        prefix = rng.choice("XYZ")
        digits = rstr(rng, string.digits, 7)
        number = int(str("XYZ".index(prefix)) + digits)
    else:
        number = rng.randint(1_000_000, 99_999_999)
        while number == 12_345_678:  # the textbook number, excluded by the rule on purpose
            number = rng.randint(1_000_000, 99_999_999)
        digits = f"{number:08d}"
    letter = DNI_LETTERS[number % 23]
    if not valid:
        letter = rng.choice(DNI_LETTERS.replace(letter, ""))
    if nie:
        return rng.choice(
            [
                f"{prefix}{digits}{letter}",
                f"{prefix}-{digits}-{letter}",
                f"{prefix}{digits}-{letter}",
                f"{prefix}-{digits} {letter}",
            ]
        )
    return rng.choice(
        [
            f"{digits}{letter}",
            f"{digits}-{letter}",
            f"{digits} {letter}",
            f"{digits[:2]}.{digits[2:5]}.{digits[5:]}-{letter}",
        ]
    )


def nl_bsn(rng: random.Random, valid: bool = True) -> str:
    """Dutch BSN: 9 digits, sum of digit x weight (9..2, then -1 for the last) divisible by 11."""
    while True:
        head = rstr(rng, string.digits, 8)
        last = sum(int(d) * w for d, w in zip(head, range(9, 1, -1), strict=True)) % 11
        if last < 10:
            break
    bsn = head + (str(last) if valid else _other_digit(rng, str(last)))
    return rng.choice([bsn, f"{bsn[:4]}.{bsn[4:6]}.{bsn[6:]}", f"{bsn[:3]} {bsn[3:6]} {bsn[6:]}"])


def fr_nir(rng: random.Random, spaced: bool, valid: bool = True) -> str:
    """French NIR: 13 characters then key = 97 - (number mod 97), Corsica 2A/2B as 19/18."""
    place = rng.choice(
        [
            f"{rng.choice([d for d in range(1, 96) if d != 20]):02d}{rng.randint(1, 990):03d}",
            f"2{rng.choice('AB')}{rng.randint(1, 366):03d}",  # Corsica
            f"97{rng.randint(1, 6)}{rng.randint(1, 99):02d}",  # overseas: 3-digit department
            f"99{rng.randint(100, 990)}",  # born abroad: 99 + country code
        ]
    )
    body = (
        f"{rng.choice('12')}{rng.randint(0, 99):02d}{rng.randint(1, 12):02d}"
        f"{place}{rng.randint(1, 999):03d}"
    )
    key = 97 - int(body.replace("2A", "19").replace("2B", "18")) % 97
    if not valid:
        key = (key - 1 + rng.randint(1, 96)) % 97 + 1
    if not spaced:
        return f"{body}{key:02d}"
    b = body
    return f"{b[0]} {b[1:3]} {b[3:5]} {b[5:7]} {b[7:10]} {b[10:13]} {key:02d}"


def cpf_check(base: str) -> str:
    """The two CPF check digits: weights 10..2 then 11..2, remainder < 2 gives 0, else 11 - r."""
    for _ in range(2):
        r = sum(int(d) * w for d, w in zip(base, range(len(base) + 1, 1, -1), strict=True)) % 11
        base += "0" if r < 2 else str(11 - r)
    return base[-2:]


def br_cpf(rng: random.Random, formatted: bool, valid: bool = True) -> str:
    base = rstr(rng, string.digits, 9)
    while len(set(base)) == 1:  # 111.111.111-11 and kin are not issued
        base = rstr(rng, string.digits, 9)
    check = cpf_check(base)
    if not valid:
        check = rng.choice([f"{i:02d}" for i in range(100) if f"{i:02d}" != check])
    if not formatted:
        return base + check
    return f"{base[:3]}.{base[3:6]}.{base[6:]}-{check}"


# Verhoeff: multiplication in the dihedral group D5 (0-4 rotations, 5-9
# reflections), the permutation (0 1 5 8 9 4 2 7)(3 6) applied i times to the
# i-th digit from the right, and the group inverse.
def _d5(j: int, k: int) -> int:
    if j < 5:
        return (j + k) % 5 + (5 if k >= 5 else 0)
    return (j - k) % 5 + (0 if k >= 5 else 5)


VERHOEFF_P1 = (1, 5, 7, 6, 2, 8, 3, 0, 9, 4)
VERHOEFF_INV = (0, 4, 3, 2, 1, 5, 6, 7, 8, 9)


def _verhoeff_perm(times: int, digit: int) -> int:
    for _ in range(times % 8):
        digit = VERHOEFF_P1[digit]
    return digit


def verhoeff_check(digits: str) -> str:
    c = 0
    for i, ch in enumerate(reversed(digits)):
        c = _d5(c, _verhoeff_perm(i + 1, int(ch)))
    return str(VERHOEFF_INV[c])


def in_aadhaar(rng: random.Random, grouped: bool, valid: bool = True) -> str:
    """Indian Aadhaar: 12 digits, the first 2-9, the last a Verhoeff check digit."""
    head = str(rng.randint(2, 9)) + rstr(rng, string.digits, 10)
    check = verhoeff_check(head)
    num = head + (check if valid else _other_digit(rng, check))
    if not grouped:
        return num
    return rng.choice(" -").join([num[:4], num[4:8], num[8:]])


def steuer_id_check(digits: str) -> str:
    """ISO 7064 MOD 11,10 check digit."""
    product = 10
    for ch in digits:
        s = (int(ch) + product) % 10 or 10
        product = s * 2 % 11
    return str((11 - product) % 10)


def de_steuer_id(rng: random.Random, valid: bool = True) -> str:
    """German IdNr: 11 digits, no leading 0; in the first ten one digit occurs twice or three
    times (three not all adjacent), the others at most once; ISO 7064 MOD 11,10 check digit."""
    while True:
        twin = rng.randint(0, 9)
        times = rng.choice([2, 3])
        others = rng.sample([d for d in range(10) if d != twin], 10 - times)
        head = [twin] * times + others
        rng.shuffle(head)
        text = "".join(map(str, head))
        if head[0] != 0 and str(twin) * 3 not in text:
            break
    check = steuer_id_check(text)
    num = text + (check if valid else _other_digit(rng, check))
    return rng.choice([num, f"{num[:2]} {num[2:5]} {num[5:8]} {num[8:]}"])


# Secret kinds: name -> generator of (text, kind of event)
Gen = Callable[[random.Random], str]


def secret_generators() -> dict[str, Gen]:
    def aws_akid(r: random.Random) -> str:
        return r.choice(["AKIA", "ASIA"]) + rstr(r, B32, 16)

    def jwt(r: random.Random) -> str:
        head = b64u(json.dumps({"alg": r.choice(["HS256", "RS256"]), "typ": "JWT"}).encode())
        body = b64u(
            json.dumps(
                {
                    "sub": rstr(r, string.digits, 8),
                    "name": r.choice(FIRST),
                    "iat": r.randint(1600000000, 1800000000),
                }
            ).encode()
        )
        return f"{head}.{body}.{rstr(r, B64URL, 43)}"

    return {
        "aws_access_key_id": aws_akid,
        "aws_secret_access_key": lambda r: f"aws_secret_access_key = {rstr(r, B64STD, 40)}",
        "gcp_api_key": lambda r: "AIza" + rstr(r, B64URL, 35),
        "gcp_service_account": lambda r: json.dumps(
            {
                "type": "service_account",
                "project_id": "proj-" + rstr(r, HEXL, 6),
                "private_key_id": rstr(r, HEXL, 40),
                "client_email": f"svc@proj-{rstr(r, HEXL, 6)}.iam.gserviceaccount.com",
            }
        ),
        "azure_storage_conn": lambda r: (
            f"DefaultEndpointsProtocol=https;AccountName=st{rstr(r, string.ascii_lowercase, 8)};AccountKey={rstr(r, B64STD, 86)}==;EndpointSuffix=core.windows.net"
        ),
        "github_classic": lambda r: (
            r.choice(["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]) + rstr(r, ALNUM, 36)
        ),
        "github_fine_grained": lambda r: f"github_pat_{rstr(r, ALNUM, 22)}_{rstr(r, ALNUM, 59)}",
        "gitlab_pat": lambda r: "glpat-" + rstr(r, ALNUM + "-_", 20),
        "slack_bot_token": lambda r: (
            f"xoxb-{rstr(r, string.digits, 11)}-{rstr(r, string.digits, 13)}-{rstr(r, ALNUM, 24)}"
        ),
        "slack_user_token": lambda r: (
            f"xoxp-{rstr(r, string.digits, 11)}-{rstr(r, string.digits, 11)}-{rstr(r, string.digits, 13)}-{rstr(r, HEXL, 32)}"
        ),
        "slack_webhook": lambda r: (
            f"https://hooks.slack.com/services/T{rstr(r, B32[:26] + '0123456789', 10)}/B{rstr(r, B32[:26] + '0123456789', 10)}/{rstr(r, ALNUM, 24)}"
        ),
        "stripe_live": lambda r: (
            r.choice(["sk_live_", "rk_live_"]) + rstr(r, ALNUM, r.choice([24, 99]))
        ),
        "openai_project": lambda r: (
            "sk-proj-" + rstr(r, B64URL, 48) + "T3BlbkFJ" + rstr(r, B64URL, 48)
        ),
        "openai_legacy": lambda r: "sk-" + rstr(r, ALNUM, 20) + "T3BlbkFJ" + rstr(r, ALNUM, 20),
        "anthropic": lambda r: "sk-ant-api03-" + rstr(r, B64URL, 93) + "AA",
        "jwt": jwt,
        "pem_private_key": pem_key,
        "generic_password": lambda r: (
            f"{r.choice(['password', 'db_password', 'PASSWORD', 'passwd'])}{r.choice(['=', ': ', ' = '])}{r.choice(['', chr(34)])}{rstr(r, ALNUM + '!@#%^&*', r.randint(12, 20))}"
        ),
        "generic_api_key": lambda r: (
            f"{r.choice(['api_key', 'API_KEY', 'apikey', 'client_secret', 'auth_token'])}{r.choice(['=', ': '])}{rstr(r, ALNUM, r.randint(24, 40))}"
        ),
        "sendgrid": lambda r: f"SG.{rstr(r, B64URL, 22)}.{rstr(r, B64URL, 43)}",
        "huggingface": lambda r: "hf_" + rstr(r, ALNUM, 34),
        "npm": lambda r: "npm_" + rstr(r, ALNUM, 36),
    }


def secret_lookalike_generators() -> dict[str, Gen]:
    return {
        "aws_placeholder": lambda r: r.choice(
            [
                "AKIAXXXXXXXXXXXXXXXX",
                "AKIAIOSFODNN7EXAMPLE",
                "AKIA0000000000000000",
                "ASIAYYYYYYYYYYYYYYYY",
            ]
        ),
        "aws_secret_docs": lambda r: (
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        ),
        "openai_placeholder": lambda r: r.choice(
            [
                "sk-...",
                "sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                "sk-proj-XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
                "sk-your-key-here",
                "OPENAI_API_KEY=sk-<your-key>",
            ]
        ),
        "token_placeholder": lambda r: r.choice(
            [
                "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                "<your-token>",
                "xoxb-your-bot-token",
                "glpat-XXXXXXXXXXXXXXXXXXXX",
                "Bearer <token>",
                "sk_live_xxxxxxxxxxxxxxxxxxxxxxxx",
                "github_pat_<redacted>",
            ]
        ),
        "generic_placeholder": lambda r: r.choice(
            [
                "password=<your-password>",
                "api_key=YOUR_API_KEY",
                "password: ********",
                "secret: changeme",
                "API_KEY=${API_KEY}",
                "password = os.environ['DB_PASSWORD']",
                "token: {{ secrets.TOKEN }}",
                "password=password123",
                'api_key = "xxxxxxxxxxxxxxxx"',
            ]
        ),
        "low_entropy": lambda r: (
            f"{r.choice(['password', 'api_key', 'secret'])}={r.choice(string.ascii_lowercase) * r.randint(10, 20)}"
        ),
        "uuid": lambda r: (
            f"request id {rstr(r, HEXL, 8)}-{rstr(r, HEXL, 4)}-4{rstr(r, HEXL, 3)}-a{rstr(r, HEXL, 3)}-{rstr(r, HEXL, 12)}"
        ),
        "git_sha": lambda r: f"fixed in commit {rstr(r, HEXL, 40)}",
        "sha256_hash": lambda r: f"sha256 checksum: {rstr(r, HEXL, 64)}",
        "public_cert": lambda r: (
            f"-----BEGIN CERTIFICATE-----\n{pem_body(r)}\n-----END CERTIFICATE-----"
        ),
        "public_key": lambda r: (
            f"-----BEGIN PUBLIC KEY-----\n{pem_body(r, 6)}\n-----END PUBLIC KEY-----"
        ),
        "pem_truncated": lambda r: (
            "-----BEGIN RSA PRIVATE KEY-----\n...\n-----END RSA PRIVATE KEY-----"
        ),
        "jwt_truncated": lambda r: "Authorization: Bearer eyJhbGciOi...",
        "prose": lambda r: r.choice(
            [
                "The secret to good bread is patience.",
                "My password manager is great.",
                "Use the token bucket algorithm for rate limiting.",
                "Skip the api key step if you use OAuth.",
            ]
        ),
        "stripe_test_key": lambda r: "sk_test_" + rstr(r, ALNUM, 24),
        "random_b64_no_context": lambda r: f"image checksum {rstr(r, B64STD, 40)} matches",
        "weak_password": lambda r: (
            f"password: {r.choice(['hunter2', 'letmein', 'qwerty123', 'welcome1', 'summer2024'])}"
        ),
        "env_reference": lambda r: r.choice(
            [
                "api_key = os.getenv('API_KEY')",
                "token: ${{ secrets.GITHUB_TOKEN }}",
                "password: !vault |",
                "client_secret=<redacted>",
                "AWS_SECRET_ACCESS_KEY=$AWS_SECRET",
            ]
        ),
        "base64_image": lambda r: "data:image/png;base64," + rstr(r, B64STD, 120),
    }


SECRET_WRAP = [
    "here is my config, why does it fail?\n{x}",
    "The deploy log printed {x} and then crashed",
    "```\n{x}\n```",
    'export TOKEN="{x}"',
    "{x}",
    "Can you check this: {x} thanks",
    '{{"name": "svc", "credential": "{x}", "enabled": true}}',
    "settings:\n  upstream:\n    key: {x}\n",
    "use `{x}` in the header.",
    "curl 'https://api.internal/v1/items?access={x}&limit=5'",
]


def pii_generators() -> dict[str, Gen]:
    def email(r: random.Random) -> str:
        return f"{r.choice(FIRST)}{r.choice(['.', '_', ''])}{r.choice(LAST)}{r.choice(['', str(r.randint(1, 99))])}@{r.choice(DOMAINS)}"

    def card(r: random.Random) -> str:
        brand = r.choice(["visa", "mc", "mc2", "amex", "discover", "jcb", "diners"])
        prefix, length = {
            "visa": ("4" + rstr(r, string.digits, 3), 16),
            "mc": (str(r.randint(51, 55)) + rstr(r, string.digits, 2), 16),
            "mc2": (str(r.randint(2221, 2720)), 16),
            "amex": (r.choice(["34", "37"]) + rstr(r, string.digits, 2), 15),
            "discover": (r.choice(["6011", "65" + rstr(r, string.digits, 2)]), 16),
            "jcb": (str(r.randint(3528, 3589)), 16),
            "diners": (r.choice(["300", "305", "36", "38"]), 14),
        }[brand]
        return group_card(luhn_complete(r, prefix, length), r)

    def ssn(r: random.Random) -> str:
        area = r.choice([x for x in range(1, 900) if x != 666])
        return f"{area:03d}-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}"

    def phone(r: random.Random) -> str:
        return r.choice(
            [
                f"+1 {r.randint(201, 989)} {r.randint(200, 999)} {r.randint(1000, 9999)}",
                f"+1-{r.randint(201, 989)}-{r.randint(200, 999)}-{r.randint(1000, 9999)}",
                f"+44 7{r.randint(100, 999)} {r.randint(100000, 999999)}",
                f"+49 {r.randint(151, 179)} {r.randint(1000000, 99999999)}",
                f"+33 {r.randint(6, 7)} {r.randint(10, 99)} {r.randint(10, 99)} {r.randint(10, 99)} {r.randint(10, 99)}",
                f"+91 {r.randint(70000, 99999)} {r.randint(10000, 99999)}",
                f"+{r.choice(['1', '44', '49', '33', '61', '81'])}{rstr(r, string.digits, 10)}",
                f"({r.randint(201, 989)}) {r.randint(200, 999)}-{r.randint(1000, 9999)}",
                f"{r.randint(201, 989)}-{r.randint(200, 999)}-{r.randint(1000, 9999)}",
                f"07{r.randint(100, 999)} {r.randint(100000, 999999)}",
                f"0{r.randint(30, 89)} {r.randint(1000, 9999)} {r.randint(1000, 9999)}",
            ]
        )

    def ipv4(r: random.Random) -> str:
        return f"{r.choice([8, 23, 45, 52, 81, 93, 104, 141, 185, 203])}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"

    def ipv6(r: random.Random) -> str:
        groups = [f"{r.randint(0, 0xFFFF):x}" for _ in range(8)]
        groups[0] = "2001"
        if r.random() < 0.5:
            return ":".join(groups)
        return ":".join(groups[:3]) + "::" + ":".join(groups[6:])

    return {
        "email": email,
        "payment_card": card,
        "us_ssn": ssn,
        "iban": lambda r: space_iban(make_iban(r, r.choice(sorted(IBAN_FORMATS))), r),
        "phone": phone,
        "ipv4": ipv4,
        "ipv6": ipv6,
        "passport_mrz": lambda r: (
            f"{mrz_td3_line1(r)}\n{mrz_td3_line2(r)}" if r.random() < 0.5 else mrz_td3_line2(r)
        ),
        "es_dni": lambda r: es_dni_nie(r, nie=False),
        "es_nie": lambda r: es_dni_nie(r, nie=True),
        "nl_bsn": nl_bsn,
        "fr_nir_spaced": lambda r: fr_nir(r, spaced=True),
        "fr_nir_bare": lambda r: fr_nir(r, spaced=False),
        "br_cpf_formatted": lambda r: br_cpf(r, formatted=True),
        "br_cpf_bare": lambda r: br_cpf(r, formatted=False),
        "in_aadhaar_grouped": lambda r: in_aadhaar(r, grouped=True),
        "in_aadhaar_bare": lambda r: in_aadhaar(r, grouped=False),
        "de_steuer_id": de_steuer_id,
    }


PII_WRAP = {
    "email": [
        "Contact me at {x} tomorrow",
        "Reply-to: {x}",
        "my email is {x}",
        "{x}",
        '{{"customer": {{"email": "{x}"}}}}',
        "cc: <{x}>; bcc: none",
    ],
    "payment_card": [
        "my card number is {x}, exp 04/27",
        "Charge {x} for the order",
        "Card: {x}",
        "pay with {x} please",
        '{{"pan": "{x}", "exp": "04/27"}}',
        "{x}",
    ],
    "us_ssn": [
        "SSN: {x}",
        "my social security number is {x}",
        "Applicant SSN {x}, DOB 1980-02-03",
        "ssn={x}",
    ],
    "iban": [
        "Please wire it to IBAN {x}",
        "IBAN: {x}",
        "Bank account {x} (Sparkasse)",
        '{{"iban": "{x}"}}',
        "{x}",
    ],
    "phone": [
        "Call me on {x}",
        "phone: {x}",
        "my mobile number is {x}",
        "Tel. {x}",
        "WhatsApp {x} anytime",
        '{{"phone": "{x}"}}',
    ],
    "ipv4": [
        "The login came from {x} at 3am",
        "client ip={x}",
        "ssh root@{x}",
        "X-Forwarded-For: {x}",
    ],
    "ipv6": ["source address {x}", "client ip={x}", "[{x}]:443"],
    # national ids: the forms that count on their own also appear bare; the
    # others only next to the context word their rule requires
    "passport_mrz": [
        "Passport scan (OCR):\n{x}",
        "MRZ: {x}",
        "{x}",
        "Here is the photo page text, can you read the expiry date?\n{x}\nthanks",
        '{{"document": "passport", "mrz": "{x}"}}',
    ],
    "es_dni": [
        "Mi DNI es {x}, a nombre de Lucía.",
        "DNI: {x}",
        "{x}",
        "Documento nacional de identidad {x}",
        '{{"dni": "{x}", "nombre": "Ana"}}',
        "The tenant's ID number is {x}.",
    ],
    "es_nie": [
        "NIE: {x}",
        "Mi número de identidad de extranjero es {x}",
        "{x}",
        '{{"nie": "{x}"}}',
        "Residence card holder {x}",
    ],
    "nl_bsn": [
        "Mijn BSN is {x}, kunt u dat controleren?",
        "BSN: {x}",
        "burgerservicenummer {x}",
        "{x} (BSN van de aanvrager)",
        '{{"bsn": "{x}", "naam": "J. de Vries"}}',
        "citizen service number: {x}",
        "sofinummer {x}",
    ],
    "fr_nir_spaced": [
        "Numéro de sécurité sociale : {x}",
        "N° SS {x}",
        "{x}",
        "The patient's carte Vitale number is {x}.",
        '{{"nir": "{x}"}}',
    ],
    "fr_nir_bare": [
        "NIR {x} (salarié)",
        "numéro de sécurité sociale: {x}",
        "carte Vitale n° {x}",
        "{x} (numéro INSEE)",
        '{{"nir": "{x}"}}',
        "social security number {x}",
    ],
    "br_cpf_formatted": [
        "Meu CPF é {x}.",
        "CPF: {x}",
        "{x}",
        "Titular: João Silva, {x}",
        '{{"cpf": "{x}", "nome": "Maria"}}',
    ],
    "br_cpf_bare": [
        "cpf={x}&nome=joao",
        "Meu CPF é {x}",
        "CPF {x}",
        "{x} (CPF do titular)",
        '{{"cpf": "{x}"}}',
    ],
    "in_aadhaar_grouped": [
        "My Aadhaar is {x}, please update KYC.",
        "Aadhaar no. {x}",
        "{x}",
        "Customer ID proof: {x}",
        "UIDAI number {x}",
    ],
    "in_aadhaar_bare": [
        '{{"aadhaar": "{x}", "name": "R. Iyer"}}',
        "Aadhaar: {x}",
        "aadhar number {x}",
        "{x} is my Aadhaar",
        "UIDAI {x}",
    ],
    "de_steuer_id": [
        "Meine Steuer-ID lautet {x}.",
        "Steueridentifikationsnummer (IdNr): {x}",
        "steuerliche Identifikationsnummer {x}",
        "IdNr. {x}",
        "{x} (Steuer-ID)",
        "tax id: {x}",
        '{{"steuerId": "{x}"}}',
    ],
}

# a national id with a wrong check value, in the wrapping of its valid kind
NATIONAL_ID_BAD_CHECK: dict[str, Gen] = {
    "passport_mrz": lambda r: mrz_td3_line2(r, valid=False),
    "es_dni": lambda r: es_dni_nie(r, nie=False, valid=False),
    "es_nie": lambda r: es_dni_nie(r, nie=True, valid=False),
    "nl_bsn": lambda r: nl_bsn(r, valid=False),
    "fr_nir_spaced": lambda r: fr_nir(r, spaced=True, valid=False),
    "fr_nir_bare": lambda r: fr_nir(r, spaced=False, valid=False),
    "br_cpf_bare": lambda r: br_cpf(r, formatted=False, valid=False),
    "in_aadhaar_grouped": lambda r: in_aadhaar(r, grouped=True, valid=False),
    "in_aadhaar_bare": lambda r: in_aadhaar(r, grouped=False, valid=False),
    "de_steuer_id": lambda r: de_steuer_id(r, valid=False),
}

NEUTRAL_LABELS = ["ref", "order no.", "batch", "tracking number", "invoice", "room", "ticket #"]


def _national_id_bad_check(r: random.Random) -> str:
    kind = r.choice(sorted(NATIONAL_ID_BAD_CHECK))
    return r.choice(PII_WRAP[kind]).format(x=NATIONAL_ID_BAD_CHECK[kind](r))


def pii_lookalike_generators() -> dict[str, Gen]:
    return {
        "card_luhn_invalid": lambda r: (
            f"card number {group_card(luhn_complete(r, '4' + rstr(r, string.digits, 3), 16, valid=False), r)}"
        ),
        "order_number_16": lambda r: (
            f"order #{luhn_complete(r, '9' + rstr(r, string.digits, 3), 16, valid=False)}"
        ),
        "iban_bad_checksum": lambda r: (
            f"IBAN {make_iban(r, r.choice(sorted(IBAN_FORMATS)), valid=False)}"
        ),
        "ssn_invalid": lambda r: (
            f"SSN {r.choice(['000', '666', '9' + rstr(r, string.digits, 2)])}-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}"
        ),
        "date_and_time": lambda r: (
            f"meeting on 2025-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} at {r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}"
        ),
        "version_number": lambda r: (
            f"upgrade to version {r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 50)}.{r.randint(0, 999)}"
        ),
        "placeholder_email": lambda r: r.choice(
            [
                "user@example.com",
                "name@example.org",
                "you@yourdomain.com",
                "foo@bar",
                "@username on twitter",
            ]
        ),
        "isbn": lambda r: (
            f"ISBN 978-{r.randint(0, 9)}-{r.randint(100, 999)}-{r.randint(10000, 99999)}-{r.randint(0, 9)}"
        ),
        "math": lambda r: (
            f"compute {r.randint(100, 999)} * {r.randint(100, 999)} - {r.randint(1000, 9999)}"
        ),
        "uuid": lambda r: (
            f"id {rstr(r, HEXL, 8)}-{rstr(r, HEXL, 4)}-{rstr(r, HEXL, 4)}-{rstr(r, HEXL, 4)}-{rstr(r, HEXL, 12)}"
        ),
        "cpp_scope": lambda r: r.choice(
            ["std::vector<int> v;", "use foo::bar::baz;", "a::b::c::d", "Time is 12:30:45"]
        ),
        "phone_like_no_context": lambda r: (
            f"ticket {r.randint(201, 989)}-{r.randint(200, 999)}-{r.randint(1000, 9999)} was closed"
        ),
        "private_ip": lambda r: (
            r.choice(
                [
                    f"10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}",
                    f"192.168.{r.randint(0, 255)}.{r.randint(1, 254)}",
                    f"172.{r.randint(16, 31)}.{r.randint(0, 255)}.{r.randint(1, 254)}",
                    "127.0.0.1",
                ]
            )
            + " is the gateway"
        ),
        "unix_timestamp": lambda r: f"created_at={r.randint(1600000000, 1800000000)}",
        "amount_and_percent": lambda r: (
            f"+{r.randint(1, 99)}.{r.randint(0, 9)}% growth, revenue {r.randint(1000, 99999)} EUR"
        ),
        # national-id shapes without the id: some pass a checksum by chance
        # (4-4-4 digits 1 in 10 Verhoeff, 8 digits + letter 1 in 26 the DNI letter)
        "digits_4_4_4": lambda r: (
            f"{r.choice(NEUTRAL_LABELS)} "
            + r.choice(" -").join(rstr(r, string.digits, 4) for _ in range(3))
        ),
        "digits8_capital_letter": lambda r: (
            f"{r.choice(NEUTRAL_LABELS)} {rstr(r, string.digits, 8)}{r.choice(string.ascii_uppercase)}"
        ),
        "cpf_shaped_bad_check": lambda r: f"{r.choice(NEUTRAL_LABELS)} {br_cpf(r, True, False)}",
        "bare_digits_9_11_12_15": lambda r: (
            f"{r.choice(NEUTRAL_LABELS)} {rstr(r, string.digits, r.choice([9, 11, 12, 15]))}"
        ),
        "national_id_bad_check": _national_id_bad_check,
    }


def run_synthetic(engine: Engine, seed: int, per_kind: int) -> dict[str, float]:
    rng = random.Random(seed)
    summary: dict[str, float] = {}
    n = 10_000_000

    def fired(ev: dict[str, Any], category: str) -> set[str]:
        return {f.rule_id for f in engine.scan(ev) if f.category == category}

    def table(
        title: str,
        gens: dict[str, Gen],
        wrap: Callable[[str, str, random.Random], str],
        category: str,
        positive: bool,
    ) -> tuple[int, int]:
        nonlocal n
        print(f"\n## {title}\n")
        print(f"{'kind':26} {'n':>5} {'prompt':>7} {'resp':>7}  rules")
        tot_hit = tot = 0
        for kind, gen in gens.items():
            hits = {"prompt": 0, "response": 0}
            rules: Counter[str] = Counter()
            wrong: list[str] = []  # misses of a positive kind, hits of a look-alike
            for i in range(per_kind):
                value = gen(rng)
                text = wrap(kind, value, rng)
                for k, mk in (("prompt", prompt_event), ("response", response_event)):
                    n += 1
                    ids = fired(mk(n, text), category)
                    rules.update(ids)
                    hits[k] += bool(ids)
                    if bool(ids) != positive and len(wrong) < 3:
                        wrong.append(f"{k}: {text!r} {sorted(ids) or ''}")
                del i
            tot_hit += hits["prompt"] + hits["response"]
            tot += 2 * per_kind
            top = ", ".join(f"{rid}:{c}" for rid, c in rules.most_common(3))
            print(
                f"{kind:26} {per_kind:5d} {hits['prompt'] / per_kind:7.3f} {hits['response'] / per_kind:7.3f}  {top}"
            )
            for example in wrong:
                print(f"{'':8}{'missed' if positive else 'fired'} {example[:200]}")
        rate = tot_hit / tot if tot else 0.0
        print(f"{'ALL':26} {tot // 2:5d} {'recall' if positive else 'FP rate'} = {rate:.4f}")
        return tot_hit, tot

    def swrap(_kind: str, x: str, r: random.Random) -> str:
        return r.choice(SECRET_WRAP).format(x=x)

    def pwrap(kind: str, x: str, r: random.Random) -> str:
        return r.choice(PII_WRAP[kind]).format(x=x)

    def lwrap(_kind: str, x: str, _r: random.Random) -> str:
        return x

    h, t = table(
        "Synthetic secrets: recall (category secret)", secret_generators(), swrap, "secret", True
    )
    summary["recall_secrets"] = h / t
    h, t = table(
        "Secret look-alikes: false positives (category secret)",
        secret_lookalike_generators(),
        swrap,
        "secret",
        False,
    )
    summary["fp_secret_lookalikes"] = h / t
    h, t = table("Synthetic PII: recall (category pii)", pii_generators(), pwrap, "pii", True)
    summary["recall_pii"] = h / t
    h, t = table(
        "PII look-alikes: false positives (category pii)",
        pii_lookalike_generators(),
        lwrap,
        "pii",
        False,
    )
    summary["fp_pii_lookalikes"] = h / t
    return summary


# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# ML classifier, alone and combined with the rules (held-out rows only)

ML_RULE_CATEGORIES = frozenset({"prompt_injection", "jailbreak"})


@dataclass
class Combined:
    n: int = 0
    rules: int = 0
    ml: int = 0
    ml_pi: int = 0
    either: int = 0
    either_pi: int = 0


def run_ml(
    engine: Engine, corpora: Path, model: Path | None, limit: int | None, min_score: float | None
) -> dict[str, float]:
    import ml_corpus

    from detectors import ml as ml_model

    clf = ml_model.Classifier.load(model)
    if min_score is not None:
        clf.thresholds = dict.fromkeys(clf.thresholds, min_score)
    thresholds = ", ".join(f"{k} {v:.4f}" for k, v in clf.thresholds.items())
    print(f"\n## ML classifier ({model or 'shipped model'}; thresholds {thresholds})\n")
    rows = [
        r
        for r in ml_corpus.rows(corpora)
        if r.split in ("test", "unseen")
        and r.label not in ml_corpus.DERIVED
        and (limit is None or r.index < limit)
    ]
    t0 = time.perf_counter()
    scores = clf.score_batch([r.text for r in rows])
    ml_secs = time.perf_counter() - t0
    cells: dict[tuple[str, str], Combined] = defaultdict(Combined)
    for n, (row, score) in enumerate(zip(rows, scores, strict=True)):
        _, ev = corpus_event(n, row.file, {"text": row.text, "label": row.label})
        rule = any(f.category in ML_RULE_CATEGORIES for f in engine.scan(ev))
        ml = any(score[label] >= clf.thresholds[label] for label in ml_model.LABELS)
        ml_pi = score["prompt_injection"] >= clf.thresholds["prompt_injection"]
        for key in ((row.split, row.label), (row.split, "*" + label_role(row.label))):
            c = cells[key]
            c.n += 1
            c.rules += rule
            c.ml += ml
            c.ml_pi += ml_pi
            c.either += rule or ml
            c.either_pi += rule or ml_pi
    hdr = f"{'split':7} {'label':28} {'n':>6} {'rules':>7} {'ml':>7} {'ml(PI)':>7} {'OR':>7} {'OR(PI)':>7}"
    print(hdr)
    print("-" * len(hdr))
    summary: dict[str, float] = {}
    for (split, label), c in sorted(cells.items()):
        print(
            f"{split:7} {label:28} {c.n:6d} {c.rules / c.n:7.3f} {c.ml / c.n:7.3f} "
            f"{c.ml_pi / c.n:7.3f} {c.either / c.n:7.3f} {c.either_pi / c.n:7.3f}"
        )
        if label in ("*pos", "*benign"):
            what = "recall" if label == "*pos" else "fp"
            for col in ("rules", "ml", "ml_pi", "either", "either_pi"):
                summary[f"ml_{split}_{what}_{col}"] = getattr(c, col) / c.n
    print(
        "\n(*pos = injection + jailbreak labels, *benign = benign labels; rules = a prompt_injection"
        " or jailbreak finding; ml = either label over its threshold; ml(PI) = the prompt_injection"
        " label only; OR = rules or ml; OR(PI) = rules or ml(PI))"
    )
    print(f"({len(rows)} rows; classifier {ml_secs * 1e6 / max(len(rows), 1):.1f} µs per text)")
    return summary


def label_role(label: str) -> str:
    return LABELS.get(label, "info")


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpora", type=Path, default=ROOT.parent / "shared" / "data" / "corpora")
    ap.add_argument("--rules", type=Path, nargs="+", default=[ROOT / "rules"])
    ap.add_argument("--seed", type=int, default=20261122)
    ap.add_argument("--per-kind", type=int, default=200, help="synthetic samples per kind")
    ap.add_argument("--limit", type=int, default=None, help="rows per corpus file (quick runs)")
    ap.add_argument("--misses", metavar="LABEL", help="print up to 40 undetected texts of LABEL")
    ap.add_argument("--no-corpora", action="store_true")
    ap.add_argument("--no-synthetic", action="store_true")
    ap.add_argument("--ml", action="store_true", help="add the ML classifier section")
    ap.add_argument("--ml-model", type=Path, default=None, help="model file (default: shipped)")
    ap.add_argument(
        "--ml-min-score", type=float, default=None, help="one threshold for both labels"
    )
    args = ap.parse_args(list(argv) if argv is not None else None)

    ruleset = load_rules(list(args.rules))
    engine = Engine(ruleset)
    print(f"# llmtrail detection quality  (rules: {', '.join(str(p) for p in args.rules)})")
    summary: dict[str, float] = {}
    if not args.no_corpora:
        if not args.corpora.is_dir():
            print(f"corpora directory not found: {args.corpora}", file=sys.stderr)
            return 2
        cells, fp_rules, fp_examples, misses, secs = scan_corpora(
            engine, args.corpora, args.limit, args.misses
        )
        summary.update(print_corpora(cells, fp_rules, fp_examples))
        events = sum(c.n for c in cells.values())
        print(f"\n({events} corpus events scanned in {secs:.1f} s)")
        if args.misses:
            print(f"\n## Undetected '{args.misses}' texts (first 40)\n")
            for m in misses:
                print("-", m)
    if args.ml:
        summary.update(run_ml(engine, args.corpora, args.ml_model, args.limit, args.ml_min_score))
    if not args.no_synthetic:
        summary.update(run_synthetic(engine, args.seed, args.per_kind))
    print("\n## Summary\n")
    for k, v in summary.items():
        print(f"{k:34} {v:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
