"""The valley plugin: pooling formulas, the synthetic data, the demo and the CLI around them."""

from __future__ import annotations

import itertools

import pytest
import torch

from omnimm import ConfigError, connectors
from omnimm.videollm.groups import TokenGroup

from .conftest import SHARED, requires_shared

GROUPS = {"vision.cls": TokenGroup(1, 8), "vision.patches": TokenGroup(4, 8)}


def connector(name="valley/stpool", **options):
    """A connector whose projector is the identity, so the pooling itself is what the tests see."""
    torch.manual_seed(0)
    built = connectors.build({"name": name, **options}, inputs=GROUPS, out_dim=8)
    with torch.no_grad():
        layer = built.projector.layers[0]
        layer.weight.copy_(torch.eye(8))
        layer.bias.zero_()
    return built


@pytest.fixture
def tokens():
    torch.manual_seed(1)
    return torch.randn(2, 5, 1 + 4, 8)  # [batch, T frames, CLS + 4 patches, dim]


def groups(tokens):
    return {"vision.cls": tokens[:, :, :1], "vision.patches": tokens[:, :, 1:]}


def pooled(pool, tokens, group="video"):
    return pool(groups(tokens)).tokens[group]


def test_v1_mean_is_patches_averaged_over_frames_then_the_cls_tokens(tokens):
    pool = connector()
    out = pooled(pool, tokens)
    assert out.shape == (2, 4 + 5, 8)
    assert torch.allclose(out[:, :4], tokens[:, :, 1:].mean(dim=1))
    assert torch.allclose(out[:, 4:], tokens[:, :, 0])
    assert pool.output_groups(5) == {"video": TokenGroup(9, 8, pool.output_groups(5)["video"].description)}


def test_v1_max_no_temporal_tokens_and_split_groups(tokens):
    assert torch.allclose(pooled(connector(reduce="max"), tokens)[:, :4], tokens[:, :, 1:].max(dim=1).values)
    without = connector(temporal_tokens=False)
    assert pooled(without, tokens).shape == (2, 4, 8) and without.num_tokens(5) == 4
    split = connector(split=True)
    out = split(groups(tokens)).tokens
    assert list(out) == ["patches", "temporal"] and [g.tokens for g in split.output_groups(5).values()] == [4, 5]
    assert torch.allclose(torch.cat([out["patches"], out["temporal"]], dim=1), pooled(connector(), tokens))


def test_projecting_first_or_last_is_the_same_for_a_linear_projector(tokens):
    torch.manual_seed(3)
    first = connectors.build({"name": "valley/stpool"}, inputs=GROUPS, out_dim=6)
    last = connectors.build({"name": "valley/stpool", "project_first": False}, inputs=GROUPS, out_dim=6)
    last.load_state_dict(first.state_dict())
    assert torch.allclose(pooled(first, tokens), pooled(last, tokens), atol=1e-6)  # mean and projection commute


def test_v2_weights_frames_by_learned_importance(tokens):
    pool = connector(variant="v2")
    importance = pool.pool.importance
    scores = importance(tokens[:, :, 1:].reshape(2, 5, -1)).softmax(dim=1)
    expected = (scores.unsqueeze(-1) * tokens[:, :, 1:]).sum(dim=1)
    assert torch.allclose(pooled(pool, tokens)[:, :4], expected, atol=1e-6)
    with torch.no_grad():
        importance.weight.zero_()  # equal scores: the weighted sum is the mean
    assert torch.allclose(pooled(pool, tokens)[:, :4], tokens[:, :, 1:].mean(dim=1), atol=1e-6)


def test_v3_is_valleys_last_step_readout_with_sinusoidal_time(tokens):
    pool = connector(variant="v3", heads=2).eval()
    layer = pool.pool.temporal
    assert not layer.norm_first and layer.dropout.p == 0.1 and layer.linear1.out_features == 2048
    assert layer.self_attn.num_heads == 2 and connector(variant="v3").pool.temporal.self_attn.num_heads == 8
    time = torch.zeros(5, 8)  # sin on even channels, cos on odd ones: position 0 is [0, 1, 0, 1, ...]
    position = torch.arange(5.0)[:, None]
    rates = 1.0 / 10000 ** (torch.arange(0, 8, 2) / 8)
    time[:, 0::2], time[:, 1::2] = torch.sin(position * rates), torch.cos(position * rates)
    patches = tokens[:, :, 1:]
    sequences = patches.permute(0, 2, 1, 3).reshape(-1, 5, 8) + time
    readout = layer(sequences)[:, -1].reshape(2, 4, 8)
    assert torch.allclose(pooled(pool, tokens)[:, :4], patches.mean(dim=1) + readout, atol=1e-5)
    assert not torch.allclose(pooled(pool, tokens)[:, :4], pooled(pool, tokens.flip(dims=[1]))[:, :4])


def test_v3_zero_starts_as_v1_and_learns_order(tokens):
    pool = connector(variant="v3-zero", heads=2)
    assert torch.allclose(pooled(pool, tokens), pooled(connector(), tokens))  # the output projection starts at zero
    with torch.no_grad():
        pool.pool.out.weight.normal_()
    reversed_in_time = tokens.flip(dims=[1])
    assert not torch.allclose(pooled(pool, tokens)[:, :4], pooled(pool, reversed_in_time)[:, :4])
    assert torch.allclose(pooled(connector(), tokens)[:, :4], pooled(connector(), reversed_in_time)[:, :4])


def test_v3_checks(tokens):
    with pytest.raises(ValueError, match=r"heads \(3\) must divide the pooled width \(8\)"):
        connector(variant="v3", heads=3)
    with pytest.raises(ValueError, match="covers up to 4 frames \\(max_frames\\), got 5"):
        pooled(connector(variant="v3", heads=2, max_frames=4), tokens)
    with pytest.raises(ValueError, match=r"expects patch tokens \[batch, frames, tokens, dim\]"):
        connector()({"vision.cls": tokens[0, :, :1], "vision.patches": tokens[0, :, 1:]})
    with pytest.raises(ValueError, match=r"cls 'vision\.patches' has 4 tokens per frame; it needs one"):
        connectors.build({"name": "valley/stpool", "cls": "vision.patches"}, inputs=GROUPS, out_dim=8)


def test_video_chatgpt_pooling(tokens):
    pool = connector("valley/vcgpt-pool")
    out = pooled(pool, tokens)
    assert out.shape == (2, 5 + 4, 8) and pool.num_tokens(5) == 9
    assert torch.allclose(out[:, :5], tokens[:, :, 1:].mean(dim=2), atol=1e-6)
    assert torch.allclose(out[:, 5:], tokens[:, :, 1:].mean(dim=1), atol=1e-6)


def test_stpool_config_is_validated():
    with pytest.raises(ConfigError, match=r"variant: Input should be 'v1', 'v2', 'v3' or 'v3-zero'"):
        connectors.validate({"name": "valley/stpool", "variant": "v4"})


def test_shapes_are_rendered_moving_the_right_way(tmp_path):
    import numpy as np

    from omnimm.video import read_video
    from omnimm_plugins.valley.shapes import Clip, generate_shapes, load_clips, render_clip

    clip = Clip("x", "x", "train", "red", "square", 1, "left")
    frames = render_clip(clip, frames=6, size=64, rng=np.random.default_rng(0))
    red = [np.argwhere(f[..., 0] > 200)[:, 1].mean() for f in frames]
    assert all(a > b for a, b in itertools.pairwise(red))  # moving left: x decreases
    root = generate_shapes(tmp_path / "shapes", train=4, test=2)
    clips = load_clips(root, "train")
    assert len(clips) == 4 and len(load_clips(root, "test")) == 2
    decoded = read_video(root / clips[0].file)
    assert decoded.frames.shape == (8, 64, 64, 3)
    assert clips[0].caption().endswith(f"moving {clips[0].direction}.")


def test_demo_quick_run_prints_accuracy_per_question_type(cli, tmp_path):
    result = cli("demo", "valley", "--quick", "--no-ablation", "--workdir", tmp_path / "demo")
    assert result.returncode == 0, result.output[-3000:]
    for kind in ("colour", "shape", "count", "direction"):
        assert kind in result.stdout
    assert "valley (24 visual tokens)" in result.stdout
    assert "time: data" in result.stdout
    assert (tmp_path / "demo" / "valley.yaml").is_file()  # the exact run, re-runnable with `omnimm train`


@requires_shared
def test_video_inspect_on_a_real_video(cli):
    result = cli("video", "inspect", SHARED / "data" / "video" / "flipping_a_pancake.mkv", "--config", "valley:inspect")
    assert result.returncode == 0, result.output
    assert "8 frames sampled (num_frames=8)" in result.stdout
    assert "│ 7 │         309 │   10.300 │" in result.stdout
    line = next(line for line in result.stdout.splitlines() if "connector (valley/stpool) -> video" in line)
    assert "[204, 64]" in line
    assert "encoders.vision (openclip/vit) -> vision.patches" in result.stdout and "[8, 196, 64]" in result.stdout
    assert "tokens into the LLM: 204 visual" in result.stdout and "8 x 197 = 1576 visual" in result.stdout


@requires_shared
def test_video_inspect_on_a_corrupted_video_fails_in_one_line(cli):
    result = cli("video", "inspect", SHARED / "data" / "video" / "corrupted.mp4", "-c", "valley:inspect")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {SHARED / 'data' / 'video' / 'corrupted.mp4'}: cannot decode video (Invalid data found when "
        "processing input)"
    ]


def test_train_command_runs_a_run_file(cli, tmp_path, word_tokenizer):
    import json

    import numpy as np
    from PIL import Image

    from .conftest import video_llm_config

    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "data.json").write_text(
        json.dumps(
            [
                {
                    "image": "a.png",
                    "conversations": [{"from": "human", "value": "what?"}, {"from": "gpt", "value": "red"}],
                }
            ]
            * 4
        )
    )
    run = {
        "model": video_llm_config(word_tokenizer),
        "train": {
            "output_dir": str(tmp_path / "out"),
            "stages": [
                {
                    "name": "only",
                    "train": ["connector"],
                    "batch_size": 2,
                    "max_steps": 2,
                    "data": {"name": "omnimm/conversations", "path": str(tmp_path / "data.json")},
                }
            ],
        },
    }
    (tmp_path / "run.json").write_text(json.dumps(run))
    result = cli("train", tmp_path / "run.json", "--no-progress")
    assert result.returncode == 0, result.output[-3000:]
    assert result.stdout.strip().endswith(f"done: {tmp_path / 'out' / 'only' / 'final'}")
    assert (tmp_path / "out" / "only" / "final" / "model.safetensors").is_file()


def test_packaged_configs_are_valid():
    from omnimm.config import load_config, resolve_config_path

    inspect = resolve_config_path("valley:inspect")
    assert inspect.name == "inspect.yaml" and inspect.parent.name == "configs"
    assert load_config("valley:inspect", into="models").name == "omnimm/video-llm"
    recipe = load_config("valley:recipe")
    assert recipe.train.stages[0].train == ["connector.projector", "delimiters"]
    assert recipe.train.stages[1].lora.rank == 16 and recipe.train.stages[1].lora.alpha == 32
    assert recipe.train.stages[1].learning_rate == 5e-4 and "connector.pool" in recipe.train.stages[1].train
    assert recipe.model.encoders["vision"].resize_to == 256 and recipe.model.connector.split
    with pytest.raises(FileNotFoundError, match="plugin 'valley' ships no config 'nope' \\(it ships: "):
        resolve_config_path("valley:nope")
