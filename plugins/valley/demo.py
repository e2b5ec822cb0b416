"""`omnimm demo valley`: synthetic videos -> two training stages -> answers, accuracy per question type.

Runs offline on a CPU in a few minutes. It trains the model of `configs/demo.yaml` twice: as is (N pooled patch
tokens + T temporal CLS tokens) and without the temporal tokens, to show that the direction of motion needs them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from omnimm.files import atomic_write_text
from omnimm.llm.packaged import smollm2_folder
from omnimm.run import RunConfig

CONFIG = Path(__file__).parent / "configs" / "demo.yaml"


def default_workdir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "omnimm" / "valley-demo"


@dataclass
class DemoResult:
    """Accuracy per question type for each trained variant, and how long each step took."""

    accuracy: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    examples: list[tuple[str, str, str]] = field(default_factory=list)
    visual_tokens: dict[str, int] = field(default_factory=dict)


def demo_config(workdir: Path, run: str, *, temporal_tokens: bool = True, quick: bool = False) -> RunConfig:
    """The demo's run config with its folders filled in (`${workdir}`, `${run}`)."""
    text = CONFIG.read_text().replace("${workdir}", str(workdir)).replace("${run}", run)
    data: dict[str, Any] = yaml.safe_load(text)
    data["model"]["connector"]["temporal_tokens"] = temporal_tokens
    if quick:  # a smoke run: a fraction of the data and of the epochs
        for stage in data["train"]["stages"]:
            stage["epochs"] = 1
    return RunConfig.from_dict(data, source=str(CONFIG))


def prepare(workdir: Path, *, quick: bool = False) -> None:
    """Write the clips and the tokenizer (kept between runs)."""
    from omnimm.llm.templates import LLAVA_V0
    from omnimm.llm.tokenizer import train_word_tokenizer
    from omnimm_plugins.valley.shapes import corpus, generate_shapes

    generate_shapes(workdir / "shapes", train=200 if quick else 800, test=40 if quick else 100)
    texts = [LLAVA_V0.prompt([("user", "<video>\nquestion")]), *corpus()]
    train_word_tokenizer(texts, extra_tokens=["<video>"]).save_pretrained(workdir / "tokenizer")


def run_demo(
    workdir: Path | None = None,
    *,
    ablation: bool = True,
    quick: bool = False,
    progress: bool = True,
    log: Any = print,
) -> DemoResult:
    """Prepare data, train, evaluate; returns the figures (and logs progress through `log`)."""
    from omnimm.training.trainer import run_training
    from omnimm_plugins.valley.shapes import QUESTIONS, evaluate, load_clips

    workdir = Path(workdir or default_workdir())
    result = DemoResult()
    started = time.perf_counter()
    prepare(workdir, quick=quick)
    result.seconds["data"] = time.perf_counter() - started
    log(f"data: {workdir / 'shapes'} ({result.seconds['data']:.1f} s)")
    variants = {"valley": True, **({"no-temporal-tokens": False} if ablation else {})}
    for label, temporal in variants.items():
        run = demo_config(workdir, label, temporal_tokens=temporal, quick=quick)
        atomic_write_text(workdir / f"{label}.yaml", run.to_yaml())
        log(f"training '{label}': {', '.join(s.name for s in run.train.stages)} (config: {workdir / f'{label}.yaml'})")
        begin = time.perf_counter()
        model = run_training(run, progress=progress)
        result.seconds[f"train {label}"] = time.perf_counter() - begin
        result.visual_tokens[label] = model.num_visual_tokens(model.config.frames.num_frames or 8)
        begin = time.perf_counter()
        output = Path(run.train.output_dir) / "eval"
        result.accuracy[label] = evaluate(model, workdir / "shapes", limit=40 if quick else None, output=output)
        result.seconds[f"evaluate {label}"] = time.perf_counter() - begin
        if label == "valley":
            clip = load_clips(workdir / "shapes", "test")[0]
            for kind, question in QUESTIONS.items():
                reply = model.answer(workdir / "shapes" / clip.file, question, max_new_tokens=4)
                result.examples.append((question, reply, clip.answer(kind)))
    result.seconds["total"] = time.perf_counter() - started
    return result


def save_untrained_model(workdir: Path) -> tuple[Path, Path]:
    """The demo's model (its config, a word tokenizer, two test clips), untrained, saved to `workdir/valley`: what
    serving and its tests and benchmarks load when the answer's quality does not matter. Returns (model, a clip)."""
    import torch

    from omnimm.llm.templates import LLAVA_V0
    from omnimm.llm.tokenizer import train_word_tokenizer
    from omnimm.registry import models
    from omnimm_plugins.valley.shapes import corpus, generate_shapes, load_clips

    generate_shapes(workdir / "shapes", train=0, test=2)
    texts = [LLAVA_V0.prompt([("user", "<video>\nquestion")]), *corpus()]
    train_word_tokenizer(texts, extra_tokens=["<video>"]).save_pretrained(workdir / "tokenizer")
    torch.manual_seed(0)
    models.build(demo_config(workdir, "valley").model).save_pretrained(workdir / "valley")
    return workdir / "valley", workdir / "shapes" / load_clips(workdir / "shapes", "test")[0].file


def caption_loss(model: Any, root: Path, *, limit: int = 32) -> float:
    """Mean next-token loss of the held-out captions (teacher forcing): how well the LLM describes the videos."""
    import torch

    from omnimm_plugins.valley.shapes import CAPTION_PROMPT, load_clips

    processor = model.processor
    clips = load_clips(root, "test")[:limit]
    examples = [
        processor.encode([("user", CAPTION_PROMPT), ("assistant", c.caption())], processor.read(root / c.file))
        for c in clips
    ]
    model.eval()
    with torch.no_grad():
        losses = [float(model(**processor.collate(examples[i : i + 8]))["loss"]) for i in range(0, len(examples), 8)]
    return sum(losses) / len(losses)


def run_smollm2(workdir: Path | None = None, *, progress: bool = True, log: Any = print) -> dict[str, Any]:
    """Valley's stage 1 (projector only) with the real SmolLM2-135M-Instruct: held-out caption loss before and after."""
    from omnimm.registry import models
    from omnimm.training.trainer import run_training
    from omnimm_plugins.valley.shapes import CAPTION_PROMPT, load_clips

    workdir = Path(workdir or default_workdir())
    prepare(workdir)
    text = (CONFIG.parent / "smollm2.yaml").read_text()
    text = text.replace("${workdir}", str(workdir)).replace("${smollm2}", str(smollm2_folder()))
    run = RunConfig.from_dict(yaml.safe_load(text), source="smollm2.yaml")
    started = time.perf_counter()
    import torch

    torch.manual_seed(run.train.seed)
    model = models.build(run.model)
    log(f"loaded SmolLM2-135M-Instruct ({time.perf_counter() - started:.0f} s)")
    before = caption_loss(model, workdir / "shapes")
    begin = time.perf_counter()
    model = run_training(run, progress=progress, model=model)
    trained = time.perf_counter() - begin
    after = caption_loss(model, workdir / "shapes")
    clip = load_clips(workdir / "shapes", "test")[0]
    reply = model.answer(workdir / "shapes" / clip.file, CAPTION_PROMPT, max_new_tokens=16)
    return {
        "loss_before": before,
        "loss_after": after,
        "train_seconds": trained,
        "reply": reply,
        "truth": clip.caption(),
        "total_seconds": time.perf_counter() - started,
    }
