"""build_engine: one engine for the worker, scan and backtest, configured by settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from detectors import load_rules
from pipeline.detection import build_engine, load_classifier
from pipeline.settings import Secret, Settings, SettingsError

GOLDEN = Path(__file__).parent / "fixtures" / "rules" / "golden"


def test_classifier_follows_the_ml_setting() -> None:
    assert load_classifier(Settings.from_env({"LLMTRAIL_ML": "false"})) is None
    assert load_classifier(Settings.from_env({})) is not None


def test_a_missing_model_is_a_settings_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npz"
    with pytest.raises(SettingsError) as caught:
        load_classifier(Settings.from_env({"LLMTRAIL_ML_MODEL": str(missing)}))
    message = str(caught.value)
    assert message.startswith("LLMTRAIL_ML_MODEL: ")
    assert str(missing) in message and "LLMTRAIL_ML=false" in message


@pytest.mark.parametrize(("choice", "hyperscan"), [("python", False), ("auto", None)])
def test_engine_path_and_salt(choice: str, hyperscan: bool | None) -> None:
    settings = Settings.from_env({"LLMTRAIL_FINGERPRINT_SALT": "pepper"})
    engine = build_engine(load_rules([GOLDEN]), settings, choice, ml=False)
    expected = settings.engine_hyperscan if hyperscan is None else hyperscan
    assert engine.uses_hyperscan is expected
    salted = settings.replace(fingerprint_salt=Secret("other"))
    other = build_engine(load_rules([GOLDEN]), salted, choice, ml=False)
    event = {"event_id": "e", "trace_id": "t", "ts": "2026-01-01T00:00:00Z", "kind": "response",
             "response": {"text": "the key is AKIAABCDEFGHIJKLMNOP ok"}}
    prints = [[e.fingerprint for f in eng.scan(event) for e in f.evidence]
              for eng in (engine, other)]
    assert all(prints[0]) and prints[0]  # the key is found and fingerprinted
    assert prints[0] != prints[1]  # with the salt from the settings
