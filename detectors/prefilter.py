"""Per-pattern Hyperscan prefilters: skip a regex run that cannot match, and
narrow the one that can to where its matches end.

The literal gates of :mod:`detectors.matcher` decide which regexes *may* match
a text from the literals it holds; for common words they pass often while the
regex then finds nothing (a sentence that says "send" and "to" is not an
exfiltration instruction). A Hyperscan database of one pattern compiled in
prefilter mode answers the same question from the whole pattern, in C, at
hundreds of MB/s: Hyperscan documents that a prefilter database reports a
superset of the pattern's matches (constructs it cannot run exactly, such as
look-arounds and back-references, are widened). So "no prefilter match" means
the ``regex`` run would find nothing too. And since Hyperscan reports every
offset where a match of the widened pattern ends, each real match ends at one
of the offsets reported: the engine runs the regex only in windows before them
(``match_ends``). Findings are the same with or without a prefilter; only the
time differs.

Compiling costs from milliseconds to about two seconds per pattern (Unicode
classes and bounded repeats), so databases are built by one background thread
per bank and cached on disk, keyed by the Hyperscan version, the flags and the
pattern source. Until a pattern's database is ready, ``match_ends`` says
"anywhere" and the regex runs as before. Texts where the ``regex`` package and Hyperscan
could disagree about a character class (combining marks, which ``regex``
counts as word characters; rare separators; case-insensitive letters outside
ASCII that fold into ASCII; lone surrogates) are never prefiltered.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import regex

log = logging.getLogger("llmtrail.detectors")

_hs: Any
try:  # Hyperscan is optional: x86-64 wheels only
    import hyperscan as _hs
except ImportError:  # pragma: no cover - depends on the platform
    _hs = None

# Characters on which Hyperscan's Unicode classes may be narrower than the
# regex package's: marks (\w in regex, not in Hyperscan), surrogates, C0
# separators and NEL (\s in regex), and non-ASCII letters that case-fold into
# ASCII letters (Kelvin sign, long s, dotted/dotless i, capital sharp s).
# (Lone surrogates cannot be encoded to UTF-8 at all and are caught there.)
_UNSAFE_POINTS = (0x85, 0x2028, 0x2029, 0x212A, 0x212B, 0x17F, 0x130, 0x131, 0x1E9E)
_UNSAFE_CLASS = r"[\p{M}\x1c-\x1f" + "".join(f"\\x{{{cp:X}}}" for cp in _UNSAFE_POINTS) + "]"
_UNSAFE = regex.compile(r"[\p{M}\x1c-\x1f" + "".join(f"\\u{cp:04X}" for cp in _UNSAFE_POINTS) + "]")


# The regex package's \uXXXX and \UXXXXXXXX escapes, which Hyperscan (PCRE syntax)
# spells \x{...}; an escaped backslash is consumed first so "\\u0041" stays as it is.
_PY_ESCAPE = regex.compile(r"\\\\|\\u([0-9A-Fa-f]{4})|\\U([0-9A-Fa-f]{8})")


def hyperscan_expression(source: str) -> bytes:
    """A rule regex as Hyperscan takes it: UTF-8, with Python-only escapes in PCRE syntax."""

    def pcre(match: regex.Match[str]) -> str:
        code = match.group(1) or match.group(2)
        return match.group() if code is None else f"\\x{{{int(code, 16):X}}}"

    pcre_source: str = _PY_ESCAPE.sub(pcre, source)
    return pcre_source.encode("utf-8")


def default_cache_dir() -> Path:
    """Where compiled prefilters are kept: $XDG_CACHE_HOME/llmtrail/hyperscan or ~/.cache/..."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmtrail" / "hyperscan"


def scannable(text: str) -> bytes | None:
    """The UTF-8 bytes a prefilter scans for ``text``, or None if it must not be prefiltered."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return None
    if _UNSAFE_DB is None:
        return None if _UNSAFE.search(text) else data
    unsafe = False

    def on_match(pattern_id: int, start: int, end: int, flags: int, context: Any) -> None:
        nonlocal unsafe
        unsafe = True

    _UNSAFE_DB.scan(data, match_event_handler=on_match, scratch=_unsafe_scratch())
    return None if unsafe else data


def _unsafe_scratch() -> Any:
    scratch = getattr(_UNSAFE_LOCAL, "scratch", None)
    if scratch is None:
        scratch = _UNSAFE_LOCAL.scratch = _hs.Scratch(_UNSAFE_DB)
    return scratch


class PrefilterBank:
    """Prefilter databases by pattern source, compiled in the background, cached on disk.

    Thread-safe. One bank is shared by every engine of a process (rule reloads
    keep the databases of unchanged patterns).
    """

    def __init__(self, cache_dir: Path | None = None) -> None:
        self._given_dir = cache_dir
        self._dbs: dict[str, Any] = {}  # source -> database, or None when Hyperscan refused it
        self._queued: set[str] = set()
        self._queue: queue.Queue[str] = queue.Queue()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._local = threading.local()
        self._disk_ok = True

    @property
    def cache_dir(self) -> Path:
        """Where databases are kept: as given, else :func:`default_cache_dir` (read when used)."""
        return self._given_dir or default_cache_dir()

    @staticmethod
    def available() -> bool:
        return _hs is not None

    def prepare(self, sources: Iterable[str]) -> None:
        """Queue the patterns' databases for building (no-op without Hyperscan)."""
        if _hs is None:
            return
        with self._lock:
            for source in sources:
                if source not in self._dbs and source not in self._queued:
                    self._queued.add(source)
                    self._queue.put(source)
            if self._queued and self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="llmtrail-prefilter", daemon=True
                )
                self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every queued database is built; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._queued, timeout)

    def ready(self, source: str) -> bool:
        return self._dbs.get(source) is not None

    def match_ends(self, source: str, data: bytes, limit: int) -> list[int] | None:
        """Byte offsets in ``data`` where a match of the pattern may end, ascending.

        Hyperscan reports every offset where a match of the (widened) pattern
        ends, so each match of the real pattern ends at one of them. An empty
        list means the pattern provably has no match (see :func:`scannable`);
        None means it may end anywhere: no database for it, or more than
        ``limit`` ends (the scan stops there).
        """
        db = self._dbs.get(source)
        if db is None:
            return None
        scratches: dict[int, Any] | None = getattr(self._local, "scratches", None)
        if scratches is None:
            scratches = self._local.scratches = {}
        scratch = scratches.get(id(db))
        if scratch is None:
            scratch = scratches[id(db)] = _hs.Scratch(db)
        ends: list[int] = []

        def on_match(pattern_id: int, start: int, end: int, flags: int, context: Any) -> bool:
            ends.append(end)
            return len(ends) > limit  # True stops the scan

        try:
            db.scan(data, match_event_handler=on_match, scratch=scratch)
        except _hs.ScanTerminated:
            return None
        ends.sort()
        return ends

    # ------------------------------------------------------------ building

    def _work(self) -> None:
        while True:
            source = self._queue.get()
            try:
                db = self._load_or_compile(source)
            except Exception:  # a prefilter is an optimisation: never let it stop the engine
                log.exception(
                    "cannot build a Hyperscan prefilter for %r; the regex runs always", source[:80]
                )
                db = None
            with self._idle:
                self._dbs[source] = db
                self._queued.discard(source)
                if not self._queued:
                    self._idle.notify_all()

    def cached(self, material: str, build: Callable[[], Any]) -> Any:
        """The database ``build`` makes, kept on disk under a digest of ``material``."""
        key = f"{_hs.__version__}|{material}".encode("utf-8", "surrogatepass")
        path = self.cache_dir / f"{hashlib.sha256(key).hexdigest()}.hsdb"
        try:
            return _hs.loadb(path.read_bytes(), _hs.HS_MODE_BLOCK)
        except (OSError, _hs.error):
            pass
        db = build()
        self._store(path, _hs.dumpb(db))
        return db

    def _load_or_compile(self, source: str) -> Any:
        def build() -> Any:
            db = _hs.Database()
            expression = hyperscan_expression(source)
            db.compile(expressions=[expression], ids=[0], elements=1, flags=[_FLAGS])
            return db

        try:
            return self.cached(f"prefilter|{_FLAGS}|{source}", build)
        except (_hs.error, UnicodeEncodeError):  # syntax Hyperscan does not know: no prefilter
            return None

    def _store(self, path: Path, data: bytes) -> None:
        if not self._disk_ok:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_bytes(data)
            temporary.replace(path)
        except OSError as exc:
            self._disk_ok = False
            log.warning(
                "cannot cache Hyperscan prefilters in %s (%s); they are rebuilt at each start",
                self.cache_dir,
                exc,
            )


_FLAGS = (_hs.HS_FLAG_UTF8 | _hs.HS_FLAG_UCP | _hs.HS_FLAG_PREFILTER) if _hs is not None else 0

SHARED = PrefilterBank()


def _unsafe_database() -> Any:
    if _hs is None:
        return None
    db = _hs.Database()
    db.compile(
        expressions=[_UNSAFE_CLASS.encode("ascii")],
        ids=[0],
        elements=1,
        flags=[_hs.HS_FLAG_UTF8 | _hs.HS_FLAG_UCP | _hs.HS_FLAG_SINGLEMATCH],
    )
    return db


# The same character test in Hyperscan: the regex package searches a class of
# marks at a few MB/s, Hyperscan at memory speed.
_UNSAFE_DB = _unsafe_database()
_UNSAFE_LOCAL = threading.local()
