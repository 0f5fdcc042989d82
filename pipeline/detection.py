"""The one way llmtrail builds its detection engine from settings.

The worker, ``llmtrail scan``, ``llmtrail backtest`` and the archive's analyst
view all call :func:`build_engine`, so an offline run sees what the stream sees:
the same salt, the same scanning path and the same classifier.
"""

from __future__ import annotations

from typing import Any

from detectors import Engine, RuleSet
from detectors.ml import Classifier, ModelError
from pipeline.settings import Settings, SettingsError

ENGINE_CHOICES = ("auto", "hyperscan", "python")


def load_classifier(settings: Settings) -> Classifier | None:
    """The ML model named by the settings, or None when LLMTRAIL_ML is off."""
    if not settings.ml:
        return None
    try:
        return Classifier.load(settings.ml_model)
    except ModelError as exc:
        raise SettingsError(f"LLMTRAIL_ML_MODEL: {exc} (or set LLMTRAIL_ML=false)") from None


def build_engine(
    ruleset: RuleSet,
    settings: Settings,
    choice: str = "auto",
    *,
    ml: bool = True,
    **options: Any,
) -> Engine:
    """An engine over ``ruleset``; ``choice`` picks the scanning path ("auto" follows
    LLMTRAIL_ENGINE_HYPERSCAN); ``ml=False`` leaves the classifier out even when it is on."""
    use_hyperscan = {"auto": settings.engine_hyperscan, "hyperscan": True, "python": False}[choice]
    try:
        return Engine(
            ruleset,
            salt=settings.fingerprint_salt.reveal().encode(),
            use_hyperscan=use_hyperscan,
            classifier=load_classifier(settings) if ml else None,
            **options,
        )
    except ValueError as exc:  # a rule with an 'ml' condition and the classifier off
        raise SettingsError(str(exc)) from None
