"""Registers the core's components. Registration only: nothing here imports torch."""

from __future__ import annotations

from omnimm.hookspecs import hookimpl
from omnimm.registry import Registries

_CONFIGS = "omnimm.builtin.configs"
_MODULES = "omnimm.builtin.modules"


@hookimpl
def omnimm_register(registries: Registries) -> None:
    registries.encoders.register_lazy(
        "omnimm/tiny-vit", f"{_MODULES}:TinyViT", config=f"{_CONFIGS}:TinyViTConfig", extra="torch"
    )
    registries.adapters.register_lazy(
        "omnimm/mlp", f"{_MODULES}:MLPProjector", config=f"{_CONFIGS}:MLPConfig", extra="torch"
    )
    registries.fusers.register_lazy(
        "omnimm/concat", f"{_MODULES}:ConcatFuser", config=f"{_CONFIGS}:ConcatConfig", extra="torch"
    )
    registries.models.register_lazy(
        "omnimm/multimodal-encoder",
        f"{_MODULES}:MultimodalEncoder",
        config=f"{_CONFIGS}:MultimodalEncoderConfig",
        extra="torch",
    )
