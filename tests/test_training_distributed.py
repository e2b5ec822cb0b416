"""Training over several processes from the run config: `train.distributed` validated and mapped onto the HF
Trainer's arguments, FSDP2 on gloo CPU processes checked against one process (losses, final weights, the saved
folder, resume), gradient checkpointing per part."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omnimm import ConfigError, models
from omnimm.deps import is_available
from omnimm.errors import MissingDependencyError
from omnimm.run import RunConfig
from omnimm.training import distributed
from omnimm.training.configs import DistributedConfig
from omnimm.training.memory import distributed_mode
from omnimm.training.trainer import training_arguments

from .conftest import REPO, video_llm_config

SCRIPT = REPO / "tests" / "scripts" / "train_sharded.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
ANSWERS = ["red", "blue", "a clip of pancakes flipping", "yes", "green", "no", "a clip", "yellow"]
# Four Adam steps of lr 1e-2 move weights by up to 4e-2; float32 sums in another order differ after Adam's
# normalisation by ~1e-5 (measured max 2.5e-5 over the runs below), so 1e-4 is far above the noise and far below
# any real change. Losses agree to ~1e-7 (measured 2.4e-7).
WEIGHTS_TOLERANCE = 1e-4
LOSS_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Eight small images with one question each; answers of different lengths (the loss must weigh tokens)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    records = []
    for index, answer in enumerate(ANSWERS):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{index}.png")
        turns = [{"from": "human", "value": "what colour is it?"}, {"from": "gpt", "value": answer}]
        records.append({"image": f"{index}.png", "conversations": turns})
    (folder / "data.json").write_text(json.dumps(records))
    return {"name": "omnimm/conversations", "path": str(folder / "data.json")}


def stage(data, **options):
    return {
        "name": "stage1",
        "train": ["connector", "llm"],
        "data": data,
        "learning_rate": 1e-2,
        "batch_size": 4,
        "scheduler": "constant",
        "warmup_ratio": 0.0,
        "shuffle": False,
        "logging_steps": 1,
        "max_steps": 4,
        "save_steps": 100,
        **options,
    }


def run_config(tokenizer, output, stages, **train):
    return {"model": video_llm_config(tokenizer), "train": {"output_dir": str(output), "stages": stages, **train}}


def launch(config: dict, processes: int, *extra: str) -> None:
    path = Path(config["train"]["output_dir"]).with_suffix(".json")
    path.write_text(json.dumps(config))
    launcher = [sys.executable] if processes == 1 else [*TORCHRUN, str(processes)]
    done = subprocess.run(
        [*launcher, str(SCRIPT), str(path), *extra],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def losses(output: Path, stage_name: str = "stage1") -> dict[int, float]:
    states = sorted((output / stage_name).glob("checkpoint-*/trainer_state.json"), key=lambda p: p.stat().st_mtime)
    history = json.loads(states[-1].read_text())["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


def weights(output: Path, stage_name: str = "stage1") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(output / stage_name / "final" / "model.safetensors")


def assert_same_training(single: Path, sharded: Path, stage_name: str = "stage1") -> float:
    """Same losses step by step, same final weights, the same saved folder; returns the largest weight gap."""
    one, many = losses(single, stage_name), losses(sharded, stage_name)
    assert one.keys() == many.keys()
    assert all(abs(one[s] - many[s]) < LOSS_TOLERANCE for s in one), (one, many)
    a, b = weights(single, stage_name), weights(sharded, stage_name)
    assert a.keys() == b.keys()
    gap = max(float((a[name] - b[name]).abs().max()) for name in a)
    assert gap < WEIGHTS_TOLERANCE, f"weights differ by {gap:.2e}"
    final_one, final_many = single / stage_name / "final", sharded / stage_name / "final"
    files = sorted(str(p.relative_to(final_one)) for p in final_one.rglob("*"))
    assert files == sorted(str(p.relative_to(final_many)) for p in final_many.rglob("*"))
    assert (final_one / "config.json").read_text() == (final_many / "config.json").read_text()
    return gap


def held(output: Path, processes: int) -> list[dict]:
    return [json.loads((output / f"held-{rank}.json").read_text()) for rank in range(processes)]


@pytest.fixture(scope="module")
def single(word_tokenizer, data, tmp_path_factory):
    """Four steps in one process, batch 4: what every sharded run must reproduce."""
    output = tmp_path_factory.mktemp("runs") / "single"
    launch(run_config(word_tokenizer, output, [stage(data)]), 1)
    return output


# -- real runs: FSDP2 over gloo against one process ------------------------------------------------------------


def test_fsdp_on_two_processes_matches_one_process(word_tokenizer, data, single, tmp_path):
    output = tmp_path / "fsdp"
    launch(run_config(word_tokenizer, output, [stage(data, batch_size=2)], distributed={"mode": "fsdp"}), 2)
    assert_same_training(single, output)
    for rank in held(output, 2):  # each process held about half the weights, as DTensor shards
        assert rank["fsdp"] and rank["placements"] == ["(Shard(dim=0),)"] and rank["mesh"] == [2]
        assert 0.45 < rank["local"] / rank["whole"] < 0.55
    checkpoint = output / "stage1" / "checkpoint-4"
    assert {"model.safetensors", "optimizer.bin", "scheduler.pt", "trainer_state.json"} <= {
        p.name for p in checkpoint.iterdir()
    }
    assert not list(checkpoint.glob("pytorch_model_fsdp*"))  # the weights once, as safetensors


def test_fsdp_resumes_from_its_checkpoint(word_tokenizer, data, single, tmp_path):
    output = tmp_path / "fsdp"
    first = run_config(word_tokenizer, output, [stage(data, batch_size=2, max_steps=2, save_steps=1)])
    first["train"]["distributed"] = {"mode": "fsdp"}
    launch(first, 2)
    shutil.rmtree(output / "stage1" / "final")  # as if stopped after step 2: the run continues from checkpoint-2
    longer = run_config(word_tokenizer, output, [stage(data, batch_size=2, save_steps=1)], distributed={"mode": "fsdp"})
    launch(longer, 2, "--resume")
    state = json.loads((output / "stage1" / "checkpoint-4" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4]
    assert_same_training(single, output)


def test_fsdp_hybrid_sharding_on_four_processes(word_tokenizer, data, single, tmp_path):
    output = tmp_path / "hybrid"
    hybrid = {"mode": "fsdp", "sharding": "hybrid", "shard_group_size": 2}
    launch(run_config(word_tokenizer, output, [stage(data, batch_size=1)], distributed=hybrid), 4)
    assert_same_training(single, output)
    for rank in held(output, 4):  # two replicas of a model sharded over two processes
        assert rank["mesh"] == [2, 2] and rank["placements"] == ["(Replicate(), Shard(dim=0))"]


def test_fsdp_two_stages_with_lora_and_checkpointing(word_tokenizer, data, tmp_path):
    """Stage 2 merges LoRA adapters from the gathered weights and checkpoints the LLM; both finals match."""
    lora = {"rank": 2, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    outputs = {}
    for label, processes, batch in [("single", 1, 4), ("fsdp", 2, 2)]:
        stages = [
            stage(data, train=["connector"], batch_size=batch, max_steps=2),
            stage(data, name="stage2", batch_size=batch, max_steps=2, lora=lora),
        ]
        mode = {"mode": "fsdp"} if processes > 1 else {}
        config = run_config(word_tokenizer, tmp_path / label, stages, gradient_checkpointing=["llm"], distributed=mode)
        launch(config, processes)
        outputs[label] = tmp_path / label
    for stage_name in ("stage1", "stage2"):
        assert_same_training(outputs["single"], outputs["fsdp"], stage_name)
    merged = weights(outputs["fsdp"], "stage2")
    assert not any("lora_" in name for name in merged)  # merged on the first process, like one process does


# -- config validation --------------------------------------------------------------------------------------------


def validation_error(word_tokenizer, tmp_path, **train):
    config = run_config(word_tokenizer, tmp_path, [stage({"name": "omnimm/conversations", "path": "data.json"})])
    config["train"].update(train)
    with pytest.raises(ConfigError) as raised:
        RunConfig.from_dict(config)
    return str(raised.value)


@pytest.mark.parametrize(
    ("train", "path", "message"),
    [
        ({"distributed": {"sharding": "hybrid"}}, "train.distributed.sharding", "option of mode: fsdp"),
        ({"distributed": {"mode": "fsdp", "zero_stage": 3}}, "train.distributed.zero_stage", "mode: deepspeed"),
        ({"distributed": {"mode": "fsdp", "shard_group_size": 2}}, "shard_group_size", "only with sharding: hybrid"),
        ({"distributed": {"cpu_offload": True}}, "train.distributed.cpu_offload", "needs mode: fsdp or deepspeed"),
        ({"distributed": {"mode": "fsdp", "cpu_offload": True}, "device": "cpu"}, "cpu_offload", "no GPU|none"),
        ({"distributed": {"mode": "deepspeed"}, "device": "cpu"}, "train.distributed.mode", "only on GPUs"),
        ({"distributed": {"mode": "fsdp", "wrap": []}}, "train.distributed.wrap", "at least 1"),
        ({"distributed": {"mode": "zero"}}, "train.distributed.mode", "'ddp', 'fsdp' or 'deepspeed'"),
        ({"precision": "fp16", "device": "cpu"}, "train.precision", "fp16 runs only on GPUs"),
        ({"gradient_checkpointing": ["connector"]}, "train.gradient_checkpointing", "cannot be checkpointed"),
        ({"gradient_checkpointing": ["encoders.face"]}, "train.gradient_checkpointing[0]", "matches no part"),
    ],
)
def test_bad_distributed_settings_name_their_field(word_tokenizer, tmp_path, train, path, message):
    import re

    error = validation_error(word_tokenizer, tmp_path, **train)
    assert path in error and re.search(message, error), error


def test_deepspeed_files_are_checked(word_tokenizer, tmp_path):
    missing = validation_error(
        word_tokenizer, tmp_path, distributed={"mode": "deepspeed", "deepspeed_config": str(tmp_path / "no.json")}
    )
    assert "train.distributed.deepspeed_config: no such file" in missing
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    error = validation_error(
        word_tokenizer, tmp_path, distributed={"mode": "deepspeed", "deepspeed_config": str(broken)}
    )
    assert "is not readable JSON" in error
    zero3 = tmp_path / "zero3.json"
    zero3.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    error = validation_error(
        word_tokenizer, tmp_path, distributed={"mode": "deepspeed", "deepspeed_config": str(zero3)}
    )
    assert "stage3_gather_16bit_weights_on_model_save" in error
    both = {"mode": "deepspeed", "deepspeed_config": str(zero3), "zero_stage": 2}
    assert "not both" in validation_error(word_tokenizer, tmp_path, distributed=both)


# -- what each mode becomes ---------------------------------------------------------------------------------------


@pytest.fixture
def tiny_model(word_tokenizer):
    torch.manual_seed(0)
    return models.build(video_llm_config(word_tokenizer))


@pytest.mark.parametrize(("sharding", "reshard"), [("full", True), ("grad_op", False)])
def test_fsdp_becomes_the_trainers_fsdp2_arguments(word_tokenizer, data, tiny_model, tmp_path, sharding, reshard):
    import transformers

    settings = {"mode": "fsdp", "sharding": sharding}
    run = RunConfig.from_dict(run_config(word_tokenizer, tmp_path, [stage(data)], distributed=settings))
    kwargs = training_arguments(run.train, run.train.stages[0], tmp_path, False, tiny_model, use_cpu=True)
    assert kwargs["fsdp"] is True
    config = kwargs["fsdp_config"]
    assert config["version"] == 2 and config["reshard_after_forward"] is reshard
    assert config["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer", "TransformerEncoderLayer"]
    assert config["state_dict_type"] == "FULL_STATE_DICT" and config["cpu_offload"] is False
    built = transformers.TrainingArguments(**kwargs)  # HF's own reading of them: accelerate's plugin arguments
    plugin = built.fsdp_plugin_args
    assert plugin["fsdp_version"] == 2 and plugin["reshard_after_forward"] is reshard
    assert plugin["transformer_cls_names_to_wrap"] == "LlamaDecoderLayer,TransformerEncoderLayer"
    assert plugin["state_dict_type"] == "FULL_STATE_DICT" and "cpu_offload" not in plugin


def test_fsdp_hybrid_on_gpus_becomes_a_two_level_mesh(tiny_model, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    settings = DistributedConfig(mode="fsdp", sharding="hybrid", cpu_offload=True)
    kwargs = distributed.fsdp_arguments(settings, tiny_model, use_cpu=False)
    mesh = kwargs["parallelism_config"]
    assert (mesh.dp_replicate_size, mesh.dp_shard_size) == (2, 8)  # shard inside a node, replicate across nodes
    assert kwargs["fsdp_config"]["cpu_offload"] is True
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    with pytest.raises(distributed.DistributedSetupError, match=r"shard_group_size: 3 does not divide the 16"):
        distributed.fsdp_arguments(settings, tiny_model, use_cpu=False)


@pytest.mark.parametrize("stage_number", [1, 2, 3])
def test_deepspeed_becomes_a_zero_config(stage_number):
    config = distributed.deepspeed_config(DistributedConfig(mode="deepspeed", zero_stage=stage_number))
    zero = config["zero_optimization"]
    assert zero["stage"] == stage_number
    assert zero.get("stage3_gather_16bit_weights_on_model_save", False) is (stage_number == 3)
    assert "offload_optimizer" not in zero and "optimizer" not in config  # the Trainer's AdamW (per-part rates)
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert config[key] == "auto"  # HF fills them from the TrainingArguments
    settings = DistributedConfig(mode="deepspeed", zero_stage=stage_number)
    assert distributed_mode(type("Train", (), {"distributed": settings})) == f"zero{stage_number}"


def test_deepspeed_offload_and_a_users_file(tmp_path):
    offload = distributed.deepspeed_config(DistributedConfig(mode="deepspeed", zero_stage=3, cpu_offload=True))
    assert offload["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert offload["zero_optimization"]["offload_param"]["device"] == "cpu"
    own = tmp_path / "ds.json"
    own.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    settings = DistributedConfig(mode="deepspeed", deepspeed_config=str(own))
    assert distributed.deepspeed_config(settings) == str(own)  # passed to HF as it is
    assert distributed_mode(type("Train", (), {"distributed": settings})) == "zero1"
    assert distributed_mode(type("Train", (), {"distributed": DistributedConfig(mode="deepspeed")})) == "zero2"


def test_what_cannot_run_here_is_one_clear_error(word_tokenizer, tmp_path, monkeypatch):
    def train(**settings):
        config = run_config(word_tokenizer, tmp_path, [stage({"name": "omnimm/conversations", "path": "data.json"})])
        config["train"]["distributed"] = settings
        return RunConfig.from_dict(config).train

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(distributed.DistributedSetupError, match=r"^train\.distributed\.mode: fsdp shards over several"):
        distributed.check_setup(train(mode="fsdp"), use_cpu=True)
    if not is_available("deepspeed"):
        with pytest.raises(MissingDependencyError, match=r"pip install \"omnimm\[deepspeed\]\""):
            distributed.check_setup(train(mode="deepspeed"), use_cpu=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(distributed.DistributedSetupError, match=r"cpu_offload: offloads GPU memory"):
        distributed.check_setup(train(mode="fsdp", cpu_offload=True), use_cpu=True)


def test_wrap_must_name_classes_of_the_model(tiny_model):
    distributed.check_wrap(DistributedConfig(mode="fsdp", wrap=["LlamaDecoderLayer"]), tiny_model)
    with pytest.raises(distributed.DistributedSetupError, match=r"wrap\[1\]: the model has no module of class 'Blk'"):
        distributed.check_wrap(DistributedConfig(mode="fsdp", wrap=["LlamaDecoderLayer", "Blk"]), tiny_model)


def test_train_command_without_torchrun_says_how_to_launch(cli, word_tokenizer, data, tmp_path):
    run = tmp_path / "run.json"
    config = run_config(word_tokenizer, tmp_path / "out", [stage(data, max_steps=1)], distributed={"mode": "fsdp"})
    run.write_text(json.dumps(config))
    result = cli("train", run, "--no-progress")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert errors == [
        "error: train.distributed.mode: fsdp shards over several processes: launch with torchrun --nproc_per_node "
        "N (or use mode: ddp for one process)"
    ], result.stderr
    assert "Traceback" not in result.stderr


# -- gradient checkpointing ---------------------------------------------------------------------------------------

ENCODERS = {
    "omnimm/tiny-vit": {"image_size": 32, "patch_size": 8, "dim": 32, "heads": 2, "depth": 3},
    "timm/vit": {"arch": "vit_tiny_patch16_224", "overrides": {"img_size": 32, "patch_size": 8, "depth": 3}},
    "hf/clip-vision": {
        "config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        }
    },
    "openclip/vit": {"overrides": {"width": 32, "layers": 3, "head_width": 16, "image_size": 32, "patch_size": 8}},
}


def count_runs(block: torch.nn.Module) -> list[int]:
    """Counts the runs of a block's first sub-module: checkpointing recomputes a block's `forward` in the backward
    pass, inside its own hooks, so a hook one level down sees the recomputation."""
    calls: list[int] = []
    inner = next(block.children())
    inner.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def one_backward(model, data, parts):
    from omnimm.registry import datasets
    from omnimm.training.trainer import set_trainable

    set_trainable(model.train(), parts)
    dataset = datasets.build(data, processor=model.processor)
    model(**model.processor.collate([dataset[i] for i in range(4)]))["loss"].backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_checkpointing_recomputes_and_gives_the_same_gradients(word_tokenizer, data, encoder):
    config = video_llm_config(word_tokenizer, encoders={"vision": {"name": encoder, **ENCODERS[encoder]}})
    results = {}
    for checkpointing in ((), ("llm", "encoders")):
        torch.manual_seed(0)
        model = models.build(config)
        expected = ["llm", "encoders.vision"] if checkpointing else []
        assert distributed.enable_gradient_checkpointing(model, checkpointing) == expected
        encoder_runs = count_runs(distributed.encoder_blocks(model.encoders["vision"])[0])
        llm_runs = count_runs(model.llm.model.model.layers[0])
        grads = one_backward(model, data, ["encoders", "connector", "llm"])
        results[checkpointing] = (len(encoder_runs), len(llm_runs)), grads
    (plain_runs, plain), (checkpointed_runs, checkpointed) = results.values()
    assert plain_runs == (1, 1)
    assert checkpointed_runs == (2, 2)  # each block ran again in the backward pass
    assert plain.keys() == checkpointed.keys() and any(n.startswith("encoders.") for n in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_frozen_encoder_is_not_recomputed(data, tiny_model):
    """Frozen encoders run under no_grad: checkpointing them changes nothing."""
    distributed.enable_gradient_checkpointing(tiny_model, ["encoders"])
    runs = count_runs(distributed.encoder_blocks(tiny_model.encoders["vision"])[0])
    one_backward(tiny_model, data, ["connector"])
    assert len(runs) == 1
