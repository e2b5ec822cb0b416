"""A composition the video LLM was not shaped around: two encoders, one of them giving tokens from several depths,
a connector with two output groups, sub-parts and an auxiliary loss, delimiters around a group."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
import torch
from pydantic import Field
from torch import nn

from omnimm import ConfigError, connectors, models
from omnimm.run import RunConfig
from omnimm.training.trainer import run_training, set_trainable
from omnimm.videollm.configs import ConnectorConfig
from omnimm.videollm.connector import Connector
from omnimm.videollm.groups import ConnectorOutput, TokenGroup

from .conftest import write_test_video

AUX_WEIGHT = 0.25


class ToyConfig(ConnectorConfig):
    scene: str = "vision.patches"
    depths: list[str] = Field(default_factory=lambda: ["face.patches_0", "face.patches_1"])

    def group_patterns(self) -> dict[str, list[str]]:
        return {"scene": [self.scene], "depths": list(self.depths)}

    def part_names(self) -> list[str]:
        return ["router", "experts"]


class ToyConnector(Connector):
    """`scene`: one token per frame (mean over the scene patches); `face`: one token per depth (mean over frames and
    tokens). Its auxiliary loss: the squared mean of the router's logits."""

    default_loss_weights: ClassVar[dict[str, float]] = {"router_z": 1.0}

    def __init__(self, config: ToyConfig, *, inputs, out_dim: int) -> None:
        super().__init__(config, inputs=inputs, out_dim=out_dim)
        width = inputs[config.depths[0]].dim
        self.scene_projector = nn.Linear(inputs[config.scene].dim, out_dim)
        self.router = nn.Linear(width, 2, bias=False)
        self.experts = nn.ModuleList([nn.Linear(width, out_dim) for _ in range(2)])

    def output_groups(self, frames: int) -> dict[str, TokenGroup]:
        return {"scene": TokenGroup(frames, self.out_dim), "face": TokenGroup(len(self.config.depths), self.out_dim)}

    def forward(self, groups, masks=None) -> ConnectorOutput:
        scene = self.scene_projector(groups[self.config.scene].mean(dim=2))  # [B, T, H]
        depth_tokens = torch.stack([groups[ref].mean(dim=(1, 2)) for ref in self.config.depths], dim=1)  # [B, L, d]
        logits = self.router(depth_tokens)
        weights = logits.softmax(dim=-1)
        face = sum(weights[..., e : e + 1] * expert(depth_tokens) for e, expert in enumerate(self.experts))
        return ConnectorOutput({"scene": scene, "face": face}, losses={"router_z": logits.mean().square()})


@pytest.fixture(scope="module", autouse=True)
def toy_connector():
    connectors.register("test/toy", ToyConnector, config=ToyConfig)
    yield
    connectors.unregister("test/toy")


def composed(tokenizer, **overrides):
    config = {
        "name": "omnimm/video-llm",
        "encoders": {
            "vision": {"name": "omnimm/tiny-vit", "image_size": 32, "patch_size": 8, "dim": 32, "heads": 2},
            "face": {
                "name": "openclip/vit",
                "overrides": {"width": 24, "layers": 3, "head_width": 12, "image_size": 16, "patch_size": 8},
                "select_layers": [-1, 0],
            },
        },
        "connector": {"name": "test/toy", "loss_weights": {"router_z": AUX_WEIGHT}},
        "visual_groups": {"face": {"start": "<face_start>", "end": "<face_end>"}},
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
    config.update(overrides)
    return config


@pytest.fixture
def model(word_tokenizer):
    torch.manual_seed(0)
    return models.build(composed(word_tokenizer))


def test_token_counts_from_the_specs_equal_the_real_ones(model, tmp_path):
    assert model.encoder_groups == {
        "vision.cls": TokenGroup(1, 32, model.encoder_groups["vision.cls"].description),
        "vision.patches": TokenGroup(16, 32, model.encoder_groups["vision.patches"].description),
        "face.cls_0": TokenGroup(1, 24, model.encoder_groups["face.cls_0"].description),
        "face.patches_0": TokenGroup(4, 24, model.encoder_groups["face.patches_0"].description),
        "face.cls_1": TokenGroup(1, 24, model.encoder_groups["face.cls_1"].description),
        "face.patches_1": TokenGroup(4, 24, model.encoder_groups["face.patches_1"].description),
    }
    clip = model.processor.read(write_test_video(tmp_path / "clip.mkv", frames=9))
    groups, _ = model.encode_frames({key: [value] for key, value in model.processor.pixels(clip).items()})[0]
    assert {ref: tuple(t.shape) for ref, t in groups.items()} == {
        ref: (3, group.tokens, group.dim) for ref, group in model.encoder_groups.items()
    }
    example = model.processor.encode([("user", "what?"), ("assistant", "red")], clip)
    layout = model.layout
    for name, group in model.visual_groups(3).items():
        assert example.input_ids.count(layout.placeholders[name]) == group.tokens
    assert model.num_visual_tokens(3) == 3 + 2 + 2  # scene + face + the face group's two delimiters
    positions = sum(example.input_ids.count(i) for i in layout.all_ids())
    assert positions == model.num_visual_tokens(3)
    start = example.input_ids.index(layout.delimiter_ids[0])
    assert example.input_ids[start : start + 4] == [
        *layout.delimiter_ids[:1],
        *[layout.placeholders["face"]] * 2,
        layout.delimiter_ids[1],
    ]


def test_a_second_encoder_cls_is_never_pooled_as_a_patch(model):
    # Each block of the face encoder gives its own CLS group and patch group; nothing mixes them.
    assert model.encoder_groups["face.cls_0"].tokens == 1 and model.encoder_groups["face.patches_0"].tokens == 4


def test_one_training_step_reaches_exactly_the_trained_parts_and_logs_the_auxiliary_loss(word_tokenizer, tmp_path):
    write_test_video(tmp_path / "a.mkv", frames=6)
    records = [
        {"video": "a.mkv", "conversations": [{"from": "human", "value": "what?"}, {"from": "gpt", "value": "red"}]}
    ] * 4
    (tmp_path / "data.json").write_text(json.dumps(records))
    trained = ["connector.experts", "encoders.face", "delimiters"]
    run = RunConfig.from_dict(
        {
            "model": composed(word_tokenizer),
            "train": {
                "output_dir": str(tmp_path / "run"),
                "stages": [
                    {
                        "name": "one",
                        "train": trained,
                        "data": {"name": "omnimm/conversations", "path": str(tmp_path / "data.json")},
                        "max_steps": 1,
                        "batch_size": 4,
                        "logging_steps": 1,
                        "learning_rate": 1e-2,
                        "warmup_ratio": 0.0,
                        "scheduler": "constant",
                    }
                ],
            },
        }
    )
    torch.manual_seed(0)
    model = models.build(run.model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    set_trainable(model, trained)
    batch = model.processor.collate(
        [model.processor.encode([("user", "what?"), ("assistant", "red")], model.processor.read(tmp_path / "a.mkv"))]
    )
    out = model(**batch)
    assert torch.allclose(out["loss"], out["lm_loss"] + AUX_WEIGHT * out["aux_losses"]["router_z"])
    assert out["aux_losses"]["router_z"] > 0
    out["loss"].backward()
    parts = model.parts()
    owners = {id(p): part for part in trained for p in parts[part].parameters()}
    reached = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    by_part = {owners.get(id(p), "untrained") for name, p in model.named_parameters() if name in reached}
    assert by_part == set(trained)  # every listed part learns, nothing else does
    model.zero_grad(set_to_none=True)

    model = run_training(run, progress=False, model=model)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    assert changed == reached, (sorted(changed - reached)[:5], sorted(reached - changed)[:5])
    state = json.loads((tmp_path / "run" / "one" / "final" / "config.json").read_text())
    assert state["omnimm"]["connector"]["loss_weights"] == {"router_z": AUX_WEIGHT}
    history = json.loads(next((tmp_path / "run" / "one").glob("checkpoint-*/trainer_state.json")).read_text())
    logged = history["log_history"][0]
    assert logged["aux_router_z"] > 0 and "lm_loss" in logged
    assert logged["loss"] == pytest.approx(logged["lm_loss"] + AUX_WEIGHT * logged["aux_router_z"], rel=1e-3)


def test_group_references_are_checked_when_the_config_is_validated(word_tokenizer):
    with pytest.raises(ConfigError, match=r"connector.scene: 'vision.pathces' matches no token group"):
        models.validate(composed(word_tokenizer, connector={"name": "test/toy", "scene": "vision.pathces"}))
    with pytest.raises(ConfigError, match=r"connector.depths\[1\]: 'body.patches_1': no encoder 'body'"):
        models.validate(
            composed(word_tokenizer, connector={"name": "test/toy", "depths": ["face.patches_0", "body.patches_1"]})
        )
    with pytest.raises(ConfigError, match=r"freeze\[0\]: 'connector.routr' matches no part"):
        models.validate(composed(word_tokenizer, freeze=["connector.routr"]))


def test_a_projector_is_not_a_connector(word_tokenizer):
    with pytest.raises(ConfigError, match=r"connector.name: .*'omnimm/mlp'.* adapter"):
        models.validate(composed(word_tokenizer, connector={"name": "omnimm/mlp"}))
    with pytest.raises(ConfigError, match=r"adapter: 'adapter' was replaced by 'connector'"):
        models.validate({**composed(word_tokenizer), "adapter": {"name": "valley/stpool"}})
