"""Encryption at rest, the masked analyst view, retention with legal holds, and erasure."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import orjson
import pytest

from pipeline.archive.config import open_backend, open_reader
from pipeline.archive.crypto import ArchiveKeyError, load_master_key
from pipeline.archive.layout import parse_segment_key
from pipeline.archive.lifecycle import (
    RetentionError,
    load_legal_hold,
    parse_retention,
    subject_hash,
)
from pipeline.cli_archive import cat, erase_command, prune_command, verify_command
from pipeline.settings import Secret, Settings, SettingsError
from tests.s3_helpers import T0, event, fill

KEY = base64.b64encode(bytes(range(32))).decode()
SECRET_TEXT = "my card 4111 1111 1111 1111 and mail ada.lovelace@proton.me"


def cat_lines(settings: Settings, **options: object) -> list[bytes]:
    out, err = io.BytesIO(), io.StringIO()
    params: dict[str, object] = {"trace": None, "topic": None, "masked": False, "from_ms": None,
                                 "to_ms": None}
    params.update(options)
    assert cat(settings, out=out, err=err, **params) == 0  # type: ignore[arg-type]
    return out.getvalue().splitlines()


def verify_out(settings: Settings) -> tuple[int, str]:
    out = io.StringIO()
    code = verify_command(settings, from_ms=None, to_ms=None, out=out, err=io.StringIO())
    return code, out.getvalue()


def stored_bytes(settings: Settings) -> bytes:
    backend = open_backend(settings)
    return b"".join(backend.get(k) for k in backend.list("") if parse_segment_key(k))


# -- encryption ---------------------------------------------------------------------------------

def test_encrypted_at_rest_and_readable_with_the_key(any_settings: Settings) -> None:
    settings = any_settings.replace(archive_key=Secret(KEY))
    events = [event(i, text=f"{SECRET_TEXT} #{i}", minutes=i * 20) for i in range(12)]
    fill(settings, events)
    assert b"lovelace" not in stored_bytes(settings)
    assert b"support-bot" not in stored_bytes(settings)
    assert sorted(cat_lines(settings)) == sorted(orjson.dumps(e) for e in events)
    assert verify_out(settings)[0] == 0  # hashes need no key
    keys = open_backend(settings).list("_keys/")
    assert keys == ["_keys/dt=2026-11-22.json"]
    assert bytes(range(32)) not in open_backend(settings).get(keys[0])


def test_reading_without_or_with_a_wrong_key_says_so(any_settings: Settings) -> None:
    fill(any_settings.replace(archive_key=Secret(KEY)), [event(0)])
    with pytest.raises(Exception, match="the block is encrypted: set LLMTRAIL_ARCHIVE_KEY"):
        cat_lines(any_settings)
    other = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(ArchiveKeyError, match=r"does not open this data key .* wrong "
                       "LLMTRAIL_ARCHIVE_KEY"):
        cat_lines(any_settings.replace(archive_key=Secret(other)))


def test_master_key_from_a_file(tmp_path: Path) -> None:
    raw = tmp_path / "raw.key"
    raw.write_bytes(bytes(range(32)))
    text = tmp_path / "b64.key"
    text.write_text(KEY + "\n")
    assert load_master_key("", str(raw)) == load_master_key("", str(text)) == bytes(range(32))
    assert load_master_key("", "") is None


@pytest.mark.parametrize(("text", "path", "message"), [
    ("c2hvcnQ=", "", "LLMTRAIL_ARCHIVE_KEY: expected a 32-byte key as base64 or hex"),
    (KEY, "/x", "set LLMTRAIL_ARCHIVE_KEY or LLMTRAIL_ARCHIVE_KEY_FILE, not both"),
    ("", "/nonexistent/key", "LLMTRAIL_ARCHIVE_KEY_FILE=/nonexistent/key: No such file"),
])
def test_bad_master_keys(text: str, path: str, message: str) -> None:
    with pytest.raises(ArchiveKeyError, match=message):
        load_master_key(text, path)


def test_key_material_never_in_settings_output(tmp_path: Path) -> None:
    settings = Settings.from_env({}, archive_key=Secret(KEY),
                                 archive_s3_secret_access_key=Secret("s3cr3t"),
                                 archive_signing_key=Secret("signme"))
    shown = repr(settings) + " ".join(v for _, v, _ in settings.describe())
    for secret in (KEY, "s3cr3t", "signme"):
        assert secret not in shown


@pytest.mark.parametrize(("env", "message"), [
    ({"LLMTRAIL_ARCHIVE_BACKEND": "s3"},
     "LLMTRAIL_ARCHIVE_BACKEND=s3 needs LLMTRAIL_ARCHIVE_S3_BUCKET"),
    ({"LLMTRAIL_ARCHIVE_BACKEND": "nfs"}, "LLMTRAIL_ARCHIVE_BACKEND='nfs': expected local or s3"),
])
def test_backend_settings_are_checked(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


# -- the analyst view ---------------------------------------------------------------------------

def test_masked_view_hides_pii_and_secrets_raw_stays(tmp_path: Path) -> None:
    # The view does not depend on the backend; the pure-Python prefilter builds fastest.
    any_settings = Settings.from_env({}, data_dir=tmp_path, engine_hyperscan=False)
    leaky = event(1, text=f"{SECRET_TEXT}; key AKIA2E0A8F3B244C9986")
    plain = event(2, text="What is our refund policy?")
    fill(any_settings, [leaky, plain])
    masked = {orjson.loads(line)["event_id"]: orjson.loads(line)
              for line in cat_lines(any_settings, masked=True)}
    text = masked["e-1"]["prompt"]["text"]
    assert "4111 1111 1111 1111" not in text and "ada.lovelace@proton.me" not in text
    assert "AKIA2E0A8F3B244C9986" not in text
    assert "*" in text and text.startswith("my card ")
    assert masked["e-2"] == plain
    assert orjson.dumps(leaky) in cat_lines(any_settings)  # the raw bytes are intact


# -- retention and legal hold -------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("", {}), ("90", {"*": 90}), ("llm.events=30, *=365", {"llm.events": 30, "*": 365}),
])
def test_parse_retention(text: str, expected: dict[str, int]) -> None:
    assert parse_retention(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("ninety", "'ninety' is not DAYS or TOPIC=DAYS"), ("llm.events=0", "days must be >= 1"),
])
def test_bad_retention(text: str, message: str) -> None:
    with pytest.raises(RetentionError, match=message):
        parse_retention(text)


def test_legal_hold_file(tmp_path: Path) -> None:
    path = tmp_path / "hold.txt"
    path.write_text("# case 42\ntrace:t-7\n\nuser: u-9\n")
    hold = load_legal_hold(str(path))
    assert hold.traces == {"t-7"} and hold.users == {"u-9"}
    path.write_text("trace:t-7\nsession:s-1\n")
    with pytest.raises(RetentionError, match=r"hold.txt:2: expected trace:<id> or user:<id>, "
                       "got 'session:s-1'"):
        load_legal_hold(str(path))
    missing = tmp_path / "absent.txt"  # named by --hold or by the setting: the message fits both
    with pytest.raises(RetentionError, match=f"^legal hold file {missing}: No such file or "
                       "directory$"):
        load_legal_hold(str(missing))


def test_prune_keeps_held_segments_and_verify_reports_it(any_settings: Settings,
                                                         tmp_path: Path) -> None:
    old = [event(i, trace=f"t-{i}", user=f"u-{i % 3}", minutes=i * 60) for i in range(6)]
    fill(any_settings, old, partitions=1, batch=1)  # one segment per hour, 2026-11-22
    hold = tmp_path / "hold.txt"
    hold.write_text("trace:t-1\nuser:u-2\n")  # events 1, 2 and 5
    out = io.StringIO()
    later = int(T0.timestamp() * 1000) + 3 * 86_400_000
    assert prune_command(any_settings, days=1, hold_file=str(hold), dry_run=False, out=out,
                         now_ms=later) == 0
    assert "deleted 3 segments (3 events) past retention; kept 3 segments under legal hold" \
        in out.getvalue()
    left = sorted(orjson.loads(line)["event_id"] for line in cat_lines(any_settings))
    assert left == ["e-1", "e-2", "e-5"]
    code, report = verify_out(any_settings)
    assert code == 0, report
    assert "pruned: " in report and "3 segments pruned (retention 1 days)" in report


def test_prune_needs_a_retention(any_settings: Settings) -> None:
    with pytest.raises(RetentionError, match="no retention: set LLMTRAIL_ARCHIVE_RETENTION"):
        prune_command(any_settings, days=None, hold_file=None, dry_run=True, out=io.StringIO())


@pytest.mark.parametrize(("days", "error"), [(0, "--days 0: days must be >= 1"),
                                             (-3, "--days -3: days must be >= 1"), (1, None)])
def test_prune_days_must_be_positive(tmp_path: Path, days: int, error: str | None) -> None:
    settings = Settings.from_env({}, data_dir=tmp_path)
    fill(settings, [event(0)])
    out = io.StringIO()
    later = int(T0.timestamp() * 1000) + 2 * 86_400_000  # the event is two days old
    if error is None:
        prune_command(settings, days=days, hold_file=None, dry_run=True, out=out, now_ms=later)
        assert out.getvalue().startswith("would delete 1 segments (1 events)")
        return
    with pytest.raises(RetentionError, match=f"^{error}$"):
        prune_command(settings, days=days, hold_file=None, dry_run=True, out=out, now_ms=later)
    assert out.getvalue() == ""


def test_prune_respects_retention_window(any_settings: Settings) -> None:
    fill(any_settings, [event(0)])
    out = io.StringIO()
    prune_command(any_settings.replace(archive_retention="llm.events=36500"), days=None,
                  hold_file=None, dry_run=False, out=out)
    assert "deleted 0 segments (0 events)" in out.getvalue()
    assert len(cat_lines(any_settings)) == 1


# -- erasure ------------------------------------------------------------------------------------

@pytest.mark.parametrize("encrypted", [False, True])
def test_erase_user_then_verify_passes_and_reports(any_settings: Settings,
                                                   encrypted: bool) -> None:
    settings = any_settings.replace(archive_key=Secret(KEY)) if encrypted else any_settings
    events = [event(i, user="u-gone" if i % 3 == 0 else "u-stays", minutes=i * 7)
              for i in range(30)]
    events.append(event(99, user="u-gone", minutes=300))  # alone in its hour: segment deleted
    fill(settings, events)
    out = io.StringIO()
    assert erase_command(settings, user="u-gone", reason="ticket 17", out=out) == 0
    assert "erased 11 events of user u-gone from " in out.getvalue()
    left = [orjson.loads(line) for line in cat_lines(settings)]
    assert len(left) == 20 and all(e["user"]["id"] == "u-stays" for e in left)
    assert b"u-gone" not in b"".join(open_backend(settings).get(k)
                                     for k in open_backend(settings).list("")
                                     if "_chain" in k)
    code, report = verify_out(settings)
    assert code == 0, report
    subject = subject_hash("u-gone", settings.fingerprint_salt.reveal().encode())
    assert f"events of subject {subject[:16]} erased from" in report
    assert "(ticket 17)" in report
    again = io.StringIO()
    erase_command(settings, user="u-gone", reason="again", out=again)
    assert again.getvalue() == "no archived events of user u-gone\n"


def test_erase_reaches_events_in_an_open_local_segment(tmp_path: Path) -> None:
    from pipeline.archive import open_store
    from tests.s3_helpers import records_of

    settings = Settings.from_env({}, data_dir=tmp_path)
    store = open_store(settings)  # a running worker's store: its segment stays open
    store.append(records_of([event(0, user="u-gone"), event(1), event(2, user="u-gone")],
                            partitions=1))
    erase_command(settings, user="u-gone", reason="r", out=io.StringIO())
    store.append(records_of([event(3, minutes=1)], partitions=1, first_offset=3))
    store.close()
    assert [orjson.loads(x)["event_id"] for x in cat_lines(settings)] == ["e-1", "e-3"]
    assert verify_out(settings)[0] == 0


def test_reader_time_window(any_settings: Settings) -> None:
    fill(any_settings, [event(i, minutes=i * 30) for i in range(6)])
    start = int(T0.timestamp() * 1000) + 3_600_000
    got = [r.event_id for r in open_reader(any_settings).iter(from_ms=start,
                                                               to_ms=start + 3_600_000)]
    assert sorted(got) == ["e-2", "e-3"]  # type: ignore[type-var]


def test_erase_respects_legal_holds(any_settings: Settings, tmp_path: Path) -> None:
    hold = tmp_path / "hold.txt"
    hold.write_text("trace:t-case\nuser:u-held\n")
    settings = any_settings.replace(archive_legal_hold_file=str(hold))
    fill(settings, [event(0, user="u-gone", trace="t-case"), event(1, user="u-gone"),
                    event(2, user="u-held")])
    out = io.StringIO()
    assert erase_command(settings, user="u-held", reason="r", out=out) == 1
    assert "user u-held is on legal hold" in out.getvalue()
    out = io.StringIO()
    assert erase_command(settings, user="u-gone", reason="r", out=out) == 0
    assert "erased 1 events of user u-gone" in out.getvalue()
    held = f"; kept 1 events of the user in traces on legal hold ({hold})\n"
    assert out.getvalue().endswith(held)  # the request is not fully met: say so
    assert sorted(orjson.loads(x)["event_id"] for x in cat_lines(settings)) == ["e-0", "e-2"]
    again = io.StringIO()
    assert erase_command(settings, user="u-gone", reason="r", out=again) == 0
    assert again.getvalue() == ("no archived events of user u-gone outside traces on legal hold"
                                + held)


@pytest.mark.parametrize(("salt", "warned"), [(None, True), ("per-deployment-salt", False)])
def test_erase_warns_when_the_subject_hmac_uses_the_default_salt(tmp_path: Path,
                                                                 salt: str | None,
                                                                 warned: bool) -> None:
    settings = Settings.from_env({}, data_dir=tmp_path)
    if salt is not None:
        settings = settings.replace(fingerprint_salt=Secret(salt))
    fill(settings, [event(0, user="u-gone")])
    err = io.StringIO()
    assert erase_command(settings, user="u-gone", reason="r", out=io.StringIO(), err=err) == 0
    assert err.getvalue() == ("llmtrail: warning: LLMTRAIL_FINGERPRINT_SALT is the default, so "
                              "anyone who reads the chain can test a user id against the "
                              "erasure's subject; set one per deployment\n" if warned else "")
