"""The frozen-encoder feature cache: frozen encoders run without autograd, a cached run trains exactly like an
uncached one without calling the encoder again, every change of setting misses, damaged files are recomputed."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from omnimm import models
from omnimm.files import safetensors_problem
from omnimm.run import RunConfig
from omnimm.training.trainer import set_trainable, train_stage
from omnimm.videollm.model import saved_config

from .conftest import video_llm_config

ANSWERS = ["red", "blue", "a clip of pancakes flipping", "yes", "green", "no", "a clip", "yellow"]


@pytest.fixture
def image_data(tmp_path):
    rng = np.random.default_rng(0)
    records = []
    for index, answer in enumerate(ANSWERS):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"{index}.png")
        turns = [{"from": "human", "value": "what colour is it?"}, {"from": "gpt", "value": answer}]
        records.append({"image": f"{index}.png", "conversations": turns})
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return {"name": "omnimm/conversations", "path": str(path)}


def build(tokenizer, **overrides):
    torch.manual_seed(0)
    return models.build(video_llm_config(tokenizer, **overrides))


def count_calls(module):
    calls = []
    module.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    return calls


def clip(frames=4, seed=0):
    return torch.randn(frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def encode(model, *clips):
    groups = model.encode_frames({"vision": list(clips)})
    return [dict(sample) for sample, _ in groups]


def test_a_frozen_encoder_runs_without_autograd_a_trained_one_with(word_tokenizer):
    model = build(word_tokenizer).train()
    calls = count_calls(model.encoders["vision"])
    set_trainable(model, ["connector"])
    encode(model, clip())
    set_trainable(model, ["encoders", "connector"])
    groups = encode(model, clip())[0]
    assert calls == [False, True]
    assert groups["vision.patches"].requires_grad


def stage_run(tokenizer, data, output, **model):
    config = {
        "model": video_llm_config(tokenizer, **model),
        "train": {
            "output_dir": str(output),
            "stages": [
                {
                    "name": "stage1",
                    "train": ["connector"],
                    "data": data,
                    "learning_rate": 1e-2,
                    "batch_size": 4,
                    "epochs": 2,
                    "scheduler": "constant",
                    "warmup_ratio": 0.0,
                    "shuffle": False,
                    "logging_steps": 1,
                    "save_steps": 100,
                }
            ],
        },
    }
    return RunConfig.from_dict(config)


def test_cached_stage1_matches_uncached_and_the_second_epoch_skips_the_encoder(word_tokenizer, image_data, tmp_path):
    cache = tmp_path / "cache"
    losses, calls = {}, {}
    for label, options in [("plain", {}), ("cached", {"feature_cache": str(cache)})]:
        run = stage_run(word_tokenizer, image_data, tmp_path / label, **options)
        model = build(word_tokenizer, **options)
        calls[label] = count_calls(model.encoders["vision"])
        trainer = train_stage(model, run.train, run.train.stages[0], progress=False)
        losses[label] = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses["plain"]) == 4  # 8 items, batches of 4, two epochs
    assert losses["cached"] == losses["plain"]  # bit for bit: the cache returns what the encoder gave
    assert len(calls["plain"]) == 4 and len(calls["cached"]) == 2  # epoch 2 read every clip from the cache
    assert model.feature_cache.stats == {"hits": 8, "misses": 8}
    assert len(list(cache.glob("*/*.safetensors"))) == 8


def test_every_change_of_setting_misses_the_cache(word_tokenizer, tmp_path):
    cache = str(tmp_path / "cache")
    model = build(word_tokenizer, feature_cache=cache).eval()
    first = encode(model, clip())[0]
    again = encode(model, clip())[0]
    assert model.feature_cache.stats == {"hits": 1, "misses": 1}
    assert all(torch.equal(first[ref], again[ref]) for ref in first)
    encode(model, clip(seed=1))  # other frames (an in-memory clip is keyed by its frames)
    assert model.feature_cache.stats["misses"] == 2

    state = model.state_dict()
    encoder = video_llm_config(word_tokenizer)["encoders"]["vision"]
    for change in [
        {"encoders": {"vision": {**encoder, "dropout": 0.1}}},  # a config field that leaves the weights alone
        {"frames": {"num_frames": 3}},  # the sampling, even for the very same frames tensor
    ]:
        other = build(word_tokenizer, feature_cache=cache, **change).eval()
        other.load_state_dict(state)
        same = encode(other, clip())[0]
        assert other.feature_cache.stats == {"misses": 1}, change
        assert all(torch.equal(first[ref], same[ref]) for ref in first)  # same output, another cache entry
    with torch.no_grad():
        next(model.encoders["vision"].parameters()).add_(0.5)  # new weights
    encode(model, clip())
    assert model.feature_cache.stats["misses"] == 3
    model.train()  # train mode may compute otherwise (fused eval kernels): its own entry
    encode(model, clip())
    assert model.feature_cache.stats["misses"] == 4
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision gives other numbers
        encode(model, clip())
    assert model.feature_cache.stats["misses"] == 5
    assert len({path.parent for path in (tmp_path / "cache").glob("*/*.safetensors")}) == 6


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "wrong shape"])
def test_a_damaged_cache_file_is_recomputed_with_a_warning(word_tokenizer, tmp_path, caplog, damage):
    model = build(word_tokenizer, feature_cache=str(tmp_path / "cache")).eval()
    first = encode(model, clip())[0]
    (path,) = (tmp_path / "cache").glob("*/*.safetensors")
    data = path.read_bytes()
    if damage == "wrong shape":
        from safetensors.torch import save_file

        save_file({"cls": torch.zeros(2, 1, 32), "patches": torch.zeros(2, 16, 32)}, path)
    else:
        path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\xff" * 64, "empty": b""}[damage])
    with caplog.at_level(logging.WARNING, logger="omnimm.videollm.feature_cache"):
        again = encode(model, clip())[0]
    assert "computing the features again" in caplog.text and str(path) in caplog.text
    assert model.feature_cache.stats == {"misses": 2, "damaged": 1}
    assert all(torch.equal(first[ref], again[ref]) for ref in first)
    assert safetensors_problem(path) is None and path.read_bytes() == data  # written again, whole


def test_a_batch_mixes_cached_and_new_clips_in_order(word_tokenizer, tmp_path):
    model = build(word_tokenizer, feature_cache=str(tmp_path / "cache")).eval()
    plain = build(word_tokenizer).eval()
    encode(model, clip(seed=1))
    clips = [clip(seed=0), clip(frames=2, seed=1), clip(seed=1), clip(frames=3, seed=2)]
    cached, reference = encode(model, *clips), encode(plain, *clips)
    assert model.feature_cache.stats == {"hits": 1, "misses": 4}
    for ours, theirs in zip(cached, reference, strict=True):
        assert ours.keys() == theirs.keys()
        for ref in ours:  # the uncached batch runs every clip at once: equal up to float summation order
            torch.testing.assert_close(ours[ref], theirs[ref], rtol=0, atol=1e-5)


def test_the_cache_folder_is_not_saved_with_the_model(word_tokenizer, tmp_path):
    model = build(word_tokenizer, feature_cache=str(tmp_path / "cache"))
    model.save_pretrained(tmp_path / "saved")
    assert saved_config(tmp_path / "saved").feature_cache is None
    assert model.config.feature_cache == str(tmp_path / "cache")
