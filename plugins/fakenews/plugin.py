"""Registers fakenews' detectors (a registry of its own), its evaluator and its command. Registration only."""

from __future__ import annotations

from typing import Any

from omnimm.hookspecs import hookimpl
from omnimm.registry import Registries

_CONFIGS = "omnimm_plugins.fakenews.configs"


@hookimpl
def omnimm_register(registries: Registries) -> None:
    detectors = registries.new("detector", description="Classifiers of text as real or fake: fit, predict_proba.")
    detectors.register_lazy(
        "fakenews/embedding",
        "omnimm_plugins.fakenews.detectors:EmbeddingDetector",
        config=f"{_CONFIGS}:EmbeddingDetectorConfig",
        extra="fakenews",
    )
    detectors.register_lazy(
        "fakenews/char-ngram",
        "omnimm_plugins.fakenews.detectors:CharNgramDetector",
        config=f"{_CONFIGS}:CharNgramDetectorConfig",
        extra="fakenews",
    )
    detectors.register_lazy(
        "fakenews/transformer",
        "omnimm_plugins.fakenews.detectors:TransformerDetector",
        config=f"{_CONFIGS}:TransformerDetectorConfig",
        extra="fakenews",
    )
    registries.evaluators.register_lazy(
        "fakenews/subclass-accuracy",
        "omnimm_plugins.fakenews.evaluate:SubclassAccuracy",
        config=f"{_CONFIGS}:SubclassAccuracyConfig",
        extra="fakenews",
    )


@hookimpl
def omnimm_cli(app: Any) -> None:
    from omnimm_plugins.fakenews.cli import fakenews_app

    app.add_typer(fakenews_app, name="fakenews")
