"""Registers recse's reshape view, contrastive model, STS evaluators and commands. Registration only."""

from __future__ import annotations

from typing import Any

from omnimm.hookspecs import hookimpl
from omnimm.registry import Registries

_CONFIGS = "omnimm_plugins.recse.configs"


@hookimpl
def omnimm_register(registries: Registries) -> None:
    registries.adapters.register_lazy(
        "recse/reshape",
        "omnimm_plugins.recse.reshape:ReshapeView",
        config=f"{_CONFIGS}:ReshapeConfig",
        extra="recse",
        description="Token features -> token-interaction matrix -> a second view of the sentence (CNN or aggregate).",
    )
    registries.models.register_lazy(
        "recse/contrastive",
        "omnimm_plugins.recse.model:ContrastiveModel",
        config=f"{_CONFIGS}:ContrastiveConfig",
        extra="recse",
        description="A sentence encoder trained with SimCSE or word repetition, optionally plus the reshaped view.",
    )
    registries.evaluators.register_lazy(
        "recse/stsb",
        "omnimm_plugins.recse.evaluate:STSBEvaluator",
        config=f"{_CONFIGS}:STSBEvaluatorConfig",
        extra="recse",
    )
    registries.evaluators.register_lazy(
        "recse/sts-csv",
        "omnimm_plugins.recse.evaluate:STSCSVEvaluator",
        config=f"{_CONFIGS}:STSCSVEvaluatorConfig",
        extra="recse",
    )


@hookimpl
def omnimm_cli(app: Any) -> None:
    from omnimm_plugins.recse.cli import encode_command, recse_app

    app.add_typer(recse_app, name="recse")
    app.command("encode")(encode_command)
