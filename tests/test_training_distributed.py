"""Training over several processes from the run config: `train.distributed` validated and mapped onto the HF
Trainer's arguments, FSDP2 on gloo CPU processes checked against one process (losses, final weights, the saved
folder, resume), gradient checkpointing per part."""

from __future__ import annotations

import json
import os
import re
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
from omnimm.training.trainer import TrainerView, last_complete_checkpoint, training_arguments

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


def launch(config: dict, processes: int, *extra: str, fails: bool = False) -> str:
    """Run the script on a run config; returns its stderr (it must succeed, or with `fails` fail)."""
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
    assert (done.returncode != 0) is fails, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stderr


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


def test_fsdp_resumes_from_its_checkpoint(cli, word_tokenizer, data, single, tmp_path):
    output = tmp_path / "fsdp"
    first = run_config(word_tokenizer, output, [stage(data, batch_size=2, max_steps=2, save_steps=1)])
    first["train"]["distributed"] = {"mode": "fsdp"}
    launch(first, 2)
    shutil.rmtree(output / "stage1" / "final")  # as if stopped after step 2: the run continues from checkpoint-2
    # Mark the checkpoint: a resumed Trainer carries its log history on, one that starts again from step 0 does not
    saved = output / "stage1" / "checkpoint-2" / "trainer_state.json"
    state = json.loads(saved.read_text())
    state["log_history"][0]["written_by"] = "the first run"
    saved.write_text(json.dumps(state))

    # The checkpoint belongs to fsdp: a one-process (ddp) resume stops in one line instead of starting over
    ddp = run_config(word_tokenizer, output, [stage(data, batch_size=2, save_steps=1)])
    (tmp_path / "ddp.json").write_text(json.dumps(ddp))
    refused = cli("train", tmp_path / "ddp.json", "--resume", "--no-progress")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert [line for line in refused.stderr.splitlines() if line.startswith("error")] == [
        f"error: train.distributed.mode: stage stage1: {output / 'stage1' / 'checkpoint-2'} was written under mode "
        "fsdp (it holds optimizer.bin), this run uses ddp: resume with mode: fsdp, or move the stage's checkpoints "
        "away to train it from the start"
    ]
    assert sorted(p.name for p in (output / "stage1").iterdir()) == ["checkpoint-1", "checkpoint-2"]  # untouched

    longer = run_config(word_tokenizer, output, [stage(data, batch_size=2, save_steps=1)], distributed={"mode": "fsdp"})
    launch(longer, 2, "--resume")
    state = json.loads((output / "stage1" / "checkpoint-4" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4]
    assert state["log_history"][0]["written_by"] == "the first run"  # steps 1-2 came from checkpoint-2
    assert_same_training(single, output)


def test_a_checkpoint_of_another_mode_is_refused(single):
    """The one-process run's checkpoint holds optimizer.pt: an FSDP or DeepSpeed resume cannot read it."""
    folder = single / "stage1"
    assert last_complete_checkpoint(folder, "stage1") == str(folder / "checkpoint-4")
    for optimizer, mode in [("optimizer.bin", "fsdp"), ("latest", "deepspeed")]:
        with pytest.raises(distributed.DistributedSetupError) as raised:
            last_complete_checkpoint(folder, "stage1", optimizer=optimizer)
        assert str(raised.value) == (
            f"train.distributed.mode: stage stage1: {folder / 'checkpoint-4'} was written under mode ddp (it holds "
            f"optimizer.pt), this run uses {mode}: resume with mode: ddp, or move the stage's checkpoints away to "
            "train it from the start"
        )


def test_without_the_cpu_override_the_run_stops_instead_of_running_ddp(word_tokenizer, data, tmp_path):
    """accelerate drops an FSDP plugin on CPU processes (omnimm's override restores it); without it, or when the
    accelerate internals the override writes are gone, the run stops naming the versions instead of training DDP."""
    settings = {"mode": "fsdp"}
    config = run_config(word_tokenizer, tmp_path / "dropped", [stage(data, batch_size=2, max_steps=1)])
    config["train"]["distributed"] = settings
    stderr = launch(config, 2, "--without-fsdp-on-cpu", fails=True)
    assert "train.distributed.mode: fsdp was asked for but the Trainer runs neither FSDP nor DeepSpeed" in stderr
    assert re.search(r"accelerate \d+\.\d+\S*, transformers \d+\.\d+\S*, 2 processes", stderr), stderr
    config["train"]["output_dir"] = str(tmp_path / "renamed")
    stderr = launch(config, 2, "--accelerate-internals-renamed", fails=True)
    assert "train.distributed.mode: FSDP on CPU processes relies on accelerate internals this version lacks" in stderr
    assert not list(tmp_path.glob("*/stage1/checkpoint-*"))  # stopped before training


def test_a_failed_save_on_the_first_process_stops_the_others(word_tokenizer, data, tmp_path):
    """Only the first process saves final/: when that fails the other one stops too instead of waiting forever."""
    output = tmp_path / "out"
    config = run_config(word_tokenizer, output, [stage(data, batch_size=2, max_steps=1)])
    config["train"]["distributed"] = {"mode": "fsdp"}
    launch(config, 2, "--fail-final-save", fails=True)
    # what each process raised (the script writes it down; the first one then waits a little, so that torchrun,
    # which stops every process once one has failed, lets the second one get there)
    assert (output / "error-0.txt").read_text() == "OSError: disk full (made up by the test)"
    assert (output / "error-1.txt").read_text() == (
        "RuntimeError: the first process failed to save the stage (OSError: disk full (made up by the test))"
    )


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
        ({"gradient_checkpointing": ["llm", "connector"]}, "train.gradient_checkpointing[1]", "cannot be checkp"),
        ({"gradient_checkpointing": ["encoders.face"]}, "train.gradient_checkpointing[0]", "matches no part"),
    ],
)
def test_bad_distributed_settings_name_their_field(word_tokenizer, tmp_path, train, path, message):
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
    offload = {"mode": "deepspeed", "deepspeed_config": str(zero3), "cpu_offload": True}
    error = validation_error(word_tokenizer, tmp_path, distributed=offload, device="cuda")
    assert "train.distributed.cpu_offload: with deepspeed_config your own file decides offloading" in error


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"zero_optimization": "x"}, '"zero_optimization" is a string, not a JSON object (e.g. {"stage": 2})'),
        ({"zero_optimization": [2]}, '"zero_optimization" is a list, not a JSON object'),
        ({"zero_optimization": None}, '"zero_optimization" is null, not a JSON object'),
        ({"bf16": {"enabled": "auto"}}, 'has no "zero_optimization" object (accelerate needs one'),
        ({"zero_optimization": {"stage": "auto"}}, '"zero_optimization.stage" is "auto"; give 0, 1, 2 or 3'),
        ({"zero_optimization": {"stage": 4}}, '"zero_optimization.stage" is 4; give 0, 1, 2 or 3'),
        ({"zero_optimization": {"stage": "3"}}, "ZeRO-3 needs stage3_gather_16bit_weights_on_model_save: true"),
        (
            {"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW", "params": {"lr": 0.1}}},
            "sets \"optimizer\": omnimm's Trainer builds the optimizer (AdamW with the stage's per-part",
        ),
        (
            {"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW"}, "scheduler": {"type": "WarmupLR"}},
            'sets "optimizer" and "scheduler": omnimm\'s Trainer builds',
        ),
    ],
)
def test_bad_deepspeed_files_are_one_line_naming_the_field(cli, word_tokenizer, tmp_path, content, message):
    own = tmp_path / "ds.json"
    own.write_text(json.dumps(content))
    config = run_config(word_tokenizer, tmp_path, [stage({"name": "omnimm/conversations", "path": "data.json"})])
    config["train"].update(device="cuda", distributed={"mode": "deepspeed", "deepspeed_config": str(own)})
    run = tmp_path / "run.json"
    run.write_text(json.dumps(config))
    result = cli("config", "validate", run)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    issues = result.stderr.splitlines()[1:]  # a header, then one line per issue
    assert len(issues) == 1 and f"train.distributed.deepspeed_config: {own}" in issues[0], result.stderr
    assert message in issues[0], issues[0]


def test_a_deepspeed_files_stage_is_read_as_deepspeed_reads_it(tmp_path):
    """DeepSpeed reads the string "3" as stage 3; HF and accelerate compare the stage with 3: they get the number."""
    from accelerate.utils.deepspeed import HfDeepSpeedConfig

    for content, stage_number in [
        ({"zero_optimization": {"stage": "3", "stage3_gather_16bit_weights_on_model_save": True}}, 3),
        ({"zero_optimization": {"stage": 3, "stage3_gather_fp16_weights_on_model_save": True}}, 3),  # older name
        ({"zero_optimization": {}}, 0),  # DeepSpeed's default
    ]:
        own = tmp_path / "ds.json"
        own.write_text(json.dumps(content))
        settings = DistributedConfig(mode="deepspeed", deepspeed_config=str(own))
        handed = distributed.deepspeed_config(settings)
        assert handed == {**content, "zero_optimization": {**content["zero_optimization"], "stage": stage_number}}
        assert HfDeepSpeedConfig(handed).is_zero3() is (stage_number == 3)  # accelerate's reading of it
        assert settings.deepspeed_stage == stage_number
        assert distributed_mode(type("Train", (), {"distributed": settings})) == (
            f"zero{stage_number}" if stage_number else "ddp"
        )


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


def test_fsdp_hybrid_on_gpus_becomes_a_two_level_mesh(tiny_model, monkeypatch, tmp_path):
    import transformers

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
    # HF's reading of the arguments (in this one process: building them starts the process group WORLD_SIZE names)
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    built = transformers.TrainingArguments(output_dir=str(tmp_path), report_to="none", **kwargs)
    assert built.parallelism_config is mesh  # the Trainer hands it to accelerate's Accelerator as it is
    assert built.fsdp_plugin_args["cpu_offload"] is True and built.fsdp_plugin_args["fsdp_version"] == 2
    assert built.fsdp_plugin_args["reshard_after_forward"] is True


@pytest.mark.parametrize("stage_number", [1, 2, 3])
def test_deepspeed_becomes_a_zero_config(stage_number):
    """The dict handed to TrainingArguments(deepspeed=...): HF reads it only where DeepSpeed is installed (its
    HfTrainerDeepSpeedConfig checks for the package), which this suite is not, so HF's reading of it is not run here;
    accelerate's own reader (no DeepSpeed needed) is."""
    from accelerate.utils.deepspeed import HfDeepSpeedConfig

    config = distributed.deepspeed_config(DistributedConfig(mode="deepspeed", zero_stage=stage_number))
    read = HfDeepSpeedConfig(config)
    assert (read.is_zero2(), read.is_zero3(), read.is_offload()) == (stage_number == 2, stage_number == 3, False)
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
    own.write_text(json.dumps({"zero_optimization": {"stage": 1}, "bf16": {"enabled": "auto"}}))
    settings = DistributedConfig(mode="deepspeed", deepspeed_config=str(own))
    assert distributed.deepspeed_config(settings) == json.loads(own.read_text())  # passed to HF as it is
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
    import accelerate

    distributed.check_setup(train(mode="fsdp"), use_cpu=True)  # the installed accelerate is recent enough
    monkeypatch.setattr(accelerate, "__version__", "1.11.0")  # ParallelismConfig, but the Trainer does not pass it
    with pytest.raises(MissingDependencyError, match=r"'accelerate' 1\.11\.0 is installed but omnimm needs >= 1\.12"):
        distributed.check_setup(train(mode="fsdp"), use_cpu=True)


def test_the_trainer_must_run_the_engine_the_mode_names(tiny_model, tmp_path):
    """A real one-process Trainer runs neither FSDP nor DeepSpeed: right for ddp, a stop for the others."""
    import transformers

    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = transformers.Trainer(model=TrainerView(tiny_model), args=args)
    distributed.check_engine(trainer, DistributedConfig())
    for mode in ("fsdp", "deepspeed"):
        with pytest.raises(distributed.DistributedSetupError) as raised:
            distributed.check_engine(trainer, DistributedConfig(mode=mode))
        assert str(raised.value).startswith(
            f"train.distributed.mode: {mode} was asked for but the Trainer runs neither FSDP nor DeepSpeed: "
            "accelerate or transformers did not take the settings (accelerate "
        ), raised.value


def test_deepspeed_16_bit_weights_are_saved_in_the_models_dtypes(tiny_model):
    """DeepSpeed under bf16 hands over bf16 weights; final/ keeps the dtypes one process saves (fp32 here)."""
    state = {name: tensor.to(torch.bfloat16) for name, tensor in tiny_model.state_dict().items()}
    copy = distributed.unsharded_copy(tiny_model, state)
    assert {p.dtype for p in copy.parameters()} == {torch.float32} == {p.dtype for p in tiny_model.parameters()}
    for name, tensor in copy.state_dict().items():
        assert torch.equal(tensor, state[name].float()), name  # the 16-bit values, in fp32


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
