"""Token groups: what each part of a video LLM produces, described before anything runs (torch-free).

An encoder returns named groups of tokens per frame, e.g. a ViT gives `{"cls": [F, 1, d], "patches": [F, N, d]}`
and a CNN face encoder one group per depth. Its `token_groups` attribute says so statically, like timm's
`feature_info`. A connector says how many tokens each of its output groups holds for a clip of `T` frames. From
these two, the token count of any composition follows without running it.

Groups are addressed as `"<encoder key>.<group>"` (e.g. `vision.patches`, `face.stage3`) in connector configs.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MASK = "mask"
"""Optional entry of an encoder's output (not a token group): a `[F]` boolean tensor, True where the frame holds
what the encoder looks for (a face found). Connectors receive it per encoder key as `masks[key]`: `[B, T]`."""


@dataclass(frozen=True)
class TokenGroup:
    """One group of tokens: `tokens` per frame (encoder outputs) or per clip (connector outputs), of width `dim`."""

    tokens: int
    dim: int
    description: str = ""

    def shape(self, frames: int | None = None) -> tuple[int, ...]:
        """`[frames, tokens, dim]` when frames are given, else `[tokens, dim]`."""
        return (self.tokens, self.dim) if frames is None else (frames, self.tokens, self.dim)


def group_ref(encoder: str, group: str) -> str:
    """The address of an encoder's group: `vision.patches`."""
    return f"{encoder}.{group}"


def split_ref(ref: str) -> tuple[str, str]:
    """`"vision.patches"` -> `("vision", "patches")`; a `ValueError` names what a reference looks like."""
    encoder, dot, group = ref.partition(".")
    if not dot or not encoder or not group:
        raise ValueError(f"'{ref}' is not a token group reference; write '<encoder key>.<group>', e.g. vision.patches")
    return encoder, group


def match_refs(patterns: Iterable[str], available: Iterable[str]) -> list[str]:
    """References matching `patterns` (wildcards allowed: `vision.*`, `*.patches`), in the order of `available`."""
    names = list(available)
    chosen = [name for name in names if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)]
    return chosen


@dataclass
class ConnectorOutput:
    """What a connector returns for a batch of clips."""

    tokens: dict[str, Any]
    """Output group -> `[B, K_g, hidden]` (the order in the LLM is that of `output_groups`)."""
    losses: dict[str, Any] = field(default_factory=dict)
    """Auxiliary losses (scalar tensors, unweighted); the model adds them with the configured weights."""
    stats: dict[str, Any] = field(default_factory=dict)
    """Anything worth logging or printing (e.g. routing statistics), as plain numbers or small tensors."""
