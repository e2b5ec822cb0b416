"""Saved model folders: a save killed mid-swap is restored, leftovers go, a resume skips cut-short checkpoints, and a
folder from anyone reads only its own files and reports damage in one line naming the file."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omnimm import models
from omnimm.errors import StoreError
from omnimm.files import restore_folder
from omnimm.run import RunConfig
from omnimm.training.trainer import last_complete_checkpoint, run_training
from omnimm.videollm.model import VideoLLM, saved_config, saved_folder_problem

from .conftest import video_llm_config, write_test_video

pytestmark = pytest.mark.timeout(300)


def build(tokenizer: Path, seed: int) -> VideoLLM:
    torch.manual_seed(seed)
    return models.build(video_llm_config(tokenizer))


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    other = b.state_dict()
    return all(torch.equal(value, other[name]) for name, value in a.state_dict().items())


def dead_pid() -> int:
    """The id of a process that has exited (as a killed save's is)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=60)
    return child.pid


@pytest.fixture(scope="module")
def versions(word_tokenizer, tmp_path_factory):
    """Two saves of the same architecture with different weights: (folder, model) each."""
    root = tmp_path_factory.mktemp("versions")
    found = []
    for seed in range(2):
        model = build(word_tokenizer, seed)
        found.append((model.save_pretrained(root / f"v{seed}"), model))
    return found


# -- a save killed between its renames ------------------------------------------------------------------------------


def test_a_missing_folder_is_restored_from_the_killed_saves_complete_copy(versions, tmp_path, caplog):
    (v0, _), (v1, model1) = versions
    pid = dead_pid()
    final = tmp_path / "final"
    shutil.copytree(v0, tmp_path / f".final.old-{pid}")  # the previous save, moved aside
    shutil.copytree(v1, tmp_path / f".final.saving-{pid}")  # the new one, complete, not yet renamed in
    with caplog.at_level(logging.WARNING, logger="omnimm.videollm"):
        loaded = VideoLLM.from_pretrained(final)
    assert same_weights(loaded, model1)  # the newest complete save
    assert (final / "model.safetensors").is_file()
    assert f"restored it from .final.saving-{pid}" in caplog.text
    model1.save_pretrained(final)  # the next save removes the killed one's other folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_an_incomplete_copy_is_never_restored(versions, tmp_path, caplog):
    (v0, model0), (v1, _) = versions
    pid = dead_pid()
    final = tmp_path / "final"
    shutil.copytree(v0, tmp_path / f".final.old-{pid}")
    staging = shutil.copytree(v1, tmp_path / f".final.saving-{pid}")
    (staging / "model.safetensors").unlink()  # killed while writing the weights
    config = saved_config(final)  # the config reader restores too
    assert config.name == "omnimm/video-llm" and (final / "model.safetensors").is_file()
    assert same_weights(VideoLLM.from_pretrained(final), model0)
    assert "model.safetensors is missing" in caplog.text  # the skipped copy and why


def test_only_incomplete_copies_give_an_error_naming_them(versions, tmp_path):
    (v0, _), _ = versions
    pid = dead_pid()
    staging = shutil.copytree(v0, tmp_path / f".final.saving-{pid}")
    weights = staging / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # a first save killed before its last bytes
    with pytest.raises(FileNotFoundError, match=rf"config.json is missing; .*\.final\.saving-{pid}: .*cut short"):
        VideoLLM.from_pretrained(tmp_path / "final")
    assert saved_folder_problem(staging) is not None


def test_a_save_removes_dead_saves_leftovers_only(versions, tmp_path):
    (v0, model0), _ = versions
    dead = dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        final = model0.save_pretrained(tmp_path / "final")
        names = [f".final.saving-{dead}", f".final.old-{dead}", f".final.saving-{live.pid}", f".other.old-{dead}"]
        names += [".final.saving-notapid", f".final.saved-{dead}"]
        for name in names:
            shutil.copytree(v0, tmp_path / name)
        model0.save_pretrained(final)
        left = sorted(p.name for p in tmp_path.iterdir())
    finally:
        live.kill()
        live.wait(timeout=30)
    # A running process may still be writing its copy; another folder's and unrelated names are not ours.
    expected = ["final", f".final.saving-{live.pid}", f".other.old-{dead}", ".final.saving-notapid"]
    assert left == sorted([*expected, f".final.saved-{dead}"])


def test_a_live_saves_copy_is_read_where_it_lies(versions, tmp_path):
    (v0, _), _ = versions
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        copy = shutil.copytree(v0, tmp_path / f".final.saving-{live.pid}")
        found = restore_folder(tmp_path / "final", saved_folder_problem, wait_s=0.2)
    finally:
        live.kill()
        live.wait(timeout=30)
    assert found is not None and found[0] == copy and copy.is_dir()  # not moved from under its owner
    assert f"process {live.pid} runs" in found[1]


# -- folders from anyone --------------------------------------------------------------------------------------------


def edited(source: Path, folder: Path, **llm: object) -> Path:
    """A copy of a save with fields of its `llm` config replaced."""
    shutil.copytree(source, folder)
    data = json.loads((folder / "config.json").read_text())
    data["omnimm"]["llm"].update(llm)
    (folder / "config.json").write_text(json.dumps(data))
    return folder


def test_llm_paths_outside_the_folder_are_refused(versions, tmp_path):
    (v0, model0), (v1, _) = versions
    outside = str(v1 / "llm")  # a real LLM folder: it would load
    cases = {
        "absolute": {"path": outside},
        "dotdot": {"path": "../v1/llm"},
        "tokenizer": {"tokenizer": outside},
        "gguf": {"gguf_file": "../../model.gguf"},
    }
    for name, fields in cases.items():
        folder = edited(v0, tmp_path / name, **fields)
        field = next(iter(fields))
        with pytest.raises(StoreError, match=rf"config.json: llm.{field} .* points outside the model folder"):
            VideoLLM.from_pretrained(folder)
        with pytest.raises(StoreError, match="points outside the model folder"):
            saved_config(folder)
    linked = shutil.copytree(v0, tmp_path / "linked")
    shutil.rmtree(linked / "llm")
    (linked / "llm").symlink_to(v1 / "llm")  # a link out of the folder
    with pytest.raises(StoreError, match=r"llm\.path 'llm' points outside the model folder"):
        VideoLLM.from_pretrained(linked)
    # The caller's own choice of LLM folder is taken as given.
    loaded = VideoLLM.from_pretrained(tmp_path / "absolute", llm_path=v0 / "llm")
    assert same_weights(loaded, model0)


def test_weights_loading_in_a_saved_config_is_not_followed(versions, tmp_path):
    (v0, model0), _ = versions
    folder = shutil.copytree(v0, tmp_path / "pretrained")
    data = json.loads((folder / "config.json").read_text())
    data["omnimm"]["llm"]["load_weights"] = True
    (folder / "config.json").write_text(json.dumps(data))
    config = saved_config(folder)
    assert config.llm.load_weights is False  # the folder's llm/ holds no weights: they are in model.safetensors
    assert same_weights(VideoLLM.from_pretrained(folder), model0)


DAMAGED = {
    "cut-weights": ("model.safetensors", None, r"model.safetensors: not a readable safetensors file: .*cut short"),
    "not-json": ("config.json", '{"omnimm": {"name": ', r"config.json:1: not valid JSON"),
    "no-omnimm": ("config.json", '{"model_type": "llama"}', r"config.json: expected a JSON object with an 'omnimm'"),
    "llm-not-mapping": ("config.json", '{"omnimm": {"name": "omnimm/video-llm", "llm": 3}}', r"'llm' must be a"),
    "bad-field": ("config.json", None, r"config.json: not a valid saved video LLM config: frames.num_frames"),
}


def damage(source: Path, folder: Path, case: str) -> Path:
    shutil.copytree(source, folder)
    name, text, _ = DAMAGED[case]
    if case == "cut-weights":
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    elif case == "bad-field":
        config = json.loads((folder / name).read_text())
        config["omnimm"]["frames"] = {"num_frames": "many"}
        (folder / name).write_text(json.dumps(config))
    else:
        (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_files_give_a_store_error_naming_the_file(versions, tmp_path, case):
    (v0, _), _ = versions
    folder = damage(v0, tmp_path / case, case)
    with pytest.raises(StoreError, match=DAMAGED[case][2]) as raised:
        VideoLLM.from_pretrained(folder)
    assert str(folder / DAMAGED[case][0]) in str(raised.value)


@pytest.mark.parametrize(
    ("command", "case"),
    [("ask", "cut-weights"), ("ask", "not-json"), ("ask", "bad-field"), ("eval", "absolute"), ("ask", "no-omnimm")],
)
def test_the_cli_shows_one_line_for_a_bad_folder(cli, versions, tmp_path, command, case):
    (v0, _), (v1, _) = versions
    if case == "absolute":
        folder = edited(v0, tmp_path / case, path=str(v1 / "llm"))
    else:
        folder = damage(v0, tmp_path / case, case)
    clip = write_test_video(tmp_path / "clip.mkv", frames=4)
    data = tmp_path / "data.json"
    turns = [{"from": "human", "value": "what?"}, {"from": "gpt", "value": "red"}]
    data.write_text(json.dumps([{"video": str(clip), "conversations": turns}]))  # valid: the folder is what fails
    args = (
        [command, folder, clip, "what?"]
        if command == "ask"
        else [command, folder, "--data", data, "-e", "omnimm/choice-accuracy"]
    )
    result = cli(*args)
    assert result.returncode == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {folder}"), result.output
    assert "Traceback" not in result.output


def test_the_cli_answers_from_a_folder_lost_between_the_renames(cli, versions, tmp_path):
    (v0, _), (v1, _) = versions
    pid = dead_pid()
    shutil.copytree(v0, tmp_path / f".final.old-{pid}")
    shutil.copytree(v1, tmp_path / f".final.saving-{pid}")
    clip = write_test_video(tmp_path / "clip.mkv", frames=4)
    result = cli("ask", tmp_path / "final", clip, "what?", "--max-new-tokens", "2")
    assert result.returncode == 0, result.output
    assert (tmp_path / "final" / "model.safetensors").is_file()
    assert f"restored it from .final.saving-{pid}" in result.stderr


# -- resuming a run killed mid-checkpoint ---------------------------------------------------------------------------


@pytest.fixture
def trained(word_tokenizer, tmp_path):
    """A real tiny run: three steps, a checkpoint after each (the last two kept), its final model."""
    rng = np.random.default_rng(0)
    records = []
    for index, answer in enumerate(["red", "blue", "a clip", "yes"]):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"{index}.png")
        turns = [{"from": "human", "value": "what colour is it?"}, {"from": "gpt", "value": answer}]
        records.append({"image": f"{index}.png", "conversations": turns})
    (tmp_path / "data.json").write_text(json.dumps(records))
    stage = {"name": "stage1", "train": ["connector", "llm"], "learning_rate": 1e-2, "batch_size": 4}
    stage |= {"data": {"name": "omnimm/conversations", "path": str(tmp_path / "data.json")}, "shuffle": False}
    stage |= {"max_steps": 3, "save_steps": 1, "logging_steps": 1, "scheduler": "constant", "warmup_ratio": 0.0}
    config = {
        "model": video_llm_config(word_tokenizer),
        "train": {"output_dir": str(tmp_path / "out"), "stages": [stage]},
    }
    (tmp_path / "run.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    run_training(RunConfig.from_dict(config), progress=False)
    return tmp_path / "run.json", tmp_path / "out" / "stage1"


def test_the_newest_complete_checkpoint_is_chosen_and_the_others_named(trained, caplog):
    _, stage = trained
    complete = stage / "checkpoint-3"
    cases = {
        7: ("trainer_state.json", "delete", "trainer_state.json missing"),
        6: ("model.safetensors", "cut", "model.safetensors is cut short"),
        5: ("optimizer.pt", "cut", "optimizer.pt is cut short"),
        4: ("trainer_state.json", "cut", "trainer_state.json is not readable JSON"),
    }
    for step, (name, how, _) in cases.items():
        folder = shutil.copytree(complete, stage / f"checkpoint-{step}")
        if how == "delete":
            (folder / name).unlink()
        else:
            data = (folder / name).read_bytes()
            (folder / name).write_bytes(data[: len(data) - 40])
        if name != "trainer_state.json":  # otherwise a correct state for the folder's step
            state = json.loads((folder / "trainer_state.json").read_text())
            (folder / "trainer_state.json").write_text(json.dumps({**state, "global_step": step}))
    shutil.copytree(complete, stage / "checkpoint-8")  # a state of step 3 in a folder named 8: not that checkpoint
    with caplog.at_level(logging.INFO, logger="omnimm.training"):
        assert last_complete_checkpoint(stage, "stage1") == str(complete)
    for step, (_, _, why) in cases.items():
        assert f"skipping {stage / f'checkpoint-{step}'}, incomplete" in caplog.text and why in caplog.text
    assert "global_step 3, the folder's name 8" in caplog.text
    assert f"resuming from {complete}" in caplog.text


def test_train_resume_after_a_kill_mid_checkpoint(cli, trained):
    run_file, stage = trained
    shutil.rmtree(stage / "final")
    shutil.copytree(stage / "checkpoint-3", stage / "checkpoint-4")  # killed while saving step 4...
    (stage / "checkpoint-4" / "trainer_state.json").unlink()  # ...before its last file
    config = json.loads(run_file.read_text())
    config["train"]["stages"][0]["max_steps"] = 4
    run_file.write_text(json.dumps(config))
    result = cli("train", run_file, "--resume", "--no-progress")
    assert result.returncode == 0, result.output
    assert f"skipping {stage / 'checkpoint-4'}, incomplete (a save cut short?): trainer_state.json missing" in (
        result.stderr
    )
    assert f"resuming from {stage / 'checkpoint-3'}" in result.stderr
    state = json.loads((stage / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4]
    assert (stage / "final" / "model.safetensors").is_file()


def test_resume_restores_a_final_model_killed_mid_swap(trained, caplog):
    run_file, stage = trained
    final = stage / "final"
    pid = dead_pid()
    final.rename(stage / f".final.saving-{pid}")
    stamp = (stage / f".final.saving-{pid}" / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="omnimm"):
        run_training(RunConfig.from_dict(json.loads(run_file.read_text())), resume=True, progress=False)
    assert (final / "model.safetensors").stat().st_mtime_ns == stamp  # restored and loaded, not trained again
    assert "stage stage1 is done" in caplog.text and "restored it from" in caplog.text
