"""Registers valley's components and its demo command. Registration only: nothing heavy is imported here."""

from __future__ import annotations

from typing import Any

from omnimm.hookspecs import hookimpl
from omnimm.registry import Registries

_PACKAGE = "omnimm_plugins.valley"


@hookimpl
def omnimm_register(registries: Registries) -> None:
    registries.connectors.register_lazy(
        "valley/stpool", f"{_PACKAGE}.pooling:SpatioTemporalPool", config=f"{_PACKAGE}.configs:STPoolConfig"
    )
    registries.connectors.register_lazy(
        "valley/vcgpt-pool", f"{_PACKAGE}.pooling:VideoChatGPTPool", config=f"{_PACKAGE}.configs:VCGPTPoolConfig"
    )
    registries.templates.register_lazy(
        "valley/v0", "omnimm.llm.templates:LLAVA_V0", description="Valley's '###' Human/Assistant template."
    )
    registries.datasets.register_lazy(
        "valley/shapes", f"{_PACKAGE}.shapes:ShapesDataset", config=f"{_PACKAGE}.configs:ShapesDataConfig"
    )


@hookimpl
def omnimm_cli(app: Any) -> None:
    from omnimm.cli import demo_app
    from omnimm_plugins.valley.cli import demo_valley

    demo_app.command("valley")(demo_valley)
