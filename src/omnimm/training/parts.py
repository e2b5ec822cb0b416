"""A model's named parts, chosen by pattern: what a stage trains and what gradient checkpointing wraps."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

__all__ = ["resolve_parts", "set_trainable"]


def resolve_parts(model: Any, patterns: Sequence[str]) -> list[str]:
    """Part names matching the patterns (wildcards allowed), in the model's order."""
    parts = list(model.parts())
    return [part for part in parts if any(fnmatch.fnmatch(part, pattern) for pattern in patterns)]


def set_trainable(model: Any, patterns: Sequence[str]) -> list[str]:
    """Make exactly the parameters of the matching parts trainable (with LoRA on the LLM, only its adapters).

    Returns the names of the trainable parameters.
    """
    model.requires_grad_(False)
    named = model.parts()
    lora = bool(getattr(model, "has_lora", False))
    for part in resolve_parts(model, patterns):
        module = named[part]
        if part == "llm" and lora:
            for name, parameter in module.named_parameters():
                parameter.requires_grad_("lora_" in name)
        else:
            module.requires_grad_(True)
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]
