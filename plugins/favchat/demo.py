"""`omnimm demo favchat`: synthetic face videos -> two progressive stages -> held-out attribute questions.

Runs offline on a CPU in minutes. It trains the model of `configs/demo.yaml` (a general ViT, the SFace face
encoder with its real weights, the mixture-of-experts connector, a tiny LLM) through both stages, summaries then
questions, and asks every question about every held-out clip. Ablations in the same run: without the face encoder,
and with a dense connector of the same size instead of the mixture of experts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from omnimm.files import atomic_write_text
from omnimm.run import RunConfig

CONFIG = Path(__file__).parent / "configs" / "demo.yaml"
VARIANTS = ("favchat", "no-face-encoder", "dense-connector")


def default_workdir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "omnimm" / "favchat-demo"


@dataclass
class DemoResult:
    """Accuracy per question kind for each trained variant, notes (routing, parameters), time per step."""

    accuracy: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def demo_config(
    workdir: Path, variant: str, *, quick: bool = False, dense: dict[str, Any] | None = None, seed: int = 0
) -> RunConfig:
    """The demo's run config for one variant, folders filled in; `seed` sets the initial weights and data order."""
    run = variant if seed == 0 else f"{variant}-seed{seed}"
    text = CONFIG.read_text().replace("${workdir}", str(workdir)).replace("${run}", run)
    data: dict[str, Any] = yaml.safe_load(text)
    data["train"]["seed"] = seed
    model = data["model"]
    if variant == "no-face-encoder":
        del model["encoders"]["face"]
        model["connector"]["face"] = []
        model.pop("visual_groups")  # no face group, so no delimiters around it
        for stage in data["train"]["stages"]:
            stage["train"] = [part for part in stage["train"] if part != "delimiters"]
    elif variant == "dense-connector":
        model["connector"] = dense
    if quick:
        for stage in data["train"]["stages"]:
            stage["epochs"] = 1
    return RunConfig.from_dict(data, source=str(CONFIG))


def prepare(workdir: Path, *, quick: bool = False) -> None:
    """Write the clips, their landmarks and records, and the tokenizer (kept between runs)."""
    from omnimm.llm.templates import LLAVA_V0
    from omnimm.llm.tokenizer import train_word_tokenizer
    from omnimm_plugins.favchat.synthetic import corpus, generate_faces

    generate_faces(workdir / "faces", train=60 if quick else 240, test=20 if quick else 60)
    texts = [LLAVA_V0.prompt([("user", "<video>\nquestion")]), *corpus()]
    tokens = ["<video>", "<face_start>", "<face_end>"]
    train_word_tokenizer(texts, extra_tokens=tokens).save_pretrained(workdir / "tokenizer")


def dense_connector(model: Any) -> dict[str, Any]:
    """The connector config of the same size without experts (a plain MLP in place of the mixture)."""
    from omnimm_plugins.favchat.moe import matched_dense

    config = matched_dense(model.config.connector, model.encoder_groups, model.llm.hidden_size)
    return config.to_dict()


def run_demo(
    workdir: Path | None = None,
    *,
    ablation: bool = True,
    quick: bool = False,
    progress: bool = True,
    log: Any = print,
) -> DemoResult:
    """Prepare data, train each variant through both stages, evaluate; returns the figures."""
    from omnimm.summary import parameter_counts
    from omnimm.training.trainer import run_training

    workdir = Path(workdir or default_workdir())
    result = DemoResult()
    started = time.perf_counter()
    prepare(workdir, quick=quick)
    result.seconds["data"] = time.perf_counter() - started
    log(
        f"data: {workdir / 'faces'} ({result.seconds['data']:.1f} s); landmarks from the renderer stand in for a "
        "face detector (drawn faces are not what detectors are trained on)"
    )
    dense: dict[str, Any] | None = None
    for variant in VARIANTS if ablation else VARIANTS[:1]:
        run = demo_config(workdir, variant, quick=quick, dense=dense)
        atomic_write_text(workdir / f"{variant}.yaml", run.to_yaml())
        stages = ", ".join(stage.name for stage in run.train.stages)
        log(f"training '{variant}': {stages} (config: {workdir / f'{variant}.yaml'})")
        begin = time.perf_counter()
        model = run_training(run, progress=progress)
        result.seconds[f"train {variant}"] = time.perf_counter() - begin
        connector = sum(p.numel() for p in model.connector.parameters())
        result.notes[variant] = [f"connector parameters: {connector:,} (model: {parameter_counts(model)[0]:,})"]
        begin = time.perf_counter()
        result.accuracy[variant] = evaluate(model, workdir, output=Path(run.train.output_dir) / "eval")
        result.seconds[f"evaluate {variant}"] = time.perf_counter() - begin
        if variant == "favchat":
            result.notes[variant].append(routing(model, workdir))
            dense = dense_connector(model)
    result.seconds["total"] = time.perf_counter() - started
    return result


def evaluation_data(workdir: Path) -> dict[str, Any]:
    return {"name": "favchat/videos", "path": str(workdir / "faces" / "test.jsonl"), "task": "qa", "cache": True}


def evaluate(model: Any, workdir: Path, *, output: Path | None = None) -> dict[str, dict[str, float]]:
    """Every question about every held-out clip through `omnimm eval`'s machinery: accuracy per question kind."""
    from omnimm.registry import datasets, evaluators
    from omnimm.videollm.evaluate import evaluate as evaluate_answers

    data = datasets.build(evaluation_data(workdir), processor=model.processor)
    scorer = evaluators.build({"name": "omnimm/choice-accuracy", "group_by": "qa_kind"})
    scored = evaluate_answers(
        model, data, {"omnimm/choice-accuracy": scorer}, output=output, batch_size=32, max_new_tokens=4, progress=False
    )
    groups = scored.metrics["omnimm/choice-accuracy"]["groups"]
    from omnimm_plugins.favchat.synthetic import QUESTIONS

    return {kind: groups[kind] for kind in QUESTIONS if kind in groups}


def routing(model: Any, workdir: Path, batch_size: int = 16) -> str:
    """How evenly the experts share the held-out clips' tokens (load per expert, dead experts)."""
    import torch

    from omnimm.registry import datasets

    data = datasets.build(evaluation_data(workdir), processor=model.processor)
    videos = sorted({data.item(i)[0] for i in range(len(data))})
    loads: list[list[float]] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(videos), batch_size):
            clips = [model.processor.pixels(data.read_clip(v)) for v in videos[start : start + batch_size]]
            _, _, stats = model.connect({key: [clip[key] for clip in clips] for key in clips[0]})
            experts = sorted(k for k in stats if k.startswith("load_e"))
            loads.append([float(stats[k]) for k in experts])
    mean = [sum(column) / len(column) for column in zip(*loads, strict=True)]
    dead = sum(load == 0 for load in mean)
    shares = ", ".join(f"{share:.0%}" for share in mean)
    return f"expert load on the held-out clips: {shares} (uniform: {1 / len(mean):.0%} each; {dead} dead)"
