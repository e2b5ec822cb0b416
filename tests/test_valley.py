"""The valley plugin: pooling formulas, the synthetic data, the demo and the CLI around them."""

from __future__ import annotations

import itertools

import pytest
import torch

from omnimm import ConfigError, adapters

from .conftest import SHARED, requires_shared


def stpool(dim=8, patches=4, **options):
    torch.manual_seed(0)
    return adapters.build({"name": "valley/stpool", **options}, dim=dim, num_patches=patches)


@pytest.fixture
def tokens():
    torch.manual_seed(1)
    return torch.randn(2, 5, 1 + 4, 8)  # [batch, T frames, CLS + 4 patches, dim]


def test_v1_mean_is_patches_averaged_over_frames_then_the_cls_tokens(tokens):
    out = stpool()(tokens)
    assert out.shape == (2, 4 + 5, 8)
    assert torch.allclose(out[:, :4], tokens[:, :, 1:].mean(dim=1))
    assert torch.equal(out[:, 4:], tokens[:, :, 0])
    assert stpool().num_tokens(5, 4) == 9


def test_v1_max_and_no_temporal_tokens(tokens):
    assert torch.equal(stpool(reduce="max")(tokens)[:, :4], tokens[:, :, 1:].max(dim=1).values)
    pooled = stpool(temporal_tokens=False)
    assert pooled(tokens).shape == (2, 4, 8) and pooled.num_tokens(5, 4) == 4


def test_v2_weights_frames_by_learned_importance(tokens):
    pool = stpool(variant="v2")
    scores = pool.importance(tokens[:, :, 1:].reshape(2, 5, -1)).softmax(dim=1)
    expected = (scores.unsqueeze(-1) * tokens[:, :, 1:]).sum(dim=1)
    assert torch.allclose(pool(tokens)[:, :4], expected, atol=1e-6)
    with torch.no_grad():
        pool.importance.weight.zero_()  # equal scores: the weighted sum is the mean
    assert torch.allclose(pool(tokens)[:, :4], tokens[:, :, 1:].mean(dim=1), atol=1e-6)


def test_v3_starts_as_v1_and_learns_order(tokens):
    pool = stpool(variant="v3", heads=2)
    assert torch.allclose(pool(tokens), stpool()(tokens))  # the output projection starts at zero
    with torch.no_grad():
        pool.out.weight.normal_()
    reversed_in_time = tokens.flip(dims=[1])
    assert not torch.allclose(pool(tokens)[:, :4], pool(reversed_in_time)[:, :4])  # time order now matters
    assert torch.allclose(stpool()(tokens)[:, :4], stpool()(reversed_in_time)[:, :4])  # the mean cannot tell


def test_v3_checks(tokens):
    with pytest.raises(ValueError, match=r"heads \(3\) must divide the width \(8\)"):
        stpool(variant="v3", heads=3)
    with pytest.raises(ValueError, match="covers up to 4 frames, got 5"):
        stpool(variant="v3", heads=2, max_frames=4)(tokens)
    with pytest.raises(ValueError, match=r"expects frame tokens \[batch, frames, 1 \+ patches, dim\]"):
        stpool()(tokens[0])


def test_video_chatgpt_pooling(tokens):
    pool = adapters.build({"name": "valley/vcgpt-pool"}, dim=8, num_patches=4)
    out = pool(tokens)
    assert out.shape == (2, 5 + 4, 8) and pool.num_tokens(5, 4) == 9
    assert torch.allclose(out[:, :5], tokens[:, :, 1:].mean(dim=2))
    assert torch.allclose(out[:, 5:], tokens[:, :, 1:].mean(dim=1))


def test_stpool_config_is_validated():
    with pytest.raises(ConfigError, match=r"variant: Input should be 'v1', 'v2' or 'v3'"):
        adapters.validate({"name": "valley/stpool", "variant": "v4"})


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
    result = cli("video", "inspect", SHARED / "data" / "video" / "flipping_a_pancake.mkv")
    assert result.returncode == 0, result.output
    assert "8 frames sampled (num_frames=8)" in result.stdout
    assert "│ 7 │         309 │   10.300 │" in result.stdout
    assert "adapter (valley/stpool)        │ [204, 64]" in result.stdout
    assert "tokens into the LLM: 204 visual" in result.stdout and "8 x 197 = 1576 visual" in result.stdout


@requires_shared
def test_video_inspect_on_a_corrupted_video_fails_in_one_line(cli):
    result = cli("video", "inspect", SHARED / "data" / "video" / "corrupted.mp4")
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
                    "train": ["projector"],
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
    assert load_config("valley:recipe").train.stages[0].train == ["projector"]
    with pytest.raises(FileNotFoundError, match="plugin 'valley' ships no config 'nope' \\(it ships: "):
        resolve_config_path("valley:nope")
