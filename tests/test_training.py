"""Training stages: exactly the named parts learn, LoRA, learning rates, checkpoints, resume, data parallelism."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from omnimm import ConfigError, models
from omnimm.run import RunConfig
from omnimm.training.configs import StageConfig
from omnimm.training.trainer import _parameter_groups, run_training, set_trainable

from .conftest import REPO, video_llm_config

ANSWERS = ["red", "blue", "a clip of pancakes flipping", "yes", "green", "no", "a clip", "yellow"]


@pytest.fixture
def image_data(tmp_path):
    """Eight small images with one question each; answers of different lengths (the loss must weigh tokens)."""
    rng = np.random.default_rng(0)
    records = []
    for index, answer in enumerate(ANSWERS):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"{index}.png")
        records.append(
            {
                "image": f"{index}.png",
                "conversations": [{"from": "human", "value": "what colour is it?"}, {"from": "gpt", "value": answer}],
            }
        )
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return {"name": "omnimm/conversations", "path": str(path)}


@pytest.fixture
def video_data(tmp_path):
    """Four short videos (the temporal parts of an adapter only learn from more than one frame)."""
    from .conftest import write_test_video

    turns = [{"from": "human", "value": "what colour is it?"}, {"from": "gpt", "value": "red"}]
    records = []
    for index in range(4):
        write_test_video(tmp_path / f"{index}.mkv", frames=6 + index)
        records.append({"video": f"{index}.mkv", "conversations": turns})
    path = tmp_path / "videos.json"
    path.write_text(json.dumps(records))
    return {"name": "omnimm/conversations", "path": str(path)}


def one_step_grads(model, patterns, data_config):
    from omnimm.registry import datasets

    set_trainable(model, patterns)
    dataset = datasets.build(data_config, processor=model.processor)
    batch = model.processor.collate([dataset[i] for i in range(4)])
    model.zero_grad(set_to_none=True)
    model(**batch)["loss"].backward()
    return {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def part_of(name: str) -> str:
    """The part a parameter belongs to, as stages name it (`connector.pool`, `llm`, `encoders.vision`)."""
    head, _, rest = name.partition(".")
    return f"{head}.{rest.split('.')[0]}" if head in ("connector", "encoders") else head


@pytest.mark.parametrize(
    ("patterns", "expected_parts"),
    [
        (["connector.projector"], {"connector.projector"}),
        (["connector", "llm"], {"connector.projector", "connector.pool", "llm"}),
        (["connector.pool"], {"connector.pool"}),
        (["encoders"], {"encoders.vision"}),
    ],
)
def test_gradients_reach_exactly_the_parts_a_stage_trains(word_tokenizer, video_data, patterns, expected_parts):
    torch.manual_seed(0)
    config = video_llm_config(word_tokenizer, connector={"name": "valley/stpool", "variant": "v2"})
    model = models.build(config)
    with_grad = one_step_grads(model, patterns, video_data)
    for name, parameter in model.named_parameters():
        if part_of(name) in expected_parts:
            assert parameter.requires_grad, name
        else:
            assert not parameter.requires_grad and parameter.grad is None, name
    assert {part_of(name) for name in with_grad} == expected_parts  # every trained part really learns


def test_with_lora_only_the_adapters_of_the_llm_learn(word_tokenizer, image_data):
    torch.manual_seed(0)
    model = models.build(video_llm_config(word_tokenizer))
    model.add_lora(rank=2, target_modules=["q_proj", "v_proj"])
    with_grad = one_step_grads(model, ["connector", "llm"], image_data)
    llm_grads = {n for n in with_grad if n.startswith("llm.")}
    assert llm_grads and all("lora_" in n for n in llm_grads)
    assert any(n.startswith("connector.projector.") for n in with_grad)
    base = [p for n, p in model.llm.named_parameters() if "lora_" not in n]
    assert not any(p.requires_grad for p in base)
    model.merge_lora()
    assert not model.has_lora
    assert not any("lora_" in name for name, _ in model.named_parameters())


def test_part_learning_rates_make_optimizer_groups(word_tokenizer, image_data):
    model = models.build(video_llm_config(word_tokenizer))
    set_trainable(model, ["connector", "llm"])
    stage = StageConfig(
        name="s",
        train=["connector", "llm"],
        data=image_data,
        learning_rate=1e-4,
        part_learning_rates={"connector.projector": 1e-2},
    )
    groups = {group["lr"]: sum(p.numel() for p in group["params"]) for group in _parameter_groups(model, stage)}
    assert groups[1e-2] == sum(p.numel() for p in model.connector.projector.parameters())
    assert groups[1e-4] == sum(p.numel() for p in model.llm.parameters())


def run_config(word_tokenizer, data, output, **stage):
    return {
        "model": video_llm_config(word_tokenizer),
        "train": {
            "output_dir": str(output),
            "stages": [
                {
                    "name": "stage1",
                    "train": ["connector", "llm"],
                    "data": data,
                    "learning_rate": 1e-2,
                    "batch_size": 4,
                    "scheduler": "constant",
                    "warmup_ratio": 0.0,
                    "shuffle": False,
                    "logging_steps": 1,
                    **stage,
                }
            ],
        },
    }


def test_stage_parts_are_checked_against_the_model(word_tokenizer, image_data, tmp_path):
    config = run_config(word_tokenizer, image_data, tmp_path, train=["connector", "lm"])
    with pytest.raises(ConfigError, match=r"train\.stages\[0\]\.train\[1\]: 'lm' matches no part"):
        RunConfig.from_dict(config)


def test_train_checkpoint_and_resume(word_tokenizer, image_data, tmp_path):
    out = tmp_path / "out"
    run = RunConfig.from_dict(run_config(word_tokenizer, image_data, out, max_steps=2, save_steps=1))
    first = run_training(run, progress=False)
    final = out / "stage1" / "final"
    assert (final / "model.safetensors").is_file() and (out / "stage1" / "checkpoint-2").is_dir()
    # A finished stage is loaded, not retrained.
    stamp = (final / "model.safetensors").stat().st_mtime_ns
    again = run_training(run, resume=True, progress=False)
    assert (final / "model.safetensors").stat().st_mtime_ns == stamp
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # An unfinished stage continues from its last checkpoint.
    import shutil

    shutil.rmtree(final)
    longer = RunConfig.from_dict(run_config(word_tokenizer, image_data, out, max_steps=4, save_steps=1))
    run_training(longer, resume=True, progress=False)
    state = json.loads((out / "stage1" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4]


def test_two_process_data_parallel_matches_one_process(word_tokenizer, image_data, tmp_path):
    from safetensors.torch import load_file

    script = REPO / "tests" / "scripts" / "train_run.py"
    runs = {}
    for label, batch_size, launcher in [
        ("single", 4, [sys.executable]),
        ("ddp", 2, [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]),
    ]:
        config = tmp_path / f"{label}.json"
        config.write_text(
            json.dumps(
                run_config(
                    word_tokenizer, image_data, tmp_path / label, max_steps=2, batch_size=batch_size, save_steps=100
                )
            )
        )
        done = subprocess.run(
            [*launcher, str(script), str(config)],
            capture_output=True,
            text=True,
            timeout=600,
            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        runs[label] = load_file(tmp_path / label / "stage1" / "final" / "model.safetensors")
    torch.manual_seed(0)  # the run's seed: the initial weights both runs started from
    initial = models.build(video_llm_config(word_tokenizer)).state_dict()
    assert set(runs["single"]) <= set(initial)
    for name, single in runs["single"].items():
        # Two Adam steps of lr 1e-2 move weights by up to 2e-2; float32 sums in another order differ by ~1e-5 after
        # Adam's normalisation (measured max 1.3e-5), so 1e-4 is far above the noise and far below any real change.
        difference = float((single - runs["ddp"][name]).abs().max())
        assert difference < 1e-4, f"{name}: single and two-process weights differ by {difference:.2e}"
        trained = name.startswith(("connector.", "llm."))
        # Training moved exactly the trained weights, identically in both setups; the frozen encoder stayed put.
        assert trained != torch.equal(single, initial[name]), name


def test_no_train_section():
    with pytest.raises(ValueError, match="no `train:` section"):
        run_training(
            RunConfig.model_validate(
                {"model": {"name": "omnimm/multimodal-encoder", "encoders": {"a": "omnimm/tiny-vit"}}}
            )
        )
