"""Registers simct's gate and its command line. Registration only."""

from __future__ import annotations

from typing import Any

from omnimm.hookspecs import hookimpl
from omnimm.registry import Registries


@hookimpl
def omnimm_register(registries: Registries) -> None:
    registries.evaluators.register_lazy(
        "simct/gate", "omnimm_plugins.simct.gate:ConsistencyGate", config="omnimm_plugins.simct.configs:GateConfig"
    )


@hookimpl
def omnimm_cli(app: Any) -> None:
    from omnimm_plugins.simct.cli import simct_app

    app.add_typer(simct_app, name="simct")
