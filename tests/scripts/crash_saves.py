"""Kill saves with SIGKILL at random points, then load what is left; launched by tests/test_crash_saves.py.

`python crash_saves.py SETTINGS.json REPORT.json`. The settings name the kinds to run (`video-llm`, `between-renames`,
`checkpoint`, `memory-store`) with the kills for each, the seed and the tiny model's config. For each kill this process
forks a child that saves in a loop (alternating two versions), lets it run for a seeded random delay, kills it with
SIGKILL, reaps it, and then loads the folder with the library's own loader, checking that what loads is exactly
one of the saved versions. One process imports torch once and forks: a fresh interpreter per kill would spend
seconds importing. The report says, per kind, how many kills there were, how many loads were clean, and what state
each kill left (the destination in place, restored from a leftover, ...).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # forked children must not inherit a busy OpenMP pool

import torch

torch.set_num_threads(1)

Saver = Callable[[int], None]


def main() -> None:
    settings = json.loads(Path(sys.argv[1]).read_text())
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    runs = {
        "video-llm": video_llm,
        "between-renames": between_renames,
        "checkpoint": checkpoint,
        "memory-store": memory,
    }
    report = {}
    for kind in settings["kinds"]:
        rng = random.Random(f"{settings['seed']}-{kind}")
        report[kind] = runs[kind]({**settings, "kills": settings["kills"][kind]}, Path(settings["work"]) / kind, rng)
    Path(sys.argv[2]).write_text(json.dumps(report, indent=1))


# -- killing --------------------------------------------------------------------------------------------------------


def kill_during(save: Saver, delay: float, setup: Callable[[], None] | None = None) -> int:
    """Fork a child that calls `save(i)` for i = 0, 1, ... until it is SIGKILLed `delay` seconds after it starts;
    returns how it ended (-9 when killed). `setup` runs in the child first (it may arrange its own kill)."""
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(ready_read)
            if setup is not None:
                setup()
            os.write(ready_write, b"x")
            os.close(ready_write)
            index = 0
            while True:
                save(index)
                index += 1
        except BaseException:  # a failing save is a failure of the test: exit non-zero, not SIGKILL
            import traceback

            traceback.print_exc()
            code = 3
        os._exit(code)
    os.close(ready_write)
    os.read(ready_read, 1)
    os.close(ready_read)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:  # it killed itself (between-renames) or failed
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        time.sleep(min(0.002, max(0.0, deadline - time.monotonic())))
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def leftover_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def save_time(save: Saver, repeats: int = 3) -> float:
    start = time.monotonic()
    for index in range(repeats):
        save(index)
    return (time.monotonic() - start) / repeats


# -- the video LLM --------------------------------------------------------------------------------------------------


def tiny_models(settings: dict[str, Any]) -> tuple[Any, list[dict[str, torch.Tensor]], torch.Tensor]:
    from omnimm import models

    torch.manual_seed(0)
    model = models.build(settings["model"]).eval()
    versions = []
    for version in range(2):  # two versions of every weight, as two training steps would give
        torch.manual_seed(100 + version)
        versions.append({name: torch.randn_like(value) for name, value in model.state_dict().items()})
    text = model.llm.tokenizer("what colour is it ?", add_special_tokens=False).input_ids
    torch.manual_seed(7)
    inputs = {  # a 4-frame clip's tokens after the question: the output goes through every part of the model
        "input_ids": torch.tensor([text + model.visual_ids(4)]),
        "pixel_values": {key: [torch.rand(4, 3, 32, 32)] for key in model.encoders},
    }
    return model, versions, inputs


def video_llm_run(settings: dict[str, Any], work: Path, rng: random.Random, *, between: bool) -> dict[str, Any]:
    from omnimm.videollm.model import VideoLLM

    model, versions, inputs = tiny_models(settings)
    logits = []
    for state in versions:
        model.load_state_dict(state)
        with torch.no_grad():
            logits.append(model(**inputs)["logits"])
    target = work / "final"

    def save(index: int) -> None:
        model.load_state_dict(versions[(index + 1) % 2])  # starts with the version not yet on disk
        model.save_pretrained(target)

    model.load_state_dict(versions[0])
    model.save_pretrained(target)
    typical = save_time(save)
    model.load_state_dict(versions[0])
    model.save_pretrained(target)
    kills, clean, states, failures, loaded_versions = 0, 0, {}, [], [0, 0]
    for _ in range(settings["kills"]):
        delay = 30.0 if between else rng.uniform(0.0, 3.0 * typical)
        ended = kill_during(save, delay, setup=(lambda: kill_between_renames(target)) if between else None)
        if ended != -signal.SIGKILL:
            failures.append(f"the saving child ended with {ended}, not SIGKILL")
            continue
        kills += 1
        state = ("final in place" if target.is_dir() else "final missing") + (
            " + leftovers" if leftover_names(target) else ""
        )
        states[state] = states.get(state, 0) + 1
        try:
            loaded = VideoLLM.from_pretrained(target).eval()
            with torch.no_grad():
                out = loaded(**inputs)["logits"]
            same = [
                index
                for index, state_dict in enumerate(versions)
                if all(torch.equal(value, state_dict[name]) for name, value in loaded.state_dict().items())
                and torch.equal(out, logits[index])
            ]
        except Exception as error:  # counted, reported: the test fails on it
            failures.append(f"{type(error).__name__}: {error}")
            continue
        if same:
            clean += 1
            loaded_versions[same[0]] += 1
        else:
            failures.append("the loaded weights are neither saved version")
    leftovers_before = leftover_names(target)
    model.save_pretrained(target)  # the next save clears what the killed ones left
    return {
        "kills": kills,
        "clean_loads": clean,
        "states": states,
        "versions_loaded": loaded_versions,
        "failures": failures,
        "typical_save_s": round(typical, 4),
        "leftovers_before_last_save": len(leftovers_before),
        "leftovers_after_last_save": leftover_names(target),
    }


def kill_between_renames(target: Path) -> None:
    """SIGKILL this process the moment a save has moved `target` aside and is about to rename the new folder in:
    the worst point of the swap. An audit hook sees each rename before it happens."""
    moved_aside = []

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event != "os.rename":
            return
        source, destination = os.fsdecode(args[0]), os.fsdecode(args[1])
        if source == str(target):
            moved_aside.append(destination)
        elif destination == str(target) and moved_aside:
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)


def video_llm(settings: dict[str, Any], work: Path, rng: random.Random) -> dict[str, Any]:
    return video_llm_run(settings, work, rng, between=False)


def between_renames(settings: dict[str, Any], work: Path, rng: random.Random) -> dict[str, Any]:
    return video_llm_run(settings, work, rng, between=True)


# -- training checkpoints -------------------------------------------------------------------------------------------


def checkpoint(settings: dict[str, Any], work: Path, rng: random.Random) -> dict[str, Any]:
    """Trainer checkpoints (model, optimizer, scheduler, RNG, trainer state; old ones rotated) written by HF's own
    `_save_checkpoint`, killed at random; `last_complete_checkpoint` must name one whose every file reads."""
    from safetensors.torch import load_model
    from transformers.trainer_utils import get_last_checkpoint

    from omnimm.registry import datasets
    from omnimm.run import RunConfig
    from omnimm.training.trainer import (
        TrainerView,
        _arguments,
        _stage_trainer_class,
        last_complete_checkpoint,
        set_trainable,
    )

    run = RunConfig.from_dict(settings["run"] | {"train": {**settings["run"]["train"], "output_dir": str(work)}})
    stage = run.train.stages[0]
    model, versions, _ = tiny_models({"model": settings["run"]["model"]})
    set_trainable(model, stage.train)
    trainer = _stage_trainer_class()(
        model=TrainerView(model),
        args=_arguments(run.train, stage, work / stage.name, progress=False),
        train_dataset=datasets.build(stage.data, processor=model.processor),
        data_collator=model.processor,
        stage=stage,
    )
    trainer.train()  # one real step: optimizer state, scheduler, checkpoint-1
    output = work / stage.name
    step = [trainer.state.global_step]

    def save(index: int) -> None:
        step[0] += 1
        trainer.state.global_step = step[0]
        model.load_state_dict(versions[step[0] % 2])
        trainer._save_checkpoint(trainer.model, trial=None)

    typical = save_time(save)
    kills, clean, chose_incomplete, failures = 0, 0, 0, []
    for _ in range(settings["kills"]):
        base = step[0] + 1000 * (kills + 1)  # each child numbers its checkpoints above every earlier one

        def save_from(index: int, base: int = base) -> None:
            step[0] = base + index - 1
            save(index)

        ended = kill_during(save_from, rng.uniform(0.0, 3.0 * typical))
        if ended != -signal.SIGKILL:
            failures.append(f"the saving child ended with {ended}, not SIGKILL")
            continue
        kills += 1
        newest = get_last_checkpoint(str(output))
        chosen = last_complete_checkpoint(output, stage.name)
        if newest != chosen:
            chose_incomplete += 1  # what HF's own choice would have resumed from: an incomplete checkpoint
        try:
            folder = Path(chosen)
            chosen_step = int(folder.name.split("-")[1])
            load_model(model, str(folder / "model.safetensors"))
            expected = versions[chosen_step % 2] if chosen_step > 1 else None
            torch.load(folder / "optimizer.pt", weights_only=True)
            state = json.loads((folder / "trainer_state.json").read_text())
            if state["global_step"] != chosen_step:
                raise ValueError(f"{folder}: global_step {state['global_step']}")
            if expected is not None and not all(torch.equal(v, expected[k]) for k, v in model.state_dict().items()):
                raise ValueError(f"{folder}: weights are not the version saved at step {chosen_step}")
        except Exception as error:
            failures.append(f"{type(error).__name__}: {error}")
            continue
        clean += 1
    return {
        "kills": kills,
        "clean_loads": clean,
        "newest_was_incomplete": chose_incomplete,
        "failures": failures,
        "typical_save_s": round(typical, 4),
    }


# -- the haruhi memory store ----------------------------------------------------------------------------------------


def memory(settings: dict[str, Any], work: Path, rng: random.Random) -> dict[str, Any]:
    import numpy as np

    from omnimm_plugins.haruhi.store import FaissMemory

    versions, queries = [], []
    for version in range(2):
        store = FaissMemory()
        vectors = np.random.default_rng(version).standard_normal((3000, 64), dtype=np.float32)
        store.add(vectors, [f"version {version} memory {i}" for i in range(3000)])
        versions.append(store)
        queries.append(vectors[:1])
    texts = [sorted(m.text for m in store.memories()) for store in versions]
    folder = work / "store"
    versions[0].save(folder)

    def save(index: int) -> None:
        versions[(index + 1) % 2].save(folder)

    typical = save_time(save)
    versions[0].save(folder)
    kills, clean, failures = 0, 0, []
    for _ in range(settings["kills"]):
        ended = kill_during(save, rng.uniform(0.0, 3.0 * typical))
        if ended != -signal.SIGKILL:
            failures.append(f"the saving child ended with {ended}, not SIGKILL")
            continue
        kills += 1
        try:
            loaded = FaissMemory.load(folder)
            found = sorted(m.text for m in loaded.memories())
            hit = loaded.search(queries[0], k=1)[0][0]
        except Exception as error:
            failures.append(f"{type(error).__name__}: {error}")
            continue
        if found in texts and hit.text.startswith(f"version {texts.index(found)} "):
            clean += 1
        else:
            failures.append("the loaded memories are neither saved version")
    return {"kills": kills, "clean_loads": clean, "failures": failures, "typical_save_s": round(typical, 4)}


if __name__ == "__main__":
    main()
