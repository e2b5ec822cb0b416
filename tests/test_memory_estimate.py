"""The training memory estimate: exact for parameters, gradients and AdamW state against a real step, close for
activations, sharded as each mode shards; `omnimm build RUN --memory` prints it and refuses bad options in one line."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from omnimm import models
from omnimm.registry import datasets
from omnimm.run import RunConfig
from omnimm.training.memory import MemoryEstimate, PartMemory, estimate_memory, memory_report, prepare_stage
from omnimm.training.trainer import _parameter_groups

from .conftest import video_llm_config

LLM = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    records = []
    for index in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{index}.png")
        # equal lengths: no padding, so the batch is exactly batch x sequence tokens
        turns = [{"from": "human", "value": "what colour is it ?"}, {"from": "gpt", "value": "red blue green yellow"}]
        records.append({"image": f"{index}.png", "conversations": turns})
    (folder / "data.json").write_text(json.dumps(records))
    return {"name": "omnimm/conversations", "path": str(folder / "data.json")}


def config(word_tokenizer, **overrides):
    model = video_llm_config(word_tokenizer)
    model["llm"]["config"].update(LLM, vocab_size=512)  # logits large enough to matter
    model.update(overrides)
    return model


def run(word_tokenizer, data, tmp_path, *stages, **train):
    stage_list = [
        {"name": name, "train": parts, "data": data, "batch_size": 4, **extra} for name, parts, extra in stages
    ]
    return RunConfig.from_dict(
        {"model": config(word_tokenizer), "train": {"output_dir": str(tmp_path), "stages": stage_list, **train}}
    )


def nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def one_step(model, stage, data):
    """Forward, backward and an AdamW step as the Trainer runs them; what each kind of tensor took, and the
    bytes autograd kept for the backward (distinct storages, parameters excluded)."""
    batch = model.processor.collate([datasets.build(data, processor=model.processor)[i] for i in range(4)])
    optimizer = torch.optim.AdamW(_parameter_groups(model, stage), lr=1e-3)
    own = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in own:
            kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model.train()(**batch)["loss"]
    loss.backward()
    grads = nbytes(p.grad for p in model.parameters() if p.grad is not None)
    optimizer.step()
    moments = [v for s in optimizer.state.values() for k, v in s.items() if k != "step"]
    text = batch["input_ids"].shape[1] - model.num_visual_tokens(4)
    return {"gradients": grads, "optimizer": nbytes(moments), "kept": sum(kept.values()), "text": text}


@pytest.mark.parametrize(
    ("parts", "lora"),
    [(["connector"], None), (["connector", "llm"], None), (["connector", "llm"], {"rank": 4, "dropout": 0.0})],
)
def test_the_estimate_matches_a_real_step(word_tokenizer, data, tmp_path, parts, lora):
    extra = {"lora": lora} if lora else {}
    training = run(word_tokenizer, data, tmp_path, ("s", parts, extra))
    stage = training.train.stages[0]
    torch.manual_seed(0)
    model = models.build(training.model)
    prepare_stage(model, stage)
    measured = one_step(model, stage, data)
    estimate = estimate_memory(model, batch_size=4, frames=4, text_tokens=measured["text"])
    totals = estimate.totals()
    assert totals["parameters"] == nbytes(model.parameters()) + nbytes(model.buffers())
    assert totals["gradients"] == measured["gradients"]  # exactly the trained tensors
    assert totals["optimizer"] == measured["optimizer"]  # AdamW's two moments (its step counters aside)
    # The estimate counts the loss's three fp32 vocabulary rows (logits, their shifted copy, the log-softmax)
    # as they coexist at the forward's end; autograd keeps only the last one for the backward. Measured ratios
    # on this model: 1.3 to 1.6.
    assert measured["kept"] <= totals["activations"] <= 2 * measured["kept"]


def test_meta_and_real_models_give_the_same_estimate(word_tokenizer, data, tmp_path):
    training = run(word_tokenizer, data, tmp_path, ("s", ["connector", "llm"], {}))
    torch.manual_seed(0)
    real = models.build(training.model)
    prepare_stage(real, training.train.stages[0])
    [meta] = memory_report(training, batch_size=4, text_tokens=10)
    assert estimate_memory(real, batch_size=4, text_tokens=10, stage="s") == meta


def part(name, *, parameter_bytes, buffer_bytes, trained, activation_bytes):
    """A part of fp32 parameters, trained with AdamW (gradients as large as the parameters, two moments) or frozen."""
    return PartMemory(
        part=name,
        parameters=parameter_bytes // 4,
        trainable=parameter_bytes // 4 if trained else 0,
        parameter_bytes=parameter_bytes,
        buffer_bytes=buffer_bytes,
        gradient_bytes=parameter_bytes if trained else 0,
        optimizer_bytes=2 * parameter_bytes if trained else 0,
        activation_bytes=activation_bytes,
        keeps_activations=trained,
        checkpointed=False,
    )


def test_each_mode_divides_what_it_shards():
    """Three processes; the figures worked out by hand. Parameters 1000 + 2004 bytes, buffers 10 + 6 (replicated),
    gradients 2004, AdamW 4008, activations 700 (per process). Shards are padded to equal sizes: 3004 / 3 -> 1002."""
    parts = (
        part("encoders.vision", parameter_bytes=1000, buffer_bytes=10, trained=False, activation_bytes=0),
        part("llm", parameter_bytes=2004, buffer_bytes=6, trained=True, activation_bytes=700),
    )
    estimate = MemoryEstimate(
        parts, "fsdp", 3, batch_size=1, precision="fp32", frames=4, visual_tokens=20, text_tokens=8
    )
    assert estimate.totals() == {
        "parameters": 3020,
        "gradients": 2004,
        "optimizer": 4008,
        "activations": 700,
        "total": 9732,
    }
    expected = {  # parameters (buffers included), gradients, optimizer, activations, total
        "ddp": (3020, 2004, 4008, 700, 9732),
        "zero1": (3020, 2004, 1336, 700, 7060),
        "zero2": (3020, 668, 1336, 700, 5724),
        "zero3": (1018, 668, 1336, 700, 3722),
        "fsdp": (1018, 668, 1336, 700, 3722),
    }
    for mode, figures in expected.items():
        held = estimate.per_rank(mode)
        assert tuple(held[k] for k in ("parameters", "gradients", "optimizer", "activations", "total")) == figures
    assert estimate.to_dict()["per_rank"].keys() == expected.keys()
    with pytest.raises(ValueError, match=r"^--mode zero2 shards over several processes: give --world-size 2 or more"):
        estimate.per_rank("zero2", 1)


def test_checkpointing_and_lora_change_what_the_llm_keeps(word_tokenizer, data, tmp_path):
    plain, checkpointed, lora = (
        memory_report(run(word_tokenizer, data, tmp_path, ("s", ["connector", "llm"], extra), **train))[0]
        for extra, train in [
            ({}, {}),
            ({}, {"gradient_checkpointing": ["llm"]}),
            ({"lora": {"rank": 4}}, {}),
        ]
    )

    def llm(estimate):
        return next(part for part in estimate.parts if part.part == "llm")

    assert llm(checkpointed).checkpointed and llm(checkpointed).activation_bytes < llm(plain).activation_bytes
    assert llm(lora).trainable < llm(plain).trainable / 10  # only the adapters train
    assert llm(lora).gradient_bytes == 4 * llm(lora).trainable


def test_a_frozen_encoder_is_not_counted_as_checkpointed(word_tokenizer, data, tmp_path):
    """A frozen encoder runs without autograd: listed in gradient_checkpointing, it recomputes nothing."""
    frozen, trained = (
        memory_report(run(word_tokenizer, data, tmp_path, ("s", parts, {}), gradient_checkpointing=["encoders"]))[0]
        for parts in (["connector", "llm"], ["encoders", "connector", "llm"])
    )

    def encoder(estimate):
        return next(part for part in estimate.parts if part.part == "encoders.vision")

    assert not encoder(frozen).checkpointed and encoder(frozen).activation_bytes == 0
    assert encoder(trained).checkpointed and encoder(trained).activation_bytes > 0


def test_every_stage_of_a_run_is_estimated(word_tokenizer, data, tmp_path):
    training = run(word_tokenizer, data, tmp_path, ("one", ["connector"], {}), ("two", ["connector", "llm"], {}))
    first, second = memory_report(training, text_tokens=10)
    assert (first.stage, second.stage) == ("one", "two")
    assert first.totals()["gradients"] < second.totals()["gradients"]
    [only] = memory_report(training, text_tokens=10, stage="two")
    assert only == second


# -- the command --------------------------------------------------------------------------------------------------


def table(text: str, title: str) -> dict[str, list[str]]:
    """Rows of the rich table whose title starts with `title`, by their first cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = {}
    for line in lines[start + 1 :]:
        if line and line[0] not in "┏┃┡│├└":
            break
        if line.startswith("│"):
            cells = [cell.strip() for cell in line.split("│")[1:-1]]
            rows[cells[0]] = cells[1:]
    return rows


# The test model, counted by hand. LLM (Llama, vocabulary 512, width 64, MLP 128, 2 layers, 4 heads of 16, untied
# head): embeddings 512 x 64 = 32,768; per layer q, k, v, o 4 x 64 x 64 = 16,384, MLP 3 x 64 x 128 = 24,576, two
# norms 128, so 41,088; a final norm 64; the head 32,768: 147,776. Projector (MLP 32 -> 64 -> 64, biases):
# 32 x 64 + 64 + 64 x 64 + 64 = 6,272. The encoder (frozen, 32,224) makes 186,272 in all, plus 64 bytes of rotary
# buffers. Stage two trains 6,272 + 147,776 = 154,048 of them.
LLM_PARAMETERS, PROJECTOR_PARAMETERS, ALL_PARAMETERS, BUFFER_BYTES = 147_776, 6_272, 186_272, 64


def test_build_memory_prints_each_part_and_each_mode(cli, word_tokenizer, data, tmp_path):
    training = run(word_tokenizer, data, tmp_path, ("one", ["connector"], {}), ("two", ["connector", "llm"], {}))
    path = tmp_path / "run.json"
    path.write_text(json.dumps(training.to_dict()))
    result = cli("build", path, "--memory", "--world-size", "4", "--text-tokens", "10")
    assert result.returncode == 0, result.output
    for stage, llm_trainable in (("one", "0"), ("two", "147,776")):
        parts = table(result.stdout, f"training memory per part (MiB), stage {stage}")
        assert set(parts) == {"encoders.vision", "connector.projector", "llm", "all"}
        assert parts["llm"][:2] == ["147,776", llm_trainable] and parts["connector.projector"][:2] == ["6,272"] * 2
        assert parts["all"][:3] == ["186,272", "6,272" if stage == "one" else "154,048", "0.7"]  # 745,152 bytes
    # Stage two's table (the second one), in MiB: parameters 745,152 bytes; gradients 154,048 x 4 = 616,192; AdamW
    # 154,048 x 8 = 1,232,384. Over 4 processes: (745,152 - 64) / 4 + 64 = 186,336; 154,048; 308,096.
    rows = result.stdout.split("stage two", 1)[1]
    modes = table(rows, "per process (MiB), 4 processes")
    assert set(modes) == {"ddp <", "fsdp", "zero1", "zero2", "zero3"}  # the run's own mode (ddp) marked
    assert modes["fsdp"][0] == "parameters, gradients, optimizer"
    shown = {mode: cells[1:4] for mode, cells in modes.items()}  # params, grads, optimizer
    assert shown == {
        "ddp <": ["0.7", "0.6", "1.2"],
        "zero1": ["0.7", "0.6", "0.3"],
        "zero2": ["0.7", "0.1", "0.3"],
        "zero3": ["0.2", "0.1", "0.3"],
        "fsdp": ["0.2", "0.1", "0.3"],
    }
    [estimate] = memory_report(training, world_size=4, text_tokens=10, stage="two")
    assert estimate.totals()["parameters"] == ALL_PARAMETERS * 4 + BUFFER_BYTES
    assert [(p.part, p.parameters, p.trainable) for p in estimate.parts] == [
        ("encoders.vision", ALL_PARAMETERS - LLM_PARAMETERS - PROJECTOR_PARAMETERS, 0),
        ("connector.projector", PROJECTOR_PARAMETERS, PROJECTOR_PARAMETERS),
        ("llm", LLM_PARAMETERS, LLM_PARAMETERS),
    ]
    held = estimate.per_rank("fsdp")
    assert (held["parameters"], held["gradients"], held["optimizer"]) == (186_336, 154_048, 308_096)


def test_build_memory_takes_the_runs_mode(cli, word_tokenizer, data, tmp_path):
    """A run whose train.distributed shards: its mode is the default, and it needs a process count."""
    training = run(word_tokenizer, data, tmp_path, ("one", ["connector"], {}), distributed={"mode": "fsdp"})
    path = tmp_path / "run.json"
    path.write_text(json.dumps(training.to_dict()))
    result = cli("build", path, "--memory", "--text-tokens", "10")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error")] == [
        "error: ValueError: the run's train.distributed (mode: fsdp) shards over several processes: give "
        "--world-size N (the processes torchrun starts), or --mode single"
    ]
    result = cli("build", path, "--memory", "--text-tokens", "10", "--world-size", "2")
    assert result.returncode == 0, result.output
    assert "fsdp <" in table(result.stdout, "per process (MiB), 2 processes")
    result = cli("build", path, "--memory", "--text-tokens", "10", "--mode", "single")
    assert result.returncode == 0, result.output
    assert set(table(result.stdout, "per process (MiB), 1 process")) == {"single <"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--memory", "--mode", "zero4"], "--mode 'zero4' is not one of single, ddp, fsdp, zero1, zero2, zero3"),
        (["--memory", "--world-size", "0"], "--world-size must be at least 1, not 0"),
        (["--memory", "--world-size", "2", "--mode", "single"], "--mode single is one process; --world-size 2"),
        (["--memory", "--batch-size", "0"], "--batch-size must be at least 1, not 0"),
        (["--memory", "--text-tokens", "-1"], "--text-tokens must be 0 or more, not -1"),
        (["--memory", "--precision", "fp8"], "--precision 'fp8' is not one of fp32, bf16, fp16"),
        (["--memory", "--stage", "three"], "--stage 'three' is not a stage of this run (stages: one)"),
        (["--memory", "--mode", "fsdp"], "--mode fsdp shards over several processes: give --world-size 2 or more"),
        (["--memory", "--depth", "3"], "--depth sets how deep the tree goes; --memory prints tables instead"),
        (["--world-size", "2"], "need --memory"),
    ],
)
def test_build_memory_refuses_bad_options_in_one_line(cli, word_tokenizer, data, tmp_path, options, message):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run(word_tokenizer, data, tmp_path, ("one", ["connector"], {})).to_dict()))
    result = cli("build", path, *options)
    assert result.returncode == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_build_memory_needs_a_video_llm(cli, tmp_path):
    path = tmp_path / "encoder.yaml"
    path.write_text("name: omnimm/tiny-vit\n")
    result = cli("build", path, "--memory")
    assert result.returncode == 1
    assert re.search(r"^error: .*a memory estimate needs a video LLM", result.stderr, re.MULTILINE), result.stderr
