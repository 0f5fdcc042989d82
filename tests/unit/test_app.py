"""Worker glue without a broker: the raw-bytes schema, and the collector tuning."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import pytest

from pipeline.app import GC_THRESHOLDS, RawSchema, tune_gc


@pytest.mark.parametrize(("key", "value"), [
    (b"t-1", b'{"event_id": "e-1"}'),
    (None, b"\xff\xfe not even UTF-8"),
    (b"t-2", None),
    (b"", b""),
])
def test_raw_schema_gives_the_delivered_bytes(key: bytes | None, value: bytes | None) -> None:
    message = SimpleNamespace(key=key, value=value)
    schema = RawSchema()
    assert schema.loads_key(None, message) is key
    assert schema.loads_value(None, message) is value


def test_start_up_objects_are_frozen_and_the_collector_runs_less() -> None:
    before = gc.get_threshold()
    built_at_start = [{"rule": "pi-1"}]
    try:
        assert any(o is built_at_start for o in gc.get_objects())
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > before[0]
        assert not any(o is built_at_start for o in gc.get_objects())  # never walked again
        made_later = [{"rule": "pi-2"}]
        assert any(o is made_later for o in gc.get_objects())  # still collected when cyclic
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
