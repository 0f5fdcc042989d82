"""The synthetic telemetry generator: deterministic, valid, realistic, labelled."""

from __future__ import annotations

import base64
import itertools
import re
import string
import zlib
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from detectors.event import EventError, decode_event, validate_event
from pipeline.synth import (
    MALFORMED_KINDS,
    THREAT_FAMILIES,
    THREAT_VARIANTS,
    Trace,
    demo_users,
    generate_events,
    generate_labelled_traces,
    generate_traces,
    malformed_lines,
    write_examples,
)
from pipeline.users import USER_FIELDS, validate_user

START = datetime(2026, 11, 23, 8, 30, tzinfo=UTC)
MAX_BYTES = 1_048_576
TS_FORMAT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
REPO = Path(__file__).resolve().parents[2]


def first_events(n: int, seed: int = 7, **kw: Any) -> list[dict[str, Any]]:
    return list(itertools.islice(generate_events(seed, start=START, **kw), n))


def traces_until(n_events: int, seed: int = 7, **kw: Any) -> list[Trace]:
    """Whole labelled traces until at least ``n_events`` events were produced."""
    out: list[Trace] = []
    count = 0
    for trace in generate_labelled_traces(seed, start=START, **kw):
        out.append(trace)
        count += len(trace.events)
        if count >= n_events:
            return out
    raise AssertionError("unreachable: the generator is endless")


@pytest.fixture(scope="module")
def traces() -> list[Trace]:
    return traces_until(5_000)


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_the_same_stream() -> None:
    assert first_events(500) == first_events(500)
    assert orjson.dumps(first_events(500)) == orjson.dumps(first_events(500))


def test_different_seeds_give_different_streams() -> None:
    a, b = first_events(500, seed=7), first_events(500, seed=8)
    assert a != b
    assert {e["event_id"] for e in a}.isdisjoint(e["event_id"] for e in b)


def test_generate_traces_and_events_agree() -> None:
    traces = list(itertools.islice(generate_traces(7, start=START), 100))
    flat = [event for trace in traces for event in trace]
    assert flat == first_events(len(flat))


def test_default_start_is_now_in_utc() -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    event = next(generate_events())
    ts = datetime.fromisoformat(event["ts"])
    assert before <= ts <= datetime.now(UTC) + timedelta(seconds=5)


@pytest.mark.parametrize("kwargs", [
    {"attack_ratio": -0.1}, {"attack_ratio": 1.5}, {"trace_gap_ms": 0},
    {"start": datetime(2026, 1, 1)},  # naive: ambiguous
])
def test_bad_arguments_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        next(generate_events(7, **kwargs))


# --------------------------------------------------------------------------- validity and shape


def test_first_5000_events_are_valid_event_v1(traces: list[Trace]) -> None:
    events = [e for t in traces for e in t.events]
    assert len(events) >= 5_000
    for event in events:
        validate_event(event)
        assert decode_event(orjson.dumps(event), max_bytes=MAX_BYTES) == event
    assert len({e["event_id"] for e in events}) == len(events)
    assert Counter(e["kind"] for e in events).keys() == {"prompt", "response", "tool_call"}


def test_events_match_the_published_json_schema(traces: list[Trace]) -> None:
    import jsonschema

    schema = orjson.loads((REPO / "pipeline" / "schemas" / "event-v1.json").read_bytes())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    for trace in traces[:500]:
        for event in trace.events:
            validator.validate(event)


def test_events_share_no_mutable_objects() -> None:
    events = first_events(2_000)
    seen: dict[int, str] = {}
    for event in events:
        stack: list[Any] = [v for v in event.values() if isinstance(v, dict | list)]
        while stack:
            value = stack.pop()
            assert seen.setdefault(id(value), event["event_id"]) == event["event_id"]
            children = value.values() if isinstance(value, dict) else value
            stack.extend(v for v in children if isinstance(v, dict | list))


def test_traces_share_ids_and_have_increasing_timestamps(traces: list[Trace]) -> None:
    trace_ids = set()
    for trace in traces:
        events = trace.events
        first = events[0]
        assert first["kind"] == "prompt"
        assert events[-1]["kind"] == "response"
        assert all(e["kind"] == "tool_call" for e in events[1:-1])
        for key in ("trace_id", "session_id", "request_id", "service", "environment"):
            assert len({e[key] for e in events}) == 1, key
        assert all(e["parent_id"] == first["event_id"] for e in events[1:])
        stamps = [e["ts"] for e in events]
        assert all(TS_FORMAT.match(ts) for ts in stamps)
        times = [datetime.fromisoformat(ts) for ts in stamps]
        assert times == sorted(times) and len(set(times)) == len(times)
        assert times[0] >= START
        trace_ids.add(first["trace_id"])
    assert len(trace_ids) == len(traces)
    starts = [datetime.fromisoformat(t.events[0]["ts"]) for t in traces]
    assert starts == sorted(starts)


def test_events_carry_plausible_context(traces: list[Trace]) -> None:
    services: Counter[str] = Counter()
    for trace in traces:
        prompt, response = trace.events[0], trace.events[-1]
        services[prompt["service"]] += 1
        assert prompt["prompt"]["messages"][-1] == {"role": "user",
                                                    "content": prompt["prompt"]["text"]}
        assert set(prompt["system_prompt"]) == {"version", "sha256", "text"}
        assert set(prompt["model"]) == {"provider", "name", "version"}
        assert set(prompt["user"]) == {"id", "ip", "geo", "device"}
        assert {"feature", "use_case"} <= set(prompt["tags"])
        usage = response["usage"]
        assert usage["prompt_tokens"] > 50 and usage["completion_tokens"] > 0
        assert 0 < usage["cost_usd"] < 1
        assert 100 < response["latency_ms"] < 60_000
        for tool in trace.events[1:-1]:
            assert {"name", "endpoint", "arguments", "status", "authenticated"} <= set(
                tool["tool"])
            assert 0 < tool["latency_ms"] < 5_000
    assert set(services) == {"support-bot", "code-assistant", "hr-helper", "finance-copilot",
                             "search-agent"}


def test_benign_content_is_varied(traces: list[Trace]) -> None:
    benign = [t for t in traces if t.threat is None]
    prompts = {t.events[0]["prompt"]["text"] for t in benign}
    assert len(prompts) > 0.8 * len(benign)
    tools = Counter(e["tool"]["name"] for t in benign for e in t.events[1:-1])
    assert len(tools) >= 15
    assert any(t.events[0]["prompt"]["messages"][:-1] for t in benign)  # multi-turn sessions


def test_users_mostly_known_some_unknown(traces: list[Trace]) -> None:
    users = {u["id"]: u for u in demo_users()}
    unknown = 0
    for trace in traces:
        user = trace.events[0]["user"]
        if user["id"] not in users:
            unknown += 1
            continue
        assert user["geo"] in users[user["id"]]["usual_geo"]
    assert 0.01 < unknown / len(traces) < 0.06
    seen = {t.events[0]["user"]["id"] for t in traces}
    assert set(users) <= seen


def test_benign_tool_calls_of_known_users_are_allowed(traces: list[Trace]) -> None:
    users = {u["id"]: u for u in demo_users()}
    for trace in traces:
        if trace.threat is not None:
            continue
        for event in trace.events[1:-1]:
            user = users.get(event["user"]["id"])
            if user is not None:
                assert event["tool"]["name"] in user["allowed_tools"], event["tool"]["name"]


def test_most_known_users_act_within_their_work_hours(traces: list[Trace]) -> None:
    users = {u["id"]: u for u in demo_users()}
    inside = total = 0
    for trace in traces:
        user = users.get(trace.events[0]["user"]["id"])
        if user is None:
            continue
        local = datetime.fromisoformat(trace.events[0]["ts"]).astimezone(
            ZoneInfo(user["timezone"]))
        begin, end = user["work_hours"].split("-")
        total += 1
        inside += begin <= local.strftime("%H:%M") < end
    assert inside / total > 0.8


# --------------------------------------------------------------------------- threats


@pytest.mark.parametrize("ratio", [0.0, 0.08, 0.3, 1.0])
def test_attack_ratio_is_roughly_honoured(ratio: float) -> None:
    sample = list(itertools.islice(generate_labelled_traces(3, attack_ratio=ratio,
                                                            start=START), 4_000))
    observed = sum(t.threat is not None for t in sample) / len(sample)
    assert abs(observed - ratio) < 0.02


def test_every_threat_family_and_variant_appears_in_the_first_5000_events(
        traces: list[Trace]) -> None:
    seen = {(t.threat.family, t.threat.variant) for t in traces if t.threat is not None}
    assert {family for family, _ in seen} == set(THREAT_FAMILIES)
    expected = {(f, v) for f, variants in THREAT_VARIANTS.items() for v in variants}
    assert seen == expected


def _luhn(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    total = sum(digits[-1::-2]) + sum(sum(divmod(2 * d, 10)) for d in digits[-2::-2])
    return total % 10 == 0


def _iban_ok(text: str) -> bool:
    iban = text.replace(" ", "")
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _ssn_ok(text: str) -> bool:
    area, group, serial = (int(x) for x in text.split("-"))
    return 0 < area < 900 and area != 666 and group > 0 and serial > 0


def _ghp_ok(token: str) -> bool:
    body, check = token[4:34], token[34:]
    alphabet = string.digits + string.ascii_uppercase + string.ascii_lowercase
    value = 0
    for char in check:
        value = value * 62 + alphabet.index(char)
    return value == zlib.crc32(body.encode())


def _found(pattern: str, check: Callable[[str], bool] | None = None) -> Callable[[str], bool]:
    regex = re.compile(pattern)

    def predicate(text: str) -> bool:
        hits = regex.findall(text)
        return bool(hits) and (check is None or all(check(h) for h in hits))
    return predicate


def _b64_instruction(text: str) -> bool:
    blob = max(re.findall(r"[A-Za-z0-9+/=]{24,}", text), key=len)
    decoded = base64.b64decode(blob).decode()
    return bool(re.search(r"(ignore|disregard|forget) ", decoded))


# variant -> a predicate on the carrier's text (its field serialised as JSON when not a string)
CARRIER_CHECKS: dict[str, Callable[[str], bool]] = {
    "prompt": _found(r"(?i)\b(ignore|disregard|forget|set aside|override|pay no attention)\b"),
    "persona": _found(r"(?i)\b(you are|act as)\b"),
    "roleplay": _found(r"(?i)(game|pretend|screenplay)"),
    "developer_mode": _found(r"(?i)(developer mode|sudo mode)"),
    "hypothetical": _found(r"(?i)(hypothetically|opposite day)"),
    "request": _found(r"(?i)(instructions|prompt|rules|configuration|message|above)"),
    "leak": _found(r"(?i)(instructions|prompt|rules|configuration|message|above)"),
    "web_page": _found(r"(?i)(ignore|disregard|forget|supersede)"),
    "email": _found(r"[\w.]+@[\w.]+\.[a-z]{2,}"),
    "email_body": _found(r"(?i)(ignore|disregard|forget|supersede)"),
    "kb_article": _found(r"(?i)(ignore|disregard|forget|supersede)"),
    "repo_file": _found(r"(?i)(ignore|disregard|forget|supersede)"),
    "phone": _found(r"\+?\(?\d[\d ()-]{8,}\d"),
    "card": _found(r"\b\d{4}[ -]?\d{4,6}[ -]?\d{4,5}(?:[ -]?\d{4})?\b", _luhn),
    "ssn": _found(r"\b\d{3}-\d{2}-\d{4}\b", _ssn_ok),
    "iban": _found(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}(?: ?[A-Z0-9]{1,3})?\b", _iban_ok),
    "aws_key": _found(r"\bAKIA[A-Z2-7]{16}\b"),
    "github_token": _found(r"\bghp_[A-Za-z0-9]{36}\b", _ghp_ok),
    "private_key": _found(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]+-----END [A-Z ]*PRIVATE KEY"),
    "password": _found(r"(?i)(password[\"']?\s*[=:]|:[^@/\s]+@db\.internal)"),
    "script_tag": _found(r"<script>"),
    "javascript_url": _found(r"javascript:"),
    "drop_table": _found(r"DROP TABLE"),
    "rm_rf": _found(r"rm -rf (/|\.)"),
    "curl_sh": _found(r"(curl|wget) [^|]+\| *(sudo )?(ba)?sh"),
    "markdown_image_exfil": _found(r"!\[[^\]]*\]\(https://[^)]+\?d=[^)]+\)"),
    "shell_rm": _found(r"rm -rf /"),
    "sql_drop": _found(r"DROP TABLE"),
    "sql_delete": _found(r"(DELETE FROM|TRUNCATE TABLE)"),
    "path_traversal": _found(r"\.\.[/\\]"),
    "admin_endpoint": _found(r"/admin/"),
    "unauthenticated": lambda text: text == "false",
    "mass_email": lambda text: text.count("@") > 100,
    "zero_width": _found("[\u200b\u200c\u200d\u2060\ufeff]"),
    "homoglyph": _found("[\u0430\u0435\u043e\u0440\u0441\u0445\u0456\u0443\u0455]"),
    "base64": _b64_instruction,
    "bidi": _found("\u202e"),
    "malware": lambda text: text == "true",
    "phishing": lambda text: text == "true",
    "stalking": lambda text: text == "true",
    "credential_theft": lambda text: text == "true",
}


def _field_text(event: dict[str, Any], path: str) -> str:
    value: Any = event
    for part in path.split("."):
        value = value[part]
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def test_variant_checks_cover_every_variant() -> None:
    assert set(CARRIER_CHECKS) == {v for vs in THREAT_VARIANTS.values() for v in vs}


def test_threat_labels_point_at_the_threat(traces: list[Trace]) -> None:
    attacks = [t for t in traces if t.threat is not None]
    assert attacks
    for trace in attacks:
        threat = trace.threat
        assert threat is not None
        carrier = [e for e in trace.events if e["event_id"] == threat.event_id]
        assert len(carrier) == 1
        assert carrier[0]["kind"] == threat.kind
        text = _field_text(carrier[0], threat.field)
        assert CARRIER_CHECKS[threat.variant](text), (threat, text[:300])


def test_leaked_system_prompts_echo_the_real_one(traces: list[Trace]) -> None:
    leaks = [t for t in traces if t.threat is not None and t.threat.variant == "leak"]
    assert leaks
    for trace in leaks:
        response = trace.events[-1]
        assert response["system_prompt"]["text"][:80] in response["response"]["text"]


BENIGN_MARKERS = re.compile(
    "[\u200b-\u200d\u2060\ufeff\u202a-\u202e]|AKIA[A-Z2-7]{16}|ghp_|PRIVATE KEY|<script|"
    r"javascript:|DROP TABLE|rm -rf|\| *(ba)?sh\b|\.\./|\b\d{3}-\d{2}-\d{4}\b|"
    r"[\w.]+@(?!\*)[\w-]+\.[a-z]{2,}|(?i:you are now|developer mode|system prompt)"
)


def test_benign_traces_carry_no_threat_markers(traces: list[Trace]) -> None:
    for trace in traces:
        if trace.threat is not None:
            continue
        for event in trace.events:
            body = {k: v for k, v in event.items() if k != "system_prompt"}
            text = orjson.dumps(body).decode()
            assert not BENIGN_MARKERS.search(text), text[:400]
            if event["kind"] == "response":
                assert event["response"]["refusal"] is False
            if event["kind"] == "tool_call":
                assert event["tool"]["authenticated"] is True


def test_red_team_user_is_mostly_attacking(traces: list[Trace]) -> None:
    red = [t for t in traces if t.events[0]["user"]["id"] == "u-9001"]
    assert red
    assert sum(t.threat is not None for t in red) / len(red) > 0.5


# --------------------------------------------------------------------------- malformed input


def test_malformed_lines_are_all_rejected() -> None:
    lines = list(itertools.islice(malformed_lines(), 20 * len(MALFORMED_KINDS)))
    reasons: Counter[str] = Counter()
    for raw in lines:
        assert isinstance(raw, bytes)
        with pytest.raises(EventError) as caught:
            decode_event(raw, max_bytes=MAX_BYTES)
        reasons[caught.value.reason.split(":")[0].split(" ")[0]] += 1
    assert len(set(lines)) > 0.8 * len(lines)  # varied, not one line repeated
    assert len(reasons) >= 5


def test_malformed_lines_cover_every_kind() -> None:
    one_round = list(itertools.islice(malformed_lines(3), len(MALFORMED_KINDS)))
    oversize = [raw for raw in one_round if len(raw) > MAX_BYTES]
    assert len(oversize) == 1 and len(oversize[0]) > 2 * 1024 * 1024
    validate_event(orjson.loads(oversize[0]))  # rejected for its size alone
    assert any(raw.strip() == b"" for raw in one_round)
    assert any(raw.startswith(b"[") for raw in one_round)
    reasons = []
    for raw in one_round:
        with pytest.raises(EventError) as caught:
            decode_event(raw, max_bytes=MAX_BYTES)
        reasons.append(caught.value.reason)
    joined = "\n".join(reasons)
    for expected in ("exceeds the limit", "invalid UTF-8", "invalid JSON", "expected a JSON object",
                     "missing required field", "field 'kind'", "needs the", "field 'ts'"):
        assert expected in joined, expected


def test_malformed_lines_are_deterministic() -> None:
    a = list(itertools.islice(malformed_lines(5), 30))
    b = list(itertools.islice(malformed_lines(5), 30))
    assert a == b


# --------------------------------------------------------------------------- users and examples


def test_demo_users_have_the_user_context_fields() -> None:
    users = demo_users()
    assert 10 <= len(users) <= 15
    assert len({u["id"] for u in users}) == len(users)
    for user in users:
        validate_user(user)
        assert set(USER_FIELDS) <= set(user)
        assert user["allowed_tools"] and user["usual_geo"]
        assert re.fullmatch(r"\d\d:\d\d-\d\d:\d\d", user["work_hours"])
        ZoneInfo(user["timezone"])
    roles = Counter(u["role"] for u in users)
    assert roles["red-team"] == 1 and roles["admin"] == 1
    departments = {u["department"] for u in users}
    assert {"finance", "support", "engineering", "hr"} <= departments
    assert any(u["privileged"] for u in users) and not all(u["privileged"] for u in users)
    assert demo_users() == users


def test_write_examples(tmp_path: Path) -> None:
    events_path, users_path = write_examples(tmp_path)
    lines = events_path.read_bytes().splitlines()
    assert 200 <= len(lines) < 210
    for line in lines:
        decode_event(line, max_bytes=MAX_BYTES)
    assert [orjson.loads(line) for line in users_path.read_bytes().splitlines()] == demo_users()


def test_committed_examples_are_up_to_date(tmp_path: Path) -> None:
    write_examples(tmp_path)
    for name in ("events.jsonl", "users.jsonl"):
        committed = REPO / "examples" / name
        assert committed.read_bytes() == (tmp_path / name).read_bytes(), (
            f"examples/{name} is stale: run python -m pipeline.synth")
