"""A disk cache of what frozen encoders give for each clip, so that stage-1 training (only the connector learns)
runs each encoder once per video instead of once per epoch.

One safetensors file per clip and encoder setting: `<folder>/<encoder>-<setting>/<clip>.safetensors`, holding the
encoder's token groups `[T, n, d]` (and its frame mask). `<clip>` is the SHA-256 of the exact frames tensor the
encoder receives (after sampling and preprocessing), `<setting>` the SHA-256 of everything else that changes the
output: the encoder's config JSON, the frame sampling, a fingerprint of its weights and buffers, the source file of
its class, the torch version, the device type, train/eval mode and autocast. Change any of them and the cache
misses; nothing stale is ever read. Each setting folder holds `key.json`, listing what its digest covers.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from torch import nn

from omnimm.deps import require
from omnimm.files import atomic_write_bytes, atomic_write_text, file_fingerprint, safetensors_problem
from omnimm.videollm.groups import MASK, TokenGroup

log = logging.getLogger("omnimm.videollm.feature_cache")

CACHE_FORMAT = 1
"""Bumped when the layout or the file contents change: older caches then miss instead of being misread."""
KEY_FILE = "key.json"
SUFFIX = ".safetensors"

Output = tuple[dict[str, torch.Tensor], torch.Tensor | None]
"""An encoder's output over the concatenated frames of some clips: `{group: [sum T, n, d]}` and a `[sum T]` mask."""


class FeatureCache:
    """Cached outputs of frozen encoders in `folder` (created on first write).

    `encode(...)` returns what the encoder would, reading the clips it has and running the encoder once on the
    others. `stats` counts `hits`, `misses` and `damaged` (files cut short or unreadable: recomputed, with a
    warning). Delete the folder, or one `<encoder>-<setting>` folder in it, to clear it.
    """

    def __init__(self, folder: str | os.PathLike[str], *, sampling: Mapping[str, Any] | None = None) -> None:
        self.folder = Path(folder)
        self.sampling = dict(sampling or {})
        self.stats: Counter[str] = Counter()
        self._weights: dict[int, tuple[tuple[Any, ...], str]] = {}  # id(encoder) -> (state signature, fingerprint)

    # -- keys -------------------------------------------------------------------------------------------------------

    def setting(self, config: Any, encoder: nn.Module, device: torch.device) -> dict[str, Any]:
        """Everything besides the frames that decides the encoder's output (what the setting digest covers)."""
        return {
            "format": CACHE_FORMAT,
            "encoder": config.to_dict() if hasattr(config, "to_dict") else config,
            "class": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
            "code": _code_fingerprint(type(encoder)),
            "sampling": self.sampling,
            "weights": self.weights_fingerprint(encoder),
            "mode": "train" if encoder.training else "eval",
            "device": device.type,
            "autocast": str(torch.get_autocast_dtype(device.type)) if torch.is_autocast_enabled(device.type) else None,
            "torch": torch.__version__,
        }

    def weights_fingerprint(self, encoder: nn.Module) -> str:
        """SHA-256 of the encoder's parameters and buffers; hashed again only after one of them changed (in-place
        updates bump a tensor's version counter, loading or moving it gives new storage)."""
        tensors = list(chain(encoder.named_parameters(), encoder.named_buffers()))
        signature = tuple((name, t.data_ptr(), t._version, t.dtype, t.device) for name, t in tensors)
        known = self._weights.get(id(encoder))
        if known is not None and known[0] == signature:
            return known[1]
        digest = hashlib.sha256()
        for name, tensor in tensors:
            _update(digest, name, tensor)
        self._weights[id(encoder)] = (signature, digest.hexdigest())
        return digest.hexdigest()

    def folder_for(self, config: Any, encoder: nn.Module, device: torch.device) -> Path:
        """The folder of this encoder setting (its `key.json` written on first use)."""
        setting = self.setting(config, encoder, device)
        text = json.dumps(setting, sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode()).hexdigest()
        name = str(getattr(config, "name", None) or type(encoder).__name__).replace("/", "_")
        folder = self.folder / f"{name}-{digest[:16]}"
        if not (folder / KEY_FILE).is_file():
            atomic_write_text(folder / KEY_FILE, json.dumps({"digest": digest, **setting}, indent=2, default=str))
        return folder

    # -- reading and writing ----------------------------------------------------------------------------------------

    def encode(
        self,
        config: Any,
        encoder: nn.Module,
        clips: Sequence[Any],
        groups: Mapping[str, TokenGroup],
        compute: Callable[[list[Any]], Output],
        device: torch.device,
    ) -> Output:
        """The encoder's output for `clips` (each `[T, ...]` or a mapping of such), as `compute(clips)` would give
        it: cached clips are read, the others go through `compute` together and are stored."""
        folder = self.folder_for(config, encoder, device)
        paths = [folder / f"{clip_digest(clip)}{SUFFIX}" for clip in clips]
        found = [self._read(path, groups, _frame_count(clip)) for path, clip in zip(paths, clips, strict=True)]
        missing = [index for index, entry in enumerate(found) if entry is None]
        self.stats.update({"hits": len(clips) - len(missing), "misses": len(missing)})
        self.stats = +self.stats  # no zero counts
        if missing:
            computed, mask = compute([clips[index] for index in missing])
            lengths = [_frame_count(clips[index]) for index in missing]
            pieces = {name: tensor.split(lengths) for name, tensor in computed.items()}
            if mask is not None:
                pieces[MASK] = mask.split(lengths)
            for position, index in enumerate(missing):
                entry = {name: split[position] for name, split in pieces.items()}
                self._write(paths[index], entry)
                found[index] = entry
        entries: list[dict[str, torch.Tensor]] = found  # type: ignore[assignment]
        out = {name: torch.cat([entry[name].to(device) for entry in entries]) for name in groups}
        masks = [entry.get(MASK) for entry in entries]
        mask_out = torch.cat([m.to(device) for m in masks]) if all(m is not None for m in masks) else None
        return out, mask_out

    def _read(self, path: Path, groups: Mapping[str, TokenGroup], frames: int) -> dict[str, torch.Tensor] | None:
        if not path.is_file():
            return None
        problem = safetensors_problem(path)
        tensors: dict[str, torch.Tensor] = {}
        if problem is None:
            try:
                tensors = require("safetensors.torch", extra="torch", purpose="the feature cache").load_file(path)
            except Exception as error:  # safetensors' own SafetensorError for a bad dtype or layout
                problem = f"{path.name} is not readable ({type(error).__name__})"
        if problem is None:
            shape = _shape_problem(tensors, groups, frames)
            problem = f"{path.name} does not hold this encoder's output ({shape})" if shape else None
        if problem is None:
            return tensors
        self.stats["damaged"] += 1
        log.warning("feature cache: %s; computing the features again", path.parent / problem)
        return None

    def _write(self, path: Path, entry: Mapping[str, torch.Tensor]) -> None:
        safetensors_torch = require("safetensors.torch", extra="torch", purpose="the feature cache")
        tensors = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in entry.items()}
        atomic_write_bytes(path, safetensors_torch.save(tensors, metadata={"format": str(CACHE_FORMAT)}))

    def report(self) -> str:
        """One line: hits, misses and damaged files so far."""
        hits, misses, damaged = self.stats["hits"], self.stats["misses"], self.stats["damaged"]
        return f"feature cache {self.folder}: {hits} clip(s) read, {misses} computed ({damaged} damaged file(s))"


def clip_digest(clip: Any) -> str:
    """SHA-256 of a clip's frames as the encoder receives them (a tensor, or a mapping of tensors)."""
    digest = hashlib.sha256()
    for name, value in sorted(clip.items()) if isinstance(clip, Mapping) else [("", clip)]:
        if isinstance(value, torch.Tensor):
            _update(digest, name, value)
        else:
            digest.update(f"{name}|{value!r}".encode())
    return digest.hexdigest()


def _update(digest: Any, name: str, tensor: torch.Tensor) -> None:
    """Name, dtype, shape and bytes of a tensor into `digest`."""
    data = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(data.view(torch.uint8).numpy() if data.numel() else b"")


def _shape_problem(tensors: Mapping[str, torch.Tensor], groups: Mapping[str, TokenGroup], frames: int) -> str | None:
    for name, group in groups.items():
        tensor = tensors.get(name)
        if tensor is None:
            return f"no tensor '{name}'"
        if tuple(tensor.shape) != group.shape(frames):
            return f"'{name}' is {list(tensor.shape)}, expected {list(group.shape(frames))}"
    mask = tensors.get(MASK)
    if mask is not None and tuple(mask.shape) != (frames,):
        return f"'{MASK}' is {list(mask.shape)}, expected [{frames}]"
    return None


@cache
def _code_fingerprint(cls: type) -> str | None:
    """The source file of an encoder's class (a fix in its forward changes the features)."""
    try:
        path = inspect.getsourcefile(cls)
    except TypeError:  # a class defined in C or in the interpreter
        return None
    return file_fingerprint(path) if path and os.path.isfile(path) else None


def _frame_count(clip: Any) -> int:
    return len(clip["pixels"] if isinstance(clip, Mapping) else clip)


def frozen(module: nn.Module) -> bool:
    """Whether no parameter of `module` learns (a module without parameters is frozen)."""
    return not any(parameter.requires_grad for parameter in module.parameters())
