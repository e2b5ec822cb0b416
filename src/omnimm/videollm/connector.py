"""Connectors: the token groups of a clip's encoders in, the LLM's visual tokens out (with auxiliary losses).

Every connector is built as `Connector(config, inputs=..., out_dim=...)`:

- `inputs` maps every available group reference (`"vision.patches"`, `"face.stage3"`) to its `TokenGroup`
  (tokens per frame, width); the connector's config says which of them it reads;
- `out_dim` is the LLM's hidden size.

It answers `output_groups(frames)` (tokens per clip of each output group, before anything runs) and
`forward(groups, masks) -> ConnectorOutput`, where `groups[ref]` is `[B, T, n, d]` and `masks[encoder]` (when the
encoder gives one) is `[B, T]`, True for frames that hold what the encoder looks for. Output groups enter the LLM
in the order given, each at its own placeholder tokens.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from omnimm.registry import adapters
from omnimm.videollm.configs import ConnectorConfig, ProjectorConnectorConfig
from omnimm.videollm.groups import ConnectorOutput, TokenGroup, match_refs


class Connector(nn.Module):
    """Base class of connectors: input checks, loss weights, named sub-parts."""

    config: ConnectorConfig
    default_loss_weights: ClassVar[dict[str, float]] = {}
    """Weight of each auxiliary loss when the config does not set one."""

    def __init__(self, config: ConnectorConfig, *, inputs: Mapping[str, TokenGroup], out_dim: int) -> None:
        super().__init__()
        self.config = config
        self.inputs = dict(inputs)
        self.out_dim = int(out_dim)

    # -- what a subclass provides -----------------------------------------------------------------------------------

    def output_groups(self, frames: int) -> dict[str, TokenGroup]:
        """Output group -> tokens per clip of `frames` frames (width `out_dim`), in the order they enter the LLM."""
        raise NotImplementedError

    def forward(
        self, groups: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> ConnectorOutput:
        raise NotImplementedError

    # -- shared behaviour -------------------------------------------------------------------------------------------

    def select(self, patterns: list[str] | str, field: str) -> list[str]:
        """The input references matching `patterns`; a `ValueError` naming the config field when none does."""
        chosen = match_refs([patterns] if isinstance(patterns, str) else patterns, self.inputs)
        if not chosen:
            raise ValueError(
                f"connector '{self.config.name}': {field} {patterns!r} matches no token group "
                f"(available: {', '.join(self.inputs)})"
            )
        return chosen

    def loss_weight(self, name: str) -> float:
        return float(self.config.loss_weights.get(name, self.default_loss_weights.get(name, 1.0)))

    def sub_parts(self) -> dict[str, nn.Module]:
        """The sub-modules that configs may name as `connector.<name>` (those the config class declares; a declared
        part the module lacks is an error, or `freeze` and `train:` would silently do nothing with it)."""
        parts = {}
        for name in self.config.part_names():
            module = getattr(self, name, None)
            if not isinstance(module, nn.Module):
                raise TypeError(
                    f"connector '{self.config.name}' declares a part '{name}' (part_names) but has no such sub-module"
                )
            parts[name] = module
        return parts

    def describe(self) -> list[str]:
        """Lines about the connector's state for `omnimm build` / `video inspect` (e.g. routing); none by default."""
        return []

    def num_tokens(self, frames: int) -> int:
        return sum(group.tokens for group in self.output_groups(frames).values())


def check_connector_class(factory: Any, name: str) -> None:
    """A connector's factory must take `(config, *, inputs, out_dim)`: say so before a `TypeError` deep inside."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    missing = [p for p in ("inputs", "out_dim") if p not in parameters]
    if missing and not accepts_kwargs:
        raise TypeError(
            f"connector '{name}' ({getattr(factory, '__qualname__', factory)}) must accept keyword arguments "
            f"inputs= and out_dim= (missing: {', '.join(missing)}); see omnimm.videollm.connector.Connector"
        )


class ProjectorConnector(Connector):
    """`omnimm/projector`: every token of the chosen groups, projected to the LLM's width, no pooling.

    Per frame the groups are joined in the order of `inputs` (along tokens, or along features for groups of equal
    length), then frames follow one another: `T * (n_1 + n_2 + ...)` tokens (or `T * n` with `merge: features`).
    """

    config: ProjectorConnectorConfig

    def __init__(self, config: ProjectorConnectorConfig, *, inputs: Mapping[str, TokenGroup], out_dim: int) -> None:
        super().__init__(config, inputs=inputs, out_dim=out_dim)
        self.refs = self.select(config.inputs, "inputs")
        chosen = [self.inputs[ref] for ref in self.refs]
        if config.merge == "features":
            lengths = {group.tokens for group in chosen}
            if len(lengths) > 1:
                raise ValueError(
                    "connector 'omnimm/projector' with merge: features needs groups of one length, got "
                    + ", ".join(f"{ref} ({self.inputs[ref].tokens} tokens)" for ref in self.refs)
                )
            width = sum(group.dim for group in chosen)
            self.projector = adapters.build(config.projector, in_dim=width, out_dim=out_dim)
        else:
            widths = {group.dim for group in chosen}
            if len(widths) > 1 and config.shared:
                raise ValueError(
                    "connector 'omnimm/projector': groups of different widths "
                    + ", ".join(f"{ref} ({self.inputs[ref].dim})" for ref in self.refs)
                    + " need `shared: false` (one projector per group) or `merge: features`"
                )
            if config.shared:
                self.projector = adapters.build(config.projector, in_dim=chosen[0].dim, out_dim=out_dim)
            else:
                self.projectors = nn.ModuleDict(
                    {
                        _module_key(ref): adapters.build(config.projector, in_dim=group.dim, out_dim=out_dim)
                        for ref, group in zip(self.refs, chosen, strict=True)
                    }
                )

    def output_groups(self, frames: int) -> dict[str, TokenGroup]:
        chosen = [self.inputs[ref] for ref in self.refs]
        per_frame = chosen[0].tokens if self.config.merge == "features" else sum(g.tokens for g in chosen)
        return {self.config.output: TokenGroup(frames * per_frame, self.out_dim, "every frame token, projected")}

    def forward(
        self, groups: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> ConnectorOutput:
        chosen = [groups[ref] for ref in self.refs]
        if self.config.merge == "features":
            tokens = self.projector(torch.cat(chosen, dim=-1))
        elif self.config.shared:
            tokens = self.projector(torch.cat(chosen, dim=2) if len(chosen) > 1 else chosen[0])
        else:
            tokens = torch.cat(
                [self.projectors[_module_key(ref)](group) for ref, group in zip(self.refs, chosen, strict=True)],
                dim=2,
            )
        return ConnectorOutput({self.config.output: tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])})


def _module_key(ref: str) -> str:
    return ref.replace(".", "__")
