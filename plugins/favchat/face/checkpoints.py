"""Reading checkpoints safely (safetensors, or torch files with `weights_only=True`) and loading them strictly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn


class CheckpointKeysError(ValueError):
    """A checkpoint's keys do not match the architecture; `missing` and `unexpected` list them."""

    def __init__(self, what: str, missing: list[str], unexpected: list[str]) -> None:
        super().__init__(
            f"{what}: the checkpoint does not match the architecture: {len(missing)} missing key(s): "
            f"{_show(missing)}; {len(unexpected)} unexpected key(s): {_show(unexpected)}"
        )
        self.missing = missing
        self.unexpected = unexpected


def _show(keys: list[str], limit: int = 8) -> str:
    if not keys:
        return "none"
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file, or of a torch checkpoint read with `weights_only=True` (never plain pickle).

    A torch checkpoint may hold the state dict itself or wrap it as `{"state_dict": ...}` / `{"model": ...}`; a
    `module.` prefix (from DataParallel) is removed.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint not found: {file}")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: object = load_file(file)
    else:
        state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            inner = state.get(key)
            if isinstance(inner, Mapping) and all(isinstance(v, torch.Tensor) for v in inner.values()):
                state = inner
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{file}: not a state dict (a mapping of names to tensors)")
    prefix = "module."
    if state and all(str(k).startswith(prefix) for k in state):
        state = {str(k)[len(prefix) :]: v for k, v in state.items()}
    return {str(k): v for k, v in state.items()}


def load_checked(
    module: nn.Module, state: Mapping[str, torch.Tensor], what: str, *, optional: tuple[str, ...] = ()
) -> None:
    """`load_state_dict(strict=True)` after one check that raises `CheckpointKeysError` naming every missing and
    unexpected key; keys ending in one of `optional` (e.g. `num_batches_tracked`) may be absent."""
    expected = module.state_dict()
    missing = sorted(k for k in expected if k not in state and not k.endswith(optional or ("\0",)))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointKeysError(what, missing, unexpected)
    wrong = [
        f"{k} {list(state[k].shape)} (model: {list(expected[k].shape)})"
        for k in state
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if wrong:
        raise ValueError(f"{what}: tensors of the wrong shape: {_show(wrong)}")
    full = {**{k: v for k, v in expected.items() if k not in state}, **state}
    module.load_state_dict(full, strict=True)
