"""Registers haruhi's memory store, its retrieval evaluator and its commands. Registration only."""

from __future__ import annotations

from typing import Any

from omnimm.hookspecs import hookimpl
from omnimm.registry import Registries


@hookimpl
def omnimm_register(registries: Registries) -> None:
    registries.memories.register_lazy(
        "haruhi/memory",
        "omnimm_plugins.haruhi.store:FaissMemory",
        config="omnimm_plugins.haruhi.configs:MemoryStoreConfig",
        extra="haruhi",
        description="faiss index (flat, IVF or HNSW) of unit vectors with texts; atomic saves, checked loads.",
    )


@hookimpl
def omnimm_cli(app: Any) -> None:
    from omnimm.cli import demo_app
    from omnimm_plugins.haruhi.cli import demo_haruhi, haruhi_app

    app.add_typer(haruhi_app, name="haruhi")
    demo_app.command("haruhi")(demo_haruhi)


@hookimpl
def omnimm_serve_modes(modes: dict[str, Any]) -> None:
    modes["character"] = "omnimm_plugins.haruhi.serve:character_backend"
