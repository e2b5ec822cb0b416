"""favchat's mixture-of-experts adapter: token counts, sparse dispatch against a dense reference, routing weights,
capacity, the auxiliary losses by hand, padding, the fp32 router, upcycling, the dense ablation of equal size, and
the connector inside a two-encoder video LLM."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from omnimm import ConfigError, adapters, connectors, models
from omnimm.videollm.groups import TokenGroup
from omnimm_plugins.favchat.configs import MoEAdapterConfig
from omnimm_plugins.favchat.moe import MoEAdapter, expert_parameters, matched_dense, mixture_parameters

from .conftest import write_test_video

NAME = "favchat/moe-adapter"
GROUPS = {
    "vision.cls": TokenGroup(1, 12),
    "vision.patches": TokenGroup(9, 12),
    "face.stage2": TokenGroup(4, 6),
    "face.stage3": TokenGroup(4, 10),
    "face.stage4": TokenGroup(1, 16),
}
OUT = 20


@pytest.fixture(scope="module", autouse=True)
def registered():
    added = NAME not in connectors
    if added:
        connectors.register(NAME, MoEAdapter, config=MoEAdapterConfig, override=True)
    yield
    if added:
        connectors.unregister(NAME)


def build(groups=GROUPS, out_dim=OUT, seed=0, **options) -> MoEAdapter:
    torch.manual_seed(seed)
    return connectors.build({"name": NAME, **options}, inputs=groups, out_dim=out_dim)


def inputs(batch=2, frames=3, groups=GROUPS, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return {ref: torch.randn(batch, frames, g.tokens, g.dim, generator=generator) for ref, g in groups.items()}


def mixture(**options) -> MoEAdapter:
    """A face-only mixture reading width 8 (the projectors do not matter for `mix`)."""
    groups = {"face.stage2": TokenGroup(2, 8)}
    return build(groups, scene=None, face=["face.stage2"], width=8, **options)


def dense_reference(adapter: MoEAdapter, tokens: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, weighted by the top-k mask: what the sparse dispatch must equal."""
    probs = F.linear(tokens.float(), adapter.router.weight.float()).softmax(dim=-1)
    top, chosen = probs.topk(adapter.top_k, dim=-1)
    weights = top / top.sum(dim=-1, keepdim=True) if adapter.top_k > 1 else top
    gate = torch.zeros_like(probs).scatter(1, chosen, weights)  # [N, E], zero off the top-k
    every = torch.stack([expert(tokens) for expert in adapter.experts], dim=1)  # [N, E, out]
    out = (gate[..., None] * every).sum(dim=1)
    if adapter.shared_expert is not None:
        out = out + adapter.shared_expert(tokens)
    return out


def steer(adapter: MoEAdapter, column: list[float]) -> None:
    """Router logits `x[0] * column`: tokens `c * e_0` get logits `c * column`."""
    with torch.no_grad():
        adapter.router.weight.zero_()
        adapter.router.weight[:, 0] = torch.tensor(column)


def unit_tokens(scales: list[float], width: int = 8) -> torch.Tensor:
    tokens = torch.zeros(len(scales), width)
    tokens[:, 0] = torch.tensor(scales)
    return tokens


# -- token counts -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("face_time", ["mean", "frames"])
@pytest.mark.parametrize("face_groups", ["one", "per_level"])
@pytest.mark.parametrize("scene", ["stpool", None])
def test_output_groups_equal_the_real_outputs_for_any_frame_count(face_time, face_groups, scene):
    options = {"face_time": face_time, "face_groups": face_groups, "face": ["face.stage*"], "num_experts": 3}
    adapter = build(scene={"name": "valley/stpool"} if scene else None, **options)
    assert adapter.width == 16  # the widest input group
    for frames in (1, 2, 5):
        expected = adapter.output_groups(frames)
        out = adapter(inputs(frames=frames), {"face": torch.rand(2, frames) > 0.3})
        assert {n: tuple(t.shape) for n, t in out.tokens.items()} == {
            n: (2, g.tokens, OUT) for n, g in expected.items()
        }
        per_level = [4, 4, 1] if face_time == "mean" else [frames * 4, frames * 4, frames]
        face = {f"face_{i}": n for i, n in enumerate(per_level)} if face_groups == "per_level" else {}
        face = face or {"face": sum(per_level)}
        scene_groups = {"scene_video": 9 + frames} if scene else {}
        assert {n: g.tokens for n, g in expected.items()} == {**scene_groups, **face}
        assert list(expected) == [*scene_groups, *face]  # scene first, then the face levels in order


def test_sub_parts_and_group_patterns():
    adapter = build(shared_expert=True)
    assert list(adapter.sub_parts()) == [
        "router", "experts", "shared_expert", "scene", "face_projectors", "level_embeddings"
    ]  # fmt: skip
    assert adapter.config.group_patterns() == {
        "face": ["face.stage2", "face.stage3", "face.stage4"],
        "scene.patches": ["vision.patches"],
        "scene.cls": ["vision.cls"],
    }
    dense = build(num_experts=1, scene=None)
    assert list(dense.sub_parts()) == ["experts", "face_projectors", "level_embeddings"]
    with pytest.raises(ConfigError, match="top_k: must be <= num_experts"):
        connectors.validate({"name": NAME, "num_experts": 2, "top_k": 3})
    with pytest.raises(ConfigError, match="no inputs"):
        connectors.validate({"name": NAME, "scene": None, "face": []})


# -- dispatch and weights -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("shared", [False, True])
def test_sparse_dispatch_equals_the_dense_reference(top_k, shared):
    adapter = mixture(num_experts=5, top_k=top_k, shared_expert=shared)
    with torch.no_grad():
        adapter.router.weight.normal_(std=1.0)  # decisive routing: every expert gets tokens
    tokens = torch.randn(64, 8, generator=torch.Generator().manual_seed(2))
    out = adapter.mix(tokens)
    assert torch.allclose(out.tokens, dense_reference(adapter, tokens), atol=1e-5, rtol=1e-5)
    assert sum(out.dispatch.counts) == 64 * top_k and out.stats["dropped"] == 0
    assert sum(out.stats[f"load_e{e}"] for e in range(5)) == pytest.approx(1.0)


def test_k1_uses_the_raw_probability_and_k2_renormalises():
    tokens = torch.randn(16, 8, generator=torch.Generator().manual_seed(3))
    one = mixture(num_experts=4, top_k=1)
    routing = one.route(tokens)
    assert torch.equal(routing.weights[:, 0], routing.probs.max(dim=-1).values)
    assert (routing.weights < 1).all()  # not renormalised to 1
    steer(one, [3.0, 0.0, 0.0, 0.0])
    out = one.mix(unit_tokens([1.0])).tokens
    p = math.exp(3) / (math.exp(3) + 3)
    assert torch.allclose(out, p * one.experts[0](unit_tokens([1.0])), atol=1e-6)
    assert not torch.allclose(out, one.experts[0](unit_tokens([1.0])), atol=1e-3)

    two = mixture(num_experts=4, top_k=2)
    routing = two.route(tokens)
    top2 = routing.probs.topk(2, dim=-1).values
    assert torch.allclose(routing.weights, top2 / top2.sum(dim=-1, keepdim=True))
    assert torch.allclose(routing.weights.sum(dim=-1), torch.ones(16))


def test_capacity_drops_are_counted_and_contribute_nothing():
    adapter = mixture(num_experts=4, top_k=1, capacity_factor=1.0)
    steer(adapter, [4.0, 0.0, 0.0, 0.0])  # every token picks expert 0
    tokens = unit_tokens([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    out = adapter.mix(tokens)
    capacity = math.ceil(1.0 * 8 * 1 / 4)
    assert out.dispatch.capacity == capacity == 2
    assert out.stats["dropped"] == 6 and out.dispatch.counts == [2, 0, 0, 0]
    assert out.stats["load_e0"] == 1.0 and out.stats["dead_experts"] == 3  # load counts the router's choices
    probs = out.routing.probs[:2, 0:1]
    assert torch.allclose(out.tokens[:2], probs * adapter.experts[0](tokens[:2]), atol=1e-6)  # first tokens kept
    assert torch.equal(out.tokens[2:], torch.zeros(6, OUT))  # the dropped ones: nothing

    shared = mixture(num_experts=4, top_k=2, capacity_factor=0.5, shared_expert=True)
    steer(shared, [4.0, 2.0, 0.0, 0.0])  # first choice expert 0, second expert 1, for every token
    out = shared.mix(tokens)
    capacity = math.ceil(0.5 * 8 * 2 / 4)
    assert out.dispatch.capacity == capacity == 2 and out.dispatch.counts == [2, 2, 0, 0]
    assert out.stats["dropped"] == 16 - 4
    w = out.routing.weights
    expected = shared.shared_expert(tokens)
    expected[:2] += w[:2, :1] * shared.experts[0](tokens[:2]) + w[:2, 1:] * shared.experts[1](tokens[:2])
    assert torch.allclose(out.tokens, expected, atol=1e-5)  # tokens 2.. keep only the shared expert


# -- losses -------------------------------------------------------------------------------------------------------


def test_balance_loss_is_one_for_uniform_routing_and_larger_when_collapsed():
    adapter = mixture(num_experts=4, top_k=1)
    tokens = torch.randn(12, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        adapter.router.weight.zero_()  # every probability exactly 1/4
    assert adapter.mix(tokens).losses["balance"].item() == pytest.approx(1.0, abs=1e-6)

    even = mixture(num_experts=2, top_k=1)  # tokens +e_0 pick expert 0, -e_0 expert 1: an even split
    steer(even, [1.0, -1.0])
    losses = even.mix(unit_tokens([2.0, -2.0, 1.0, -1.0])).losses
    assert losses["balance"].item() == pytest.approx(1.0, abs=1e-6)  # f = 1/2 each: 2 * (P_0 + P_1) / 2 = 1

    a = 3.0
    steer(adapter, [a, 0.0, 0.0, 0.0])
    collapsed = adapter.mix(unit_tokens([1.0] * 6)).losses["balance"].item()
    p0 = math.exp(a) / (math.exp(a) + 3)
    assert collapsed == pytest.approx(4 * 1.0 * p0, rel=1e-6)  # E * f_0 * P_0 with f_0 = 1
    assert 3 < collapsed < 4  # E is the largest value, reached as P_0 -> 1

    two = mixture(num_experts=4, top_k=2)
    steer(two, [a, 1.0, 0.0, 0.0])  # slots split between experts 0 and 1: f = (1/2, 1/2, 0, 0)
    z = math.exp(a) + math.exp(1) + 2
    expected = 4 * (0.5 * math.exp(a) / z + 0.5 * math.exp(1) / z)
    assert two.mix(unit_tokens([1.0] * 5)).losses["balance"].item() == pytest.approx(expected, rel=1e-6)


def test_z_loss_by_hand():
    adapter = mixture(num_experts=3, top_k=1)
    steer(adapter, [1.0, 2.0, -1.0])
    scales = [0.5, 1.0, -2.0]
    lse = [math.log(sum(math.exp(c * v) for v in (1.0, 2.0, -1.0))) for c in scales]
    expected = sum(value**2 for value in lse) / len(lse)
    assert adapter.mix(unit_tokens(scales)).losses["z"].item() == pytest.approx(expected, rel=1e-6)


def test_loss_weights_default_and_configured():
    adapter = mixture()
    assert (adapter.loss_weight("balance"), adapter.loss_weight("z")) == (0.01, 0.001)
    configured = mixture(loss_weights={"balance": 0.1})
    assert (configured.loss_weight("balance"), configured.loss_weight("z")) == (0.1, 0.001)
    assert mixture(num_experts=1).mix(torch.randn(3, 8)).losses == {}


# -- padding ------------------------------------------------------------------------------------------------------


def test_frames_without_a_face_are_zero_and_left_out_of_losses_and_stats():
    groups = {"face.stage2": TokenGroup(2, 8), "face.stage3": TokenGroup(1, 8)}
    adapter = build(groups, scene=None, face=["face.*"], face_time="frames", num_experts=3, top_k=2)
    features = inputs(batch=2, frames=4, groups=groups)
    mask = torch.tensor([[True, False, True, False], [False, False, False, True]])
    out = adapter(features, {"face": mask})
    face = out.tokens["face"]  # [2, 4 * 2 + 4 * 1, OUT]: level 0 frame-major, then level 1
    valid = torch.cat([mask[:, :, None].expand(2, 4, 2).reshape(2, 8), mask], dim=1)
    assert torch.equal(face[~valid], torch.zeros(int((~valid).sum()), OUT))
    assert (face[valid].abs().sum(dim=-1) > 0).all()

    levels = adapter.face_tokens(features, {"face": mask})
    every = torch.cat([tokens for tokens, _ in levels], dim=1)
    reference = adapter.mix(every[valid])  # only the face tokens
    assert torch.allclose(face[valid], reference.tokens, atol=1e-6)
    assert out.losses["balance"].item() == pytest.approx(reference.losses["balance"].item(), rel=1e-6)
    assert out.losses["z"].item() == pytest.approx(reference.losses["z"].item(), rel=1e-6)
    assert out.stats == reference.stats and out.stats["routed_tokens"] == int(valid.sum()) == 9

    noisy = {ref: t.clone() for ref, t in features.items()}
    for t in noisy.values():
        t[~mask] = 1e4 * torch.randn_like(t[~mask])  # what faceless frames hold must not matter
    again = adapter(noisy, {"face": mask})
    assert torch.equal(again.tokens["face"], face) and again.stats == out.stats


def test_the_mean_over_face_frames_and_a_clip_without_a_face():
    groups = {"face.stage2": TokenGroup(2, 8)}
    adapter = build(groups, scene=None, face=["face.stage2"], num_experts=2, top_k=1)
    features = inputs(batch=2, frames=3, groups=groups)["face.stage2"]
    mask = torch.tensor([[True, False, True], [False, False, False]])
    ((tokens, valid),) = adapter.face_tokens({"face.stage2": features}, {"face": mask})
    projector = adapter.face_projectors["face__stage2"]
    by_hand = projector((features[0, 0] + features[0, 2]) / 2) + adapter.level_embeddings.weight[0]
    assert torch.allclose(tokens[0], by_hand, atol=1e-6)
    assert valid.tolist() == [[True, True], [False, False]]
    out = adapter({"face.stage2": features}, {"face": mask})
    assert torch.equal(out.tokens["face"][1], torch.zeros(2, OUT))  # no face at all: zero tokens
    assert out.stats["routed_tokens"] == 2
    nobody = adapter({"face.stage2": features}, {"face": torch.zeros(2, 3, dtype=torch.bool)})
    assert nobody.stats["routed_tokens"] == 0 and nobody.losses["balance"].item() == 0
    nobody.losses["balance"].backward()  # still in the graph
    assert torch.equal(nobody.tokens["face"], torch.zeros(2, 2, OUT))


# -- precision, gradients ------------------------------------------------------------------------------------------


def test_the_router_runs_in_fp32_under_bf16_autocast():
    adapter = build(num_experts=4, top_k=2, shared_expert=True)
    tokens = torch.randn(10, adapter.width).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routing = adapter.route(tokens)
        out = adapter(inputs())
    assert routing.logits.dtype == routing.probs.dtype == routing.weights.dtype == torch.float32
    assert torch.equal(routing.logits, F.linear(tokens.float(), adapter.router.weight))
    assert all(t.dtype == torch.bfloat16 for t in out.tokens.values())  # the experts follow autocast
    assert out.losses["balance"].dtype == out.losses["z"].dtype == torch.float32


def test_router_noise_only_in_training():
    adapter = mixture(num_experts=4, top_k=2, router_noise=0.5)
    tokens = torch.randn(32, 8, generator=torch.Generator().manual_seed(5))
    adapter.eval()
    assert torch.equal(adapter.route(tokens).logits, adapter.route(tokens).logits)
    adapter.train()
    assert not torch.equal(adapter.route(tokens).logits, adapter.route(tokens).logits)


def test_gradients_reach_every_trained_part():
    adapter = build(num_experts=3, top_k=2, shared_expert=True)
    with torch.no_grad():
        adapter.router.weight.normal_(std=1.0)
    out = adapter(inputs(), {"face": torch.tensor([[True, True, False], [True, False, True]])})
    loss = sum(t.square().mean() for t in out.tokens.values()) + out.losses["balance"] + out.losses["z"]
    loss.backward()
    for part, module in adapter.sub_parts().items():
        grads = [p.grad for p in module.parameters()]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), part

    adapter.zero_grad()
    out = adapter(inputs())
    sum(t.sum() for t in out.tokens.values()).backward()  # through the routing weights alone
    assert adapter.router.weight.grad.abs().sum() > 0


# -- upcycling, the dense ablation ----------------------------------------------------------------------------------


def test_init_experts_from_a_projector_module_and_a_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    adapter = build(num_experts=3, top_k=2, shared_expert=True)
    torch.manual_seed(7)
    projector = adapters.build({"name": "omnimm/mlp", "depth": 2}, in_dim=adapter.width, out_dim=OUT)
    adapter.init_experts_from(projector)
    for expert in [*adapter.experts, adapter.shared_expert]:
        for (name, value), (_, copied) in zip(projector.state_dict().items(), expert.state_dict().items(), strict=True):
            assert torch.equal(value, copied), name
    tokens = torch.randn(6, adapter.width)
    # identical experts and weights summing to 1: the mixture is the projector (plus the shared copy)
    assert torch.allclose(adapter.mix(tokens).tokens, 2 * projector(tokens), atol=1e-5)

    model_state = {f"connector.projector.{k}": v for k, v in projector.state_dict().items()}
    model_state["llm.embed.weight"] = torch.zeros(3, 2)
    save_file(model_state, str(tmp_path / "stage1.safetensors"))
    loaded = build(num_experts=2, init_experts_from=str(tmp_path / "stage1.safetensors"))
    assert torch.equal(loaded.experts[1].layers[2].weight, projector.layers[2].weight)
    assert loaded.config.without_weights().init_experts_from is None

    with pytest.raises(ValueError, match=r"projector maps 16 -> 20 -> 20, the experts need 16 -> 8 -> 20"):
        build(num_experts=2, expert_hidden=8).init_experts_from(projector)
    deep = adapters.build({"name": "omnimm/mlp", "depth": 3}, in_dim=adapter.width, out_dim=OUT)
    with pytest.raises(ValueError, match="not a depth-2"):
        adapter.init_experts_from(deep)


@pytest.mark.parametrize("match", ["total", "active"])
def test_matched_dense_has_the_nearest_parameter_count(match):
    config = connectors.validate({"name": NAME, "num_experts": 8, "top_k": 2, "shared_expert": True})
    dense_config = matched_dense(config, GROUPS, OUT, match=match)
    moe, dense = build(**config.model_dump(exclude={"name"})), build(**dense_config.model_dump(exclude={"name"}))
    assert dense.router is None and len(dense.experts) == 1 and dense.width == moe.width == 16

    def count(module, parts):
        return sum(p.numel() for part in parts if (m := module.sub_parts().get(part)) for p in m.parameters())

    mixture_parts = ["router", "experts", "shared_expert"]
    target = mixture_parameters(config, 16, OUT, active=match == "active")
    if match == "total":
        assert count(moe, mixture_parts) == target
    got = count(dense, mixture_parts)
    hidden = dense_config.expert_hidden
    assert got == expert_parameters(16, hidden, OUT)
    assert all(abs(got - target) <= abs(expert_parameters(16, h, OUT) - target) for h in (hidden - 1, hidden + 1))
    others = ["scene", "face_projectors", "level_embeddings"]
    assert count(dense, others) == count(moe, others)
    out = dense(inputs())
    assert out.losses == {} and {n: t.shape for n, t in out.tokens.items()} == {
        n: (2, g.tokens, OUT) for n, g in dense.output_groups(3).items()
    }


def test_describe_prints_the_mixture_and_the_last_routing():
    adapter = build(num_experts=4, top_k=1, capacity_factor=1.5)
    assert (
        adapter.describe()[0] == "mixture of 4 experts 16 -> 20 -> 20, top-1 (raw softmax weight), capacity factor 1.5"
    )
    assert not any(line.startswith("last forward") for line in adapter.describe())
    adapter(inputs())
    last = adapter.describe()[-1]
    assert last.startswith(f"last forward: {int(adapter.last_stats['routed_tokens'])} tokens, loads ")
    assert adapter.last_stats["routed_tokens"] == 2 * (9 + 3) + 2 * (4 + 4 + 1)


# -- inside a video LLM ---------------------------------------------------------------------------------------------


def video_llm(tokenizer, **connector):
    return {
        "name": "omnimm/video-llm",
        "encoders": {
            "vision": {"name": "omnimm/tiny-vit", "image_size": 32, "patch_size": 8, "dim": 32, "heads": 2},
            "face": {  # a stand-in face encoder: three depths of a small random ViT (transformers is loaded anyway)
                "name": "hf/clip-vision",
                "config": {
                    "hidden_size": 24,
                    "num_hidden_layers": 3,
                    "num_attention_heads": 2,
                    "intermediate_size": 48,
                    "image_size": 16,
                    "patch_size": 8,
                },
                "select_layers": [0, 1, 2],
            },
        },
        "connector": {
            "name": NAME,
            "face": ["face.patches_*"],
            "num_experts": 4,
            "top_k": 2,
            "face_groups": "per_level",
            **connector,
        },
        "visual_groups": {"face_0": {"start": "<face_start>", "end": "<face_end>"}},
        "llm": {
            "name": "hf/causal-lm",
            "config": {
                "model_type": "llama",
                "hidden_size": 48,
                "intermediate_size": 96,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
            },
            "tokenizer": str(tokenizer),
        },
        "frames": {"num_frames": 3},
        "freeze": [],
    }


def test_a_two_encoder_video_llm_trains_through_the_mixture(word_tokenizer, tmp_path):
    torch.manual_seed(0)
    model = models.build(video_llm(word_tokenizer))
    assert {"connector.router", "connector.experts", "connector.scene", "connector.face_projectors"} <= set(
        model.parts()
    )
    groups = model.visual_groups(3)
    assert {n: g.tokens for n, g in groups.items()} == {"scene_video": 16 + 3, "face_0": 4, "face_1": 4, "face_2": 4}
    assert model.num_visual_tokens(3) == 19 + 12 + 2
    clip = model.processor.read(write_test_video(tmp_path / "clip.mkv", frames=6))
    example = model.processor.encode([("user", "what?"), ("assistant", "red")], clip)
    out = model(**model.processor.collate([example, example]))
    aux = out["aux_losses"]
    assert set(aux) == {"balance", "z"} and aux["balance"] > 0 and aux["z"] > 0
    assert torch.allclose(out["loss"], out["lm_loss"] + 0.01 * aux["balance"] + 0.001 * aux["z"])
    assert out["connector_stats"]["routed_tokens"] == 2 * (19 + 12)
    out["loss"].backward()
    for part in ("connector.router", "connector.experts", "connector.scene", "connector.level_embeddings"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parts()[part].parameters()), part


def test_scene_references_are_checked_at_validation(word_tokenizer):
    with pytest.raises(ConfigError, match=r"connector.scene.patches: 'vision.pathces' matches no token group"):
        models.validate(video_llm(word_tokenizer, scene={"name": "valley/stpool", "patches": "vision.pathces"}))
    with pytest.raises(ConfigError, match=r"connector.face\[1\]: 'body.x': no encoder 'body'"):
        models.validate(video_llm(word_tokenizer, face=["face.patches_0", "body.x"]))
