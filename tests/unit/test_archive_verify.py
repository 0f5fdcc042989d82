"""archive verify: manifests, the hash chain and signatures, on the local dir and on S3.

Each way of tampering with the archive is done through the backend (the file system or the S3
API) and must be reported with the segment or entry and what is wrong, with exit status 1.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from pipeline.archive.backend import Backend
from pipeline.archive.chain import Chain, canonical, entry_key
from pipeline.archive.config import open_backend
from pipeline.archive.layout import parse_segment_key
from pipeline.cli_archive import UsageError, verify_command
from pipeline.settings import Secret, Settings
from tests.s3_helpers import T0, TOPIC, event, fill

REPO = Path(__file__).resolve().parents[2]
EVENTS = [event(i, trace=f"t-{i % 5}", minutes=i * 6) for i in range(40)]  # 4 hours


def run_verify(settings: Settings, **window: int | None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = verify_command(settings, from_ms=window.get("from_ms"), to_ms=window.get("to_ms"),
                          out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def segment_keys(backend: Backend, partition: int = 0) -> list[str]:
    keys = [k for k in backend.list(f"{TOPIC}/") if parse_segment_key(k) is not None]
    return sorted((k for k in keys if f"/p{partition}-" in k),
                  key=lambda k: parse_segment_key(k).first_offset)  # type: ignore[union-attr]


@pytest.fixture
def archived(any_settings: Settings) -> tuple[Settings, Backend]:
    fill(any_settings, EVENTS)
    return any_settings, open_backend(any_settings)


def test_intact_archive_is_ok_with_counts(archived: tuple[Settings, Backend]) -> None:
    settings, _ = archived
    code, out, _ = run_verify(settings)
    assert code == 0
    assert out.startswith("OK: 2 partitions, ")
    assert "(40 events) hashed" in out
    assert "BROKEN" not in out


def test_time_window_hashes_only_its_segments(archived: tuple[Settings, Backend]) -> None:
    settings, _ = archived
    start = int(T0.timestamp() * 1000)
    code, out, _ = run_verify(settings, from_ms=start, to_ms=start + 3_600_000)
    assert code == 0
    assert "(10 events) hashed" in out  # the first hour: events 0..9


def _flip_byte(backend: Backend, key: str) -> None:
    data = bytearray(backend.get(key))
    data[len(data) // 2] ^= 0x01
    backend.put(key, bytes(data))


def _swap(backend: Backend, first: str, second: str) -> None:
    a, b = backend.get(first), backend.get(second)
    backend.put(first, b)
    backend.put(second, a)


TAMPER: list[tuple[str, Callable[[Backend, list[str]], None], list[str]]] = [
    ("corrupt-byte", lambda b, k: _flip_byte(b, k[1]),
     ["{1}: SHA-256 does not match its manifest (bytes altered)"]),
    ("delete-segment", lambda b, k: b.delete(k[1]),
     ["{1}: missing: the chain holds its manifest (5 events, offsets 5..9)"]),
    ("swap-segments", lambda b, k: _swap(b, k[0], k[2]),
     ["{0}: size", "it holds the bytes of segment {k2} (segments swapped or copied)",
      "{2}: size", "it holds the bytes of segment {k0} (segments swapped or copied)"]),
    ("truncate", lambda b, k: b.put(k[1], b.get(k[1])[:-7]),
     ["{1}: size", "manifest says", "(truncated)"]),
    ("insert-segment", lambda b, k: b.put(k[1].replace("-00000000000000000005",
                                                        "-00000000000000000099"), b.get(k[1])),
     ["p0-00000000000000000099.seg: not in any manifest chain (5 events; sealed: inserted"]),
]


@pytest.mark.parametrize(("how", "tamper", "expected"), TAMPER, ids=[t[0] for t in TAMPER])
def test_tampering_with_segments_is_reported(archived: tuple[Settings, Backend], how: str,
                                             tamper: Callable[[Backend, list[str]], None],
                                             expected: list[str]) -> None:
    settings, backend = archived
    keys = segment_keys(backend)
    assert len(keys) >= 3
    tamper(backend, keys)
    code, out, _ = run_verify(settings)
    assert code == 1
    names = [backend.describe(k) for k in keys]
    for line in expected:
        text = line.format(*names, k0=keys[0], k2=keys[2])
        assert f"BROKEN {text}" in out or text in out, f"{text!r} not in:\n{out}"
    assert "FAILED: " in out and "OK:" not in out


def test_a_swap_is_named_as_such_not_guessed_at(archived: tuple[Settings, Backend]) -> None:
    settings, backend = archived
    keys = segment_keys(backend)
    sizes = [len(backend.get(k)) for k in keys]
    assert sizes[0] != sizes[2]
    _swap(backend, keys[0], keys[2])
    broken = [line for line in run_verify(settings)[1].splitlines() if line.startswith("BROKEN")]
    assert broken == [
        f"BROKEN {backend.describe(keys[0])}: size {sizes[2]} bytes, its manifest says "
        f"{sizes[0]}; it holds the bytes of segment {keys[2]} (segments swapped or copied)",
        f"BROKEN {backend.describe(keys[2])}: size {sizes[0]} bytes, its manifest says "
        f"{sizes[2]}; it holds the bytes of segment {keys[0]} (segments swapped or copied)",
    ]


def _entry(backend: Backend, seq: int) -> str:
    return entry_key(TOPIC, 0, seq)


def _rewrite_entry(backend: Backend, seq: int, **changes: object) -> None:
    key = _entry(backend, seq)
    body = orjson.loads(backend.get(key))
    body.update(changes)
    backend.put(key, canonical(body))


CHAIN_TAMPER: list[tuple[str, Callable[[Backend], None], str]] = [
    ("delete-entry", lambda b: b.delete(_entry(b, 1)),
     "chain entry 1 of llm.events[0] is missing (deleted?)"),
    ("alter-entry", lambda b: _rewrite_entry(b, 1, count=4),
     "broken link: prev hash"),
    ("swap-entries", lambda b: _swap(b, _entry(b, 1), _entry(b, 2)),
     "entry says llm.events[0] seq 2: moved from another place"),
    ("unreadable-entry", lambda b: b.put(_entry(b, 2), b"{not json"),
     "chain entry 2 of llm.events[0] is unreadable: not JSON"),
]


@pytest.mark.parametrize(("how", "tamper", "expected"), CHAIN_TAMPER,
                         ids=[t[0] for t in CHAIN_TAMPER])
def test_tampering_with_the_chain_is_reported(archived: tuple[Settings, Backend], how: str,
                                              tamper: Callable[[Backend], None],
                                              expected: str) -> None:
    settings, backend = archived
    tamper(backend)
    code, out, _ = run_verify(settings)
    assert code == 1
    assert expected in out, out


def test_segments_out_of_order_in_the_chain(archived: tuple[Settings, Backend]) -> None:
    settings, backend = archived
    signer = Chain(backend)
    head = signer.head(TOPIC, 0)
    assert head is not None
    first = orjson.loads(backend.get(_entry(backend, 0)))
    fields = {k: v for k, v in first.items()
              if k not in {"format", "kind", "topic", "partition", "seq", "prev", "watermark",
                           "at"}}
    signer.try_append(TOPIC, 0, "segment", fields, head=head, watermark=head.watermark)
    code, out, _ = run_verify(settings)
    assert code == 1
    assert "starts at offset 0, not after 19 (segments out of order)" in out


@pytest.mark.parametrize(("writer_key", "reader_key", "expected", "code"), [
    ("k1", "k1", "signatures checked", 0),
    ("k1", "k2", "signature does not match (entry altered, or signed with another key)", 1),
    ("", "k2", "unsigned entry (a signing key is set)", 1),
    ("k1", "", "entries are signed; set LLMTRAIL_ARCHIVE_SIGNING_KEY to check the signatures",
     0),
])
def test_signatures(any_settings: Settings, writer_key: str, reader_key: str, expected: str,
                    code: int) -> None:
    fill(any_settings.replace(archive_signing_key=Secret(writer_key)), EVENTS[:10])
    got, out, err = run_verify(any_settings.replace(archive_signing_key=Secret(reader_key)))
    assert got == code
    assert expected in out + err


def test_window_arguments_are_checked() -> None:
    from pipeline.cli_archive import parse_time

    assert parse_time("2026-11-22T14:00Z") == int(T0.timestamp() * 1000)
    assert parse_time("2026-11-22T14:00") == int(T0.timestamp() * 1000)
    assert parse_time("6h", now=T0) == int((T0 - timedelta(hours=6)).timestamp() * 1000)
    with pytest.raises(UsageError, match="'yesterday' is not a time"):
        parse_time("yesterday")


def _cli(settings: Settings, *argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(REPO), **extra}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "archive", *argv], env=env,
                          capture_output=True, text=True, timeout=120, check=False, cwd=REPO)


def test_the_command_as_a_user_runs_it(tmp_path: Path) -> None:
    settings = Settings.from_env({}, data_dir=tmp_path)
    fill(settings, EVENTS)
    ok = _cli(settings, "verify")
    assert (ok.returncode, ok.stdout.splitlines()[-1][:3]) == (0, "OK:")
    backend = open_backend(settings)
    _flip_byte(backend, segment_keys(backend)[0])
    broken = _cli(settings, "verify")
    assert broken.returncode == 1
    assert "SHA-256 does not match its manifest (bytes altered)" in broken.stdout
    bad = _cli(settings, "verify", LLMTRAIL_ARCHIVE_BACKEND="s3")
    assert bad.returncode == 2
    assert ("llmtrail: configuration error: LLMTRAIL_ARCHIVE_BACKEND=s3 needs "
            "LLMTRAIL_ARCHIVE_S3_BUCKET") in bad.stderr
    bad_key = _cli(settings, "cat", LLMTRAIL_ARCHIVE_KEY="c2hvcnQ=")
    assert bad_key.returncode == 2
    assert "LLMTRAIL_ARCHIVE_KEY: expected a 32-byte key as base64 or hex" in bad_key.stderr
    window = _cli(settings, "verify", "--from", "tomorrow")
    assert window.returncode == 2 and "'tomorrow' is not a time" in window.stderr


def test_deep_verify_decodes_what_a_hash_cannot_judge(any_settings: Settings) -> None:
    key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
    settings = any_settings.replace(archive_key=Secret(key))
    fill(settings, EVENTS)
    out = io.StringIO()
    assert verify_command(settings, from_ms=None, to_ms=None, out=out, err=io.StringIO(),
                          deep=True) == 0
    assert "(40 events) hashed and decoded" in out.getvalue()
    backend = open_backend(settings)
    envelope = backend.list("_keys/")[0]
    backend.put(envelope, backend.get(envelope).replace(b'"wrapped":"', b'"wrapped":"AAAA'))
    out = io.StringIO()
    assert verify_command(settings, from_ms=None, to_ms=None, out=out, err=io.StringIO(),
                          deep=True) == 1
    assert "hash matches but the content does not decode: " in out.getvalue()
    assert verify_command(settings, from_ms=None, to_ms=None, out=io.StringIO(),
                          err=io.StringIO()) == 0  # the segments themselves are intact


def test_an_anchor_finds_newest_entries_cut_off(archived: tuple[Settings, Backend],
                                                tmp_path: Path) -> None:
    settings, backend = archived
    anchor = tmp_path / "heads.json"
    out, err = io.StringIO(), io.StringIO()
    assert verify_command(settings, from_ms=None, to_ms=None, out=out, err=err,
                          anchor=anchor) == 0
    assert f"anchor: chain heads written to {anchor}" in err.getvalue()
    heads = orjson.loads(anchor.read_bytes())
    newest = heads[f"{TOPIC}/0"]["seq"]
    backend.delete(segment_keys(backend)[-1])  # the newest segment and its entry: the chain
    backend.delete(_entry(backend, newest))  # that is left is valid on its own
    assert run_verify(settings)[0] == 0
    out = io.StringIO()
    assert verify_command(settings, from_ms=None, to_ms=None, out=out, err=io.StringIO(),
                          anchor=anchor) == 1
    assert (f"the anchor holds entry {newest} of {TOPIC}[0], the chain ends at entry "
            f"{newest - 1} (newest entries cut off)") in out.getvalue()
    assert orjson.loads(anchor.read_bytes()) == heads  # a failed run keeps the old anchor


def test_an_anchor_finds_a_rewritten_chain(archived: tuple[Settings, Backend],
                                           tmp_path: Path) -> None:
    settings, backend = archived
    anchor = tmp_path / "heads.json"
    verify_command(settings, from_ms=None, to_ms=None, out=io.StringIO(), err=io.StringIO(),
                   anchor=anchor)
    newest = orjson.loads(anchor.read_bytes())[f"{TOPIC}/0"]["seq"]
    _rewrite_entry(backend, newest, at="2030-01-01T00:00:00.000Z")
    out = io.StringIO()
    assert verify_command(settings, from_ms=None, to_ms=None, out=out, err=io.StringIO(),
                          anchor=anchor) == 1
    assert f"entry {newest} of {TOPIC}[0] is not the one the anchor recorded" in out.getvalue()
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(UsageError, match="expected the JSON object verify writes there"):
        verify_command(settings, from_ms=None, to_ms=None, out=out, err=out, anchor=bad)


def _handle(settings: Settings, *argv: str) -> int:
    """One archive command parsed as the CLI parses it, run on ``settings``."""
    from pipeline.cli import build_parser

    args = build_parser().parse_args(argv)
    code: int = args.handler(args, settings)
    return code


ARCHIVE_COMMANDS = [("archive", "verify"), ("archive", "cat"), ("archive", "query", "SELECT 1"),
                    ("archive", "prune", "--days", "1"), ("archive", "erase", "--user", "u-1"),
                    ("backtest", "--rules", str(REPO / "rules"))]


@pytest.mark.parametrize("argv", ARCHIVE_COMMANDS)
@pytest.mark.parametrize(("run_dir", "hint"), [
    (True, "`llmtrail up` and `demo` archive each run under DATA_DIR/runs/<time>/: use "
           "--data-dir {data}/latest"),
    (False, "point --data-dir (LLMTRAIL_DATA_DIR) at the workers' data directory"),
])
def test_a_data_dir_without_an_archive_is_an_error_not_an_empty_archive(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...],
        run_dir: bool, hint: str) -> None:
    data = tmp_path / "data"
    if run_dir:  # what `llmtrail up --data-dir data` leaves: data/latest -> runs/<time>
        fill(Settings.from_env({}, data_dir=data / "runs" / "r1"), EVENTS[:2])
        (data / "latest").symlink_to(Path("runs") / "r1")
    assert _handle(Settings.from_env({}, data_dir=data), *argv) == 2
    assert capsys.readouterr().err == (f"llmtrail: no archive at {data / 'archive'}; "
                                       f"{hint.format(data=data)}\n")


def test_an_existing_empty_archive_directory_is_verified(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    (tmp_path / "archive").mkdir()
    assert _handle(Settings.from_env({}, data_dir=tmp_path), "archive", "verify") == 0
    out, err = capsys.readouterr()
    assert out.startswith("OK: 0 partitions")
    assert err == (f"note: nothing is archived at {tmp_path / 'archive'}: check the data "
                   "directory or the bucket and prefix\n")
    fill(Settings.from_env({}, data_dir=tmp_path), EVENTS[:2])
    assert _handle(Settings.from_env({}, data_dir=tmp_path), "archive", "verify") == 0
    assert "nothing is archived" not in capsys.readouterr().err


@pytest.mark.parametrize("argv", [("cat",), ("query", "SELECT raw FROM events",
                                              "--format", "jsonl")])
def test_a_reader_that_stops_early_is_not_an_error(tmp_path: Path, argv: tuple[str, ...]) -> None:
    settings = Settings.from_env({}, data_dir=tmp_path)
    fill(settings, [event(i, text="x" * 400) for i in range(400)], batch=100)  # > a pipe buffer
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(REPO)}
    with subprocess.Popen([sys.executable, "-m", "pipeline.cli", "archive", *argv], env=env,
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as head:
        assert head.stdout is not None and head.stderr is not None
        assert head.stdout.readline().startswith(b"{")
        head.stdout.close()  # what `| head -1` does
        err = head.stderr.read().decode()
        assert head.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_verify_lists_the_bytes_a_restart_cut_off(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings.from_env({}, data_dir=tmp_path)
    fill(settings, EVENTS[:2])
    segment = sorted((tmp_path / "archive").rglob("*.seg"))[0]
    kept = segment.with_name(f"{segment.name}.torn-512")
    kept.write_bytes(b"LTAB")  # what the store keeps when it cuts a torn or damaged tail off
    assert _handle(settings, "archive", "verify") == 0
    assert capsys.readouterr().err == (
        f"note: {kept} holds bytes cut off a segment's end at a restart: a write that crashed, "
        "or damage to a block already acknowledged (docs/archive.md)\n")
