"""`favchat/moe-adapter`: scene and multi-granularity face tokens fused by a sparse mixture of experts.

```
groups ─┬─ scene connector (e.g. valley/stpool, out_dim = width) ──────────── scene_<group>: [B, K_s, width] ─┐
        └─ face level l: [B, T, n_l, d_l] ─ masked mean over face frames ─ Linear(d_l, width) + e_l ─ face ──────┤
                                           (or every frame: T * n_l tokens)                                      │
   every token x (padding left out) ─ router softmax(W_r x) in fp32 ─ top-k ─ sum_k w_k E_k(x) [+ S(x)] ───────┘
```

Each expert `E_e` (and the shared expert `S`) is an `omnimm/mlp` of depth 2: `width -> expert_hidden -> out_dim`
with GELU. Dispatch is sparse: the (token, slot) assignments are sorted by expert, every expert runs once on its
contiguous slice, the outputs are scaled by their routing weights and summed into place with `index_add_`.
The auxiliary losses are Switch Transformer's load balancing loss and ST-MoE's router z-loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from omnimm.deps import require
from omnimm.registry import adapters, connectors
from omnimm.videollm.connector import Connector
from omnimm.videollm.groups import ConnectorOutput, TokenGroup, match_refs, split_ref
from omnimm_plugins.favchat.configs import MoEAdapterConfig

SCENE_PREFIX = "scene_"
"""The scene connector's output groups (and its losses and statistics) enter the LLM under this prefix."""

_PROJECTOR_KEYS = ("layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias")


def expert_config(hidden: int) -> dict[str, Any]:
    """The adapter config of one expert: `omnimm/mlp`, depth 2, GELU (LLaVA's mlp2x_gelu)."""
    return {"name": "omnimm/mlp", "depth": 2, "hidden_dim": hidden, "activation": "gelu"}


# -- shapes known before building -----------------------------------------------------------------------------------


def face_refs(config: MoEAdapterConfig, inputs: Mapping[str, TokenGroup]) -> list[str]:
    """The face levels: each pattern of `face` in turn, expanded in the encoders' group order, each ref once."""
    refs: list[str] = []
    for pattern in config.face:
        chosen = match_refs([pattern], inputs)
        if not chosen:
            raise ValueError(
                f"connector 'favchat/moe-adapter': face {pattern!r} matches no token group "
                f"(available: {', '.join(inputs)})"
            )
        refs += [ref for ref in chosen if ref not in refs]
    return refs


def resolve_width(config: MoEAdapterConfig, inputs: Mapping[str, TokenGroup]) -> int:
    """The mixture's input width: `config.width`, else the widest group the scene connector or the face levels
    read."""
    if config.width is not None:
        return config.width
    refs = face_refs(config, inputs)
    if config.scene is not None:
        patterns = [p for group in config.scene.group_patterns().values() for p in group]  # type: ignore[attr-defined]
        refs += match_refs(patterns, inputs)
    if not refs:
        raise ValueError("connector 'favchat/moe-adapter': no input group to take the width from; set width")
    return max(inputs[ref].dim for ref in refs)


def expert_parameters(width: int, hidden: int, out_dim: int) -> int:
    """Parameters of one expert: `Linear(width, hidden)` and `Linear(hidden, out_dim)` with biases."""
    return hidden * (width + 1) + out_dim * (hidden + 1)


def mixture_parameters(config: MoEAdapterConfig, width: int, out_dim: int, *, active: bool = False) -> int:
    """Parameters of router, experts and shared expert; with `active`, only those one token uses (top-k experts)."""
    experts = config.num_experts
    hidden = config.expert_hidden or out_dim
    used = (1 if experts == 1 else config.top_k) if active else experts
    router = width * experts if experts > 1 else 0
    return router + (used + int(config.shared_expert)) * expert_parameters(width, hidden, out_dim)


def matched_dense(
    config: MoEAdapterConfig,
    inputs: Mapping[str, TokenGroup],
    out_dim: int,
    *,
    match: Literal["total", "active"] = "total",
) -> MoEAdapterConfig:
    """The dense ablation "of the same size": `num_experts: 1` (one MLP, no router, no losses) with the
    `expert_hidden` whose parameter count is nearest to the mixture's router + experts + shared expert (`total`)
    or to what one token uses (`active`: router, top-k experts, shared expert). Scene connector, face projectors
    and level embeddings are the same in both."""
    width = resolve_width(config, inputs)
    target = mixture_parameters(config, width, out_dim, active=match == "active")
    per_hidden = width + 1 + out_dim  # expert_parameters grows by this per hidden unit
    exact = (target - out_dim) / per_hidden
    candidates = {max(1, math.floor(exact)), max(1, math.ceil(exact))}
    hidden = min(sorted(candidates), key=lambda h: abs(expert_parameters(width, h, out_dim) - target))
    return config.model_copy(
        update={
            "num_experts": 1,
            "top_k": 1,
            "expert_hidden": hidden,
            "shared_expert": False,
            "capacity_factor": None,
            "router_noise": 0.0,
            "init_experts_from": None,
            "init_experts_key": None,
            "width": width,
        }
    )


# -- routing ----------------------------------------------------------------------------------------------------------


@dataclass
class Routing:
    """The router's decision for `N` tokens (all fp32)."""

    logits: torch.Tensor
    """`[N, E]` router logits."""
    probs: torch.Tensor
    """`[N, E]` softmax of the logits."""
    weights: torch.Tensor
    """`[N, k]` weight of each chosen expert: renormalised to sum 1 when `k > 1`, the raw probability when `k = 1`."""
    experts: torch.Tensor
    """`[N, k]` chosen experts (long), best first."""


@dataclass
class Dispatch:
    """The kept (token, slot) assignments, sorted by expert: expert `e` takes the `counts[e]` entries after those of
    experts `< e`."""

    tokens: torch.Tensor
    """`[A]` token index of each kept assignment."""
    weights: torch.Tensor
    """`[A]` its routing weight."""
    counts: list[int]
    """Kept assignments per expert."""
    routed: torch.Tensor
    """`[E]` assignments the router made to each expert (before capacity)."""
    dropped: int
    """Assignments dropped by the capacity limit."""
    capacity: int | None


@dataclass
class MixOutput:
    """What the mixture gives for `N` tokens."""

    tokens: torch.Tensor
    """`[N, out_dim]`."""
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    routing: Routing | None = None
    dispatch: Dispatch | None = None


class MoEAdapter(Connector):
    """`favchat/moe-adapter`: `[scene_<group> ..., face]` (or `face_0, face_1, ...`), every token of every group
    passed through one sparse mixture of experts into the LLM's width.

    Token counts per clip of `T` frames: the scene connector's own (e.g. `N + T` for valley/stpool), then per face
    level `n_l` (`face_time: mean`) or `T * n_l` (`face_time: frames`). Losses: `balance` and `z` (none with
    `num_experts: 1`), plus the scene connector's as `scene_<loss>`. `last_stats` keeps the routing statistics of
    the last forward; `describe()` prints them.
    """

    config: MoEAdapterConfig
    default_loss_weights: ClassVar[dict[str, float]] = {"balance": 0.01, "z": 0.001}

    def __init__(self, config: MoEAdapterConfig, *, inputs: Mapping[str, TokenGroup], out_dim: int) -> None:
        super().__init__(config, inputs=inputs, out_dim=out_dim)
        self.face_refs = face_refs(config, self.inputs)
        self.width = resolve_width(config, self.inputs)
        self.scene: nn.Module | None = None
        if config.scene is not None:
            self.scene = connectors.build(config.scene, inputs=self.inputs, out_dim=self.width)
            wrong = {n: g.dim for n, g in self.scene.output_groups(1).items() if g.dim != self.width}
            if wrong:
                raise ValueError(
                    f"connector 'favchat/moe-adapter': scene connector '{config.scene.name}' gives groups of width "
                    f"{wrong}, the mixture reads width {self.width}"
                )
        if self.face_refs:
            self.face_projectors = nn.ModuleDict(
                {_module_key(ref): nn.Linear(self.inputs[ref].dim, self.width) for ref in self.face_refs}
            )
            self.level_embeddings = nn.Embedding(len(self.face_refs), self.width)
            nn.init.trunc_normal_(self.level_embeddings.weight, std=0.02)
        self.num_experts = config.num_experts
        self.top_k = 1 if self.num_experts == 1 else config.top_k
        self.hidden = config.expert_hidden or self.out_dim
        self.router: nn.Linear | None = None
        if self.num_experts > 1:
            self.router = nn.Linear(self.width, self.num_experts, bias=False)
            nn.init.normal_(self.router.weight, std=0.02)
        self.experts = nn.ModuleList([self._expert() for _ in range(self.num_experts)])
        self.shared_expert = self._expert() if config.shared_expert else None
        self.last_stats: dict[str, float] = {}
        if config.init_experts_from:
            self.init_experts_from(load_projector(config.init_experts_from, config.init_experts_key))

    def _expert(self) -> nn.Module:
        return adapters.build(expert_config(self.hidden), in_dim=self.width, out_dim=self.out_dim)

    # -- groups -------------------------------------------------------------------------------------------------

    def output_groups(self, frames: int) -> dict[str, TokenGroup]:
        groups: dict[str, TokenGroup] = {}
        if self.scene is not None:
            for name, group in self.scene.output_groups(frames).items():
                described = f"{group.description}, through the mixture" if group.description else "through the mixture"
                groups[SCENE_PREFIX + name] = TokenGroup(group.tokens, self.out_dim, described)
        levels = [(ref, self._level_tokens(ref, frames)) for ref in self.face_refs]
        how = "mean over face frames" if self.config.face_time == "mean" else "every frame"
        if self.config.face_groups == "per_level":
            for index, (ref, count) in enumerate(levels):
                groups[f"face_{index}"] = TokenGroup(count, self.out_dim, f"{ref}, {how}, through the mixture")
        elif levels:
            described = f"{' + '.join(ref for ref, _ in levels)}, {how}, through the mixture"
            groups["face"] = TokenGroup(sum(count for _, count in levels), self.out_dim, described)
        return groups

    def _level_tokens(self, ref: str, frames: int) -> int:
        tokens = self.inputs[ref].tokens
        return tokens if self.config.face_time == "mean" else frames * tokens

    # -- forward ------------------------------------------------------------------------------------------------

    def forward(
        self, groups: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> ConnectorOutput:
        names: list[str] = []
        pieces: list[torch.Tensor] = []  # [B, K_g, width]
        valid: list[torch.Tensor | None] = []  # [B, K_g] bool, None: every token
        losses: dict[str, torch.Tensor] = {}
        stats: dict[str, Any] = {}
        if self.scene is not None:
            scene = self.scene(groups, masks)
            for name, tokens in scene.tokens.items():
                names.append(SCENE_PREFIX + name)
                pieces.append(tokens)
                valid.append(None)
            losses.update({SCENE_PREFIX + name: value for name, value in scene.losses.items()})
            stats.update({SCENE_PREFIX + name: value for name, value in scene.stats.items()})
        levels = self.face_tokens(groups, masks)
        if self.config.face_groups == "per_level":
            for index, (tokens, level_valid) in enumerate(levels):
                names.append(f"face_{index}")
                pieces.append(tokens)
                valid.append(level_valid)
        elif levels:
            names.append("face")
            pieces.append(torch.cat([tokens for tokens, _ in levels], dim=1))
            valid.append(torch.cat([level_valid for _, level_valid in levels], dim=1))

        batch = pieces[0].shape[0]
        sizes = [piece.shape[1] for piece in pieces]
        device = pieces[0].device
        tokens = torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]
        flat = tokens.reshape(-1, self.width)
        keep = None
        if any(v is not None for v in valid):
            every = [
                v if v is not None else torch.ones(batch, n, dtype=torch.bool, device=device)
                for v, n in zip(valid, sizes, strict=True)
            ]
            keep = torch.cat(every, dim=1).reshape(-1)
        if keep is None or bool(keep.all()):
            mixed = self.mix(flat)
            out = mixed.tokens
        else:  # padding tokens are neither routed nor computed; they reach the LLM as zeros
            index = keep.nonzero().squeeze(1)
            mixed = self.mix(flat.index_select(0, index))
            out = mixed.tokens.new_zeros(len(flat), self.out_dim).index_copy(0, index, mixed.tokens)
        out = out.reshape(batch, -1, self.out_dim)
        losses.update(mixed.losses)
        stats.update(mixed.stats)
        self.last_stats = dict(stats)
        return ConnectorOutput(dict(zip(names, out.split(sizes, dim=1), strict=True)), losses=losses, stats=stats)

    def face_tokens(
        self, groups: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per face level: its tokens in the mixture's width `[B, K_l, width]` (level embedding added) and which of
        them hold a face `[B, K_l]`."""
        levels = []
        for index, ref in enumerate(self.face_refs):
            features = groups[ref]
            if features.ndim != 4:
                raise ValueError(
                    f"connector 'favchat/moe-adapter' expects face level '{ref}' as [batch, frames, tokens, dim], "
                    f"got {list(features.shape)}"
                )
            batch, frames, count, _ = features.shape
            mask = self._frame_mask(ref, masks, batch, frames, features.device)
            if self.config.face_time == "mean":
                weights = mask.to(features.dtype)
                faces = weights.sum(dim=1)  # [B]
                pooled = torch.einsum("bt,btnd->bnd", weights, features) / faces.clamp(min=1)[:, None, None]
                level_valid = (faces > 0)[:, None].expand(batch, count)
            else:
                pooled = features.reshape(batch, frames * count, features.shape[-1])
                level_valid = mask[:, :, None].expand(batch, frames, count).reshape(batch, frames * count)
            projected = self.face_projectors[_module_key(ref)](pooled) + self.level_embeddings.weight[index]
            levels.append((projected, level_valid))
        return levels

    def _frame_mask(
        self, ref: str, masks: Mapping[str, torch.Tensor] | None, batch: int, frames: int, device: torch.device
    ) -> torch.Tensor:
        key = self.config.face_mask or split_ref(ref)[0]
        mask = (masks or {}).get(key)
        if mask is None:
            return torch.ones(batch, frames, dtype=torch.bool, device=device)
        if tuple(mask.shape) != (batch, frames):
            raise ValueError(
                f"connector 'favchat/moe-adapter': mask of '{key}' is {list(mask.shape)}, face level '{ref}' needs "
                f"[{batch}, {frames}]"
            )
        return mask.to(device=device, dtype=torch.bool)

    # -- the mixture --------------------------------------------------------------------------------------------

    def mix(self, tokens: torch.Tensor) -> MixOutput:
        """`[N, width]` tokens (no padding among them) -> `[N, out_dim]`, with the router's losses and statistics."""
        if self.router is None:
            out = self.experts[0](tokens)
            if self.shared_expert is not None:
                out = out + self.shared_expert(tokens)
            return MixOutput(out)
        if len(tokens) == 0:
            out = self.experts[0](tokens)
            zero = (self.router.weight * 0).sum()  # keeps the router in the graph
            return MixOutput(out, {"balance": zero, "z": zero}, self._stats(None, None))
        routing = self.route(tokens)
        dispatch = self.dispatch(routing)
        out = self.combine(tokens, dispatch)
        if self.shared_expert is not None:
            out = out + self.shared_expert(tokens)
        losses = self.router_losses(routing, dispatch)
        return MixOutput(out, losses, self._stats(routing, dispatch), routing, dispatch)

    def route(self, tokens: torch.Tensor) -> Routing:
        """Router logits, probabilities and top-k choice, in fp32 whatever the input dtype or autocast."""
        assert self.router is not None
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            inputs = tokens.float()
            if self.training and self.config.router_noise > 0:
                noise = self.config.router_noise
                inputs = inputs * torch.empty_like(inputs).uniform_(1.0 - noise, 1.0 + noise)
            logits = F.linear(inputs, self.router.weight.float())
            probs = logits.softmax(dim=-1)
            weights, chosen = probs.topk(self.top_k, dim=-1)
            if self.top_k > 1:
                weights = weights / weights.sum(dim=-1, keepdim=True)
        return Routing(logits, probs, weights, chosen)

    def dispatch(self, routing: Routing) -> Dispatch:
        """Sort the (token, slot) assignments by expert (first choices before second choices, then token order)
        and drop what exceeds each expert's capacity."""
        count, k = routing.experts.shape
        slot_major = routing.experts.t().reshape(-1)  # entry a: slot a // N of token a % N
        order = torch.argsort(slot_major, stable=True)
        routed = torch.bincount(slot_major, minlength=self.num_experts)
        capacity = None
        kept = routed
        if self.config.capacity_factor is not None:
            capacity = math.ceil(self.config.capacity_factor * count * k / self.num_experts)
            starts = routed.cumsum(0) - routed
            rank = torch.arange(len(order), device=order.device) - starts[slot_major[order]]
            order = order[rank < capacity]
            kept = routed.clamp(max=capacity)
        counts = kept.tolist()
        return Dispatch(
            tokens=order % count,
            weights=routing.weights.t().reshape(-1)[order],
            counts=counts,
            routed=routed,
            dropped=count * k - sum(counts),
            capacity=capacity,
        )

    def combine(self, tokens: torch.Tensor, dispatch: Dispatch) -> torch.Tensor:
        """Each expert on its slice of the sorted assignments, scaled by the routing weights, summed per token."""
        outputs = []
        start = 0
        for expert, count in zip(self.experts, dispatch.counts, strict=True):
            if count:
                outputs.append(expert(tokens.index_select(0, dispatch.tokens[start : start + count])))
            start += count
        expert_out = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
        weighted = expert_out * dispatch.weights[:, None].to(expert_out.dtype)
        return weighted.new_zeros(len(tokens), self.out_dim).index_add_(0, dispatch.tokens, weighted)

    def router_losses(self, routing: Routing, dispatch: Dispatch) -> dict[str, torch.Tensor]:
        """`balance = E * sum_e f_e P_e` (f_e: share of the top-k slots routed to e, before capacity; P_e: mean
        router probability of e), 1 for uniform routing; `z = mean_n logsumexp(logits_n)^2`."""
        count, k = routing.experts.shape
        share = dispatch.routed.to(routing.probs.dtype) / (count * k)
        balance = self.num_experts * (share * routing.probs.mean(dim=0)).sum()
        z = torch.logsumexp(routing.logits, dim=-1).square().mean()
        return {"balance": balance, "z": z}

    @torch.no_grad()
    def _stats(self, routing: Routing | None, dispatch: Dispatch | None) -> dict[str, float]:
        experts = self.num_experts
        if routing is None or dispatch is None:
            loads = [0.0] * experts
            entropy, tokens, dropped = 0.0, 0, 0
        else:
            tokens, k = routing.experts.shape
            share = dispatch.routed.float() / (tokens * k)
            probs = routing.probs
            entropy_t = -(probs * probs.clamp(min=torch.finfo(probs.dtype).tiny).log()).sum(dim=-1).mean()
            *loads, entropy = torch.cat([share, entropy_t[None]]).tolist()
            dropped = dispatch.dropped
        stats = {f"load_e{index}": load for index, load in enumerate(loads)}
        stats["load_max"] = max(loads)
        stats["router_entropy"] = entropy
        stats["dead_experts"] = float(sum(load == 0 for load in loads))
        stats["dropped"] = float(dropped)
        stats["routed_tokens"] = float(tokens)
        return stats

    # -- losses, upcycling, printing ----------------------------------------------------------------------------

    def loss_weight(self, name: str) -> float:
        """Own losses as configured or by default; the scene connector's (`scene_<loss>`) by its own weights
        unless `loss_weights` names them."""
        inner = getattr(self.scene, "loss_weight", None)
        if name in self.config.loss_weights or not name.startswith(SCENE_PREFIX) or inner is None:
            return super().loss_weight(name)
        return float(inner(name[len(SCENE_PREFIX) :]))

    @torch.no_grad()
    def init_experts_from(self, source: nn.Module | Mapping[str, torch.Tensor], key: str | None = None) -> None:
        """Copy a trained `omnimm/mlp` projector (depth 2, no norm: `width -> expert_hidden -> out_dim`) into every
        expert and the shared expert (sparse upcycling); the router keeps its initialisation. `source`: the
        projector module or a state dict (a whole model's too: `key` is the projector's key prefix, found when
        unique)."""
        state = source.state_dict() if isinstance(source, nn.Module) else dict(source)
        weights = projector_state(state, key)
        expected = {name: tuple(t.shape) for name, t in self.experts[0].state_dict().items()}
        got = {name: tuple(t.shape) for name, t in weights.items()}
        if got != expected:

            def widths(shapes: Mapping[str, tuple[int, ...]]) -> str:
                first, second = shapes.get("layers.0.weight", (0, 0)), shapes.get("layers.2.weight", (0, 0))
                return f"{first[1]} -> {first[0]} -> {second[0]}"

            raise ValueError(
                f"connector 'favchat/moe-adapter': the projector maps {widths(got)}, the experts need "
                f"{widths(expected)} (width -> expert_hidden -> out_dim)"
            )
        for expert in [*self.experts, *([self.shared_expert] if self.shared_expert is not None else [])]:
            expert.load_state_dict(weights)

    def describe(self) -> list[str]:
        """Lines for `omnimm build`: the mixture, its inputs and the routing of the last forward."""
        shape = f"{self.width} -> {self.hidden} -> {self.out_dim}"
        if self.router is None:
            lines = [f"dense MLP {shape} (num_experts: 1: no router, no auxiliary losses)"]
        else:
            rule = "weights renormalised" if self.top_k > 1 else "raw softmax weight"
            extra = ", with a shared expert" if self.shared_expert is not None else ""
            if self.config.capacity_factor is not None:
                extra += f", capacity factor {self.config.capacity_factor:g}"
            lines = [f"mixture of {self.num_experts} experts {shape}, top-{self.top_k} ({rule}){extra}"]
        total = mixture_parameters(self.config, self.width, self.out_dim)
        active = mixture_parameters(self.config, self.width, self.out_dim, active=True)
        lines.append(f"mixture parameters: {total:,} in all, {active:,} used per token")
        if self.scene is not None:
            names = ", ".join(SCENE_PREFIX + name for name in self.scene.output_groups(1))
            lines.append(f"scene: {self.config.scene.name} into width {self.width} -> {names}")  # type: ignore[union-attr]
        if self.face_refs:
            levels = ", ".join(f"{ref} ({self.inputs[ref].dim})" for ref in self.face_refs)
            how = "mean over face frames" if self.config.face_time == "mean" else "every frame"
            lines.append(f"face levels: {levels}, {how}, each Linear(d, {self.width}) + a level embedding")
        stats = self.last_stats
        if self.router is not None and "load_max" in stats:
            loads = " ".join(f"{stats[f'load_e{i}']:.2f}" for i in range(self.num_experts))
            lines.append(
                f"last forward: {int(stats['routed_tokens'])} tokens, loads {loads} (max {stats['load_max']:.2f}), "
                f"entropy {stats['router_entropy']:.3f} nats of {math.log(self.num_experts):.3f}, "
                f"{int(stats['dead_experts'])} dead, {int(stats['dropped'])} dropped"
            )
        return lines


def projector_prefix(names: list[str] | Any, key: str | None = None) -> str:
    """The key prefix of the one depth-2 `omnimm/mlp` projector among tensor `names` (`key` when given), checked."""
    names = list(names)
    if key is None:
        first, second = _PROJECTOR_KEYS[0], _PROJECTOR_KEYS[2]
        present = set(names)
        prefixes = sorted(n[: -len(first)] for n in names if n.endswith(first) and n[: -len(first)] + second in present)
        if len(prefixes) != 1:
            found = ", ".join(repr(p) for p in prefixes) or "none"
            raise ValueError(
                "connector 'favchat/moe-adapter': init_experts_from needs one depth-2 omnimm/mlp projector "
                f"(keys <prefix>layers.0.weight and <prefix>layers.2.weight); prefixes found: {found}; "
                "set init_experts_key"
            )
        key = prefixes[0]
    missing = [key + name for name in _PROJECTOR_KEYS if key + name not in names]
    deeper = sorted(n for n in names if n.startswith(key + "layers.") and n[len(key) :] not in _PROJECTOR_KEYS)
    if missing or deeper:
        raise ValueError(
            f"connector 'favchat/moe-adapter': '{key}' is not a depth-2 omnimm/mlp projector without norm "
            f"(missing {missing}, unexpected {deeper[:4]})"
        )
    return key


def projector_state(state: Mapping[str, torch.Tensor], key: str | None = None) -> dict[str, torch.Tensor]:
    """The four tensors of a depth-2 `omnimm/mlp` projector in `state`, under prefix `key` (found when unique)."""
    key = projector_prefix(list(state), key)
    return {name: state[key + name] for name in _PROJECTOR_KEYS}


def load_projector(path: str, key: str | None = None) -> dict[str, torch.Tensor]:
    """A projector's tensors from a safetensors file (never a pickle); only those four tensors are read."""
    safetensors = require("safetensors", extra="torch", purpose="init_experts_from")
    with safetensors.safe_open(path, framework="pt") as file:
        prefix = projector_prefix(list(file.keys()), key)
        return {name: file.get_tensor(prefix + name) for name in _PROJECTOR_KEYS}


def _module_key(ref: str) -> str:
    return ref.replace(".", "__")
