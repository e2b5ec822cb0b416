"""Training memory: the estimate `omnimm build RUN --memory` prints (`omnimm.training.memory`) against what real
training steps on CPU take, for a small video LLM (tiny ViT of width 192, 4 blocks, 64 px, 4 frames; valley/stpool
with an MLP projector; a 4-layer 512-wide Llama with an 8192-word vocabulary), batch 4 x 371 tokens (68 visual).

What is measured, in a fresh process per configuration (forward, backward and an AdamW step, as the Trainer runs
them, on batches collated beforehand):

- parameters, gradients and optimizer state: the bytes of those tensors, counted after the second step (exact);
- kept for backward: the bytes of every distinct storage autograd saves during the second step's forward
  (`torch.autograd.graph.saved_tensors_hooks`), parameters excluded; what the backward needs, not transient peaks;
- peak: the process's peak resident memory (`ru_maxrss`) less what it held before training beyond the model's
  parameters (Python, the imported libraries, the tokenizer: resident memory once the model is built and the
  batch collated, minus the parameters' bytes), with glibc sending every allocation above 64 KiB straight to mmap
  (`MALLOC_MMAP_THRESHOLD_=65536`) so that a freed tensor leaves resident memory at once. Besides the tensors it
  includes autograd's bookkeeping and allocator slack.

The estimate is compared with the sum of what it models (parameters + gradients + optimizer + activations): row
"peak" against the measured peak, row "activations" against what autograd kept for backward. Then the same model
under two gloo processes, DDP and FSDP (`train.distributed.mode`), through `omnimm.training.trainer`: each process's
parameter and optimizer bytes (exact) and its peak resident memory against the estimate for one process.

    python benchmarks/run.py memory       # writes benchmarks/results/memory.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MIB = 2**20
WORDS = (
    "what colour is it ? describe the video . red blue green yellow a clip of pancakes flipping yes no "
    "a chat between a curious human and an artificial intelligence assistant . the assistant gives helpful , "
    "detailed , and polite answers to the human's questions . ### human : assistant :"
)
ANSWER_WORDS = 240  # answer length in words: with the prompt, 303 text tokens a sample
BATCH = 4
ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "2"}

CONFIGS: dict[str, dict[str, Any]] = {
    "stage 1: connector trains, LLM frozen on the backward path": {"train": ["connector"]},
    "connector + LLM": {"train": ["connector", "llm"]},
    "connector + LLM, LoRA rank 16 on every linear": {
        "train": ["connector", "llm"],
        "lora": {"rank": 16, "dropout": 0.0, "merge": False},
    },
    "connector + LLM, LLM checkpointed": {"train": ["connector", "llm"], "checkpointing": ["llm"]},
    "connector + LLM, bf16 autocast": {"train": ["connector", "llm"], "precision": "bf16"},
    "encoder + connector + LLM": {"train": ["encoders", "connector", "llm"]},
    "encoder + connector + LLM, both checkpointed": {
        "train": ["encoders", "connector", "llm"],
        "checkpointing": ["encoders", "llm"],
    },
}
QUICK = ("connector + LLM", "connector + LLM, LLM checkpointed")


def model_config(tokenizer: Path) -> dict[str, Any]:
    return {
        "name": "omnimm/video-llm",
        "encoders": {
            "vision": {"name": "omnimm/tiny-vit", "image_size": 64, "patch_size": 8, "dim": 192, "depth": 4, "heads": 3}
        },
        "connector": {"name": "valley/stpool", "projector": {"name": "omnimm/mlp"}},
        "llm": {
            "name": "hf/causal-lm",
            "config": {
                "model_type": "llama",
                "hidden_size": 512,
                "intermediate_size": 1376,
                "num_hidden_layers": 4,
                "num_attention_heads": 8,
                "vocab_size": 8192,
                "max_position_embeddings": 512,
            },
            "tokenizer": str(tokenizer),
        },
        "frames": {"num_frames": 4},
    }


def prepare(folder: Path) -> tuple[Path, dict[str, Any]]:
    """A word tokenizer and eight 4-frame videos with long answers, written to `folder`."""
    import av
    import numpy as np

    from omnimm.llm.tokenizer import train_word_tokenizer

    tokenizer = folder / "tokenizer"
    train_word_tokenizer([WORDS], extra_tokens=["<video>"]).save_pretrained(tokenizer)
    words = WORDS.split()
    records = []
    for index in range(8):
        path = folder / f"{index}.mkv"
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream("ffv1", rate=4)
            stream.width = stream.height = 64
            stream.pix_fmt = "bgr0"
            for t in range(4):
                image = np.full((64, 64, 3), 20 * t + index, dtype=np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        answer = " ".join(words[(index + i) % len(words)] for i in range(ANSWER_WORDS))
        turns = [{"from": "human", "value": "describe the video ."}, {"from": "gpt", "value": answer}]
        records.append({"video": path.name, "conversations": turns})
    (folder / "data.json").write_text(json.dumps(records))
    return tokenizer, {"name": "omnimm/conversations", "path": str(folder / "data.json")}


def run_config(tokenizer: Path, data: dict[str, Any], output: Path, spec: dict[str, Any], **train: Any) -> dict:
    stage = {
        "name": "s",
        "train": spec["train"],
        "data": data,
        "learning_rate": 1e-3,
        "batch_size": BATCH,
        "max_steps": 2,
        "save_steps": 100,
        "shuffle": False,
        "scheduler": "constant",
        "warmup_ratio": 0.0,
    }
    if "lora" in spec:
        stage["lora"] = spec["lora"]
    return {
        "model": model_config(tokenizer),
        "train": {
            "output_dir": str(output),
            "precision": spec.get("precision", "fp32"),
            "gradient_checkpointing": spec.get("checkpointing", []),
            "stages": [stage],
            **train,
        },
    }


# -- one process, one configuration ------------------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(run_file: Path) -> dict[str, Any]:
    """Two training steps of the run's first stage in this process; what they held (see the module's doc)."""
    import resource

    import torch

    from omnimm.registry import datasets, models
    from omnimm.run import RunConfig
    from omnimm.training.distributed import enable_gradient_checkpointing
    from omnimm.training.memory import prepare_stage
    from omnimm.training.trainer import _parameter_groups

    run = RunConfig.model_validate(json.loads(run_file.read_text()))
    stage = run.train.stages[0]
    torch.manual_seed(0)
    model = models.build(run.model).train()
    prepare_stage(model, stage)
    enable_gradient_checkpointing(model, run.train.gradient_checkpointing)
    dataset = datasets.build(stage.data, processor=model.processor)
    batch = model.processor.collate([dataset[i] for i in range(stage.batch_size)])
    optimizer = torch.optim.AdamW(_parameter_groups(model, stage), lr=stage.learning_rate)
    autocast = run.train.precision != "fp32"
    baseline = _rss() - _bytes(model.parameters()) - _bytes(model.buffers())
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    grads = 0
    for _ in range(2):
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = model(**batch)["loss"]
        loss.backward()
        grads = _bytes(p.grad for p in model.parameters() if p.grad is not None)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del loss
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    text = batch["input_ids"].shape[1] - model.num_visual_tokens(4)
    return {
        "parameters": _bytes(model.parameters()) + _bytes(model.buffers()),
        "gradients": grads,
        "optimizer": _bytes(state),
        "kept_for_backward": sum(saved.values()),
        "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline,
        "text_tokens": int(text),
    }


def estimate(run_file: Path, text_tokens: int, **options: Any) -> Any:
    from omnimm.run import RunConfig
    from omnimm.training.memory import memory_report

    run = RunConfig.model_validate(json.loads(run_file.read_text()))
    return memory_report(run, frames=4, text_tokens=text_tokens, **options)[0]


def _in_subprocess(*args: str, launcher: list[str] | None = None) -> None:
    command = [*(launcher or [sys.executable]), str(Path(__file__)), *args]
    done = subprocess.run(command, env={**os.environ, **ENV}, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def bench_single(label: str, spec: dict[str, Any], folder: Path, tokenizer: Path, data: dict) -> list[dict]:
    run_file = folder / f"{abs(hash(label))}.json"
    run_file.write_text(json.dumps(run_config(tokenizer, data, folder / "out", spec)))
    result = folder / f"{abs(hash(label))}-measured.json"
    _in_subprocess("--measure", str(run_file), str(result))
    measured = json.loads(result.read_text())
    totals = estimate(run_file, measured["text_tokens"]).totals()
    modelled = measured["parameters"] + measured["gradients"] + measured["optimizer"]
    return [
        _row(
            f"{label}: activations",
            totals["activations"],
            measured["kept_for_backward"],
            "estimated activations vs the bytes autograd kept for the backward",
        ),
        _row(
            f"{label}: peak",
            totals["total"],
            measured["peak"],
            "estimated total vs peak resident growth of the process",
            parameters_gradients_optimizer=f"{totals['parameters'] + totals['gradients'] + totals['optimizer']} "
            f"estimated, {modelled} measured (bytes)",
        ),
    ]


def _row(benchmark: str, ours: int, reference: int, labels: str, **extra: Any) -> dict[str, Any]:
    ours_label, reference_label = labels.split(" vs ")
    return {
        "benchmark": benchmark,
        "ours_label": ours_label,
        "reference_label": reference_label,
        "ours": ours / MIB,
        "reference": reference / MIB,
        "ratio": ours / reference if reference else None,
        "unit": "MiB",
        "notes": "ratio = estimate / measured",
        **extra,
    }


# -- two processes: DDP and FSDP -----------------------------------------------------------------------------------


def measure_rank(run_file: Path) -> None:
    """Under torchrun: train the run and write each process's parameter and optimizer bytes and peak resident
    memory (less what it held before training beyond the parameters) to `<output_dir>/rank-<rank>.json`."""
    import resource

    import accelerate  # noqa: F401  (imported before the baseline, as the Trainer would import them)
    import torch
    import transformers.trainer  # noqa: F401
    from torch.distributed.tensor import DTensor

    from omnimm.run import RunConfig
    from omnimm.training import trainer as stages

    run = RunConfig.model_validate(json.loads(run_file.read_text()))

    def local(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to_local() if isinstance(tensor, DTensor) else tensor

    def train_stage(model: Any, *args: Any, **kwargs: Any) -> Any:
        baseline = _rss() - _bytes(model.parameters()) - _bytes(model.buffers())  # the model built, not trained
        trainer = original(model, *args, **kwargs)
        state = [v for s in trainer.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        record = {
            "parameters": _bytes(local(p) for p in trainer.model_wrapped.parameters()),
            "optimizer": _bytes(local(v) for v in state),
            "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline,
        }
        path = Path(run.train.output_dir) / f"rank-{os.environ['RANK']}.json"
        path.write_text(json.dumps(record))
        return trainer

    original = stages.train_stage
    stages.train_stage = train_stage  # run_training looks it up in the module: this records, it changes nothing
    torch.manual_seed(0)
    stages.run_training(run, progress=False)


def bench_ranks(folder: Path, tokenizer: Path, data: dict, text_tokens: int) -> list[dict[str, Any]]:
    rows = []
    spec = CONFIGS["connector + LLM"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    for mode in ("ddp", "fsdp"):
        output = folder / f"ranks-{mode}"
        run_file = folder / f"ranks-{mode}.json"
        config = run_config(tokenizer, data, output, spec, distributed={"mode": mode})
        config["train"]["stages"][0]["batch_size"] = BATCH // 2
        run_file.write_text(json.dumps(config))
        _in_subprocess("--measure-rank", str(run_file), launcher=torchrun)
        ranks = [json.loads((output / f"rank-{r}.json").read_text()) for r in range(2)]
        held = estimate(run_file, text_tokens, mode=mode, world_size=2).per_rank()
        label = f"connector + LLM, 2 processes, {mode}"
        for key in ("parameters", "optimizer"):
            measured = max(r[key] for r in ranks)
            rows.append(_row(f"{label}: {key} per process", held[key], measured, f"estimate vs measured {key}"))
        peak = max(r["peak"] for r in ranks)
        rows.append(_row(f"{label}: peak per process", held["total"], peak, "estimated total vs peak resident growth"))
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tokenizer, data = prepare(folder)
        text_tokens = 0
        for label, spec in CONFIGS.items():
            if quick and label not in QUICK:
                continue
            rows += bench_single(label, spec, folder, tokenizer, data)
            text_tokens = json.loads(next(folder.glob("*-measured.json")).read_text())["text_tokens"]
        rows += bench_ranks(folder, tokenizer, data, text_tokens)
    return rows


if __name__ == "__main__":
    if sys.argv[1] == "--measure":
        Path(sys.argv[3]).write_text(json.dumps(measure(Path(sys.argv[2]))))
    elif sys.argv[1] == "--measure-rank":
        measure_rank(Path(sys.argv[2]))
