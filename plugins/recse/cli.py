"""`omnimm recse train|eval` and `omnimm encode`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from omnimm.files import read_utf8

recse_app = typer.Typer(help="recse: contrastive sentence embeddings with feature reshaping.", no_args_is_help=True)

ModelArgument = Annotated[
    str,
    typer.Argument(
        help="A model folder (sentence-transformers or transformers), an encoder config file, or 'minilm' for the "
        "packaged all-MiniLM-L6-v2."
    ),
]
PoolingOption = Annotated[
    str | None,
    typer.Option(help="cls, mean or pooler (default: the folder's sentence-transformers pooling, else mean)."),
]


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def encoder_config(model: str, pooling: str | None = None) -> Any:
    """The `hf/sentence-encoder` config for MODEL (see the argument's help)."""
    from omnimm.config import load_config
    from omnimm.registry import encoders

    path = Path(model)
    if path.suffix.lower() in (".yaml", ".yml", ".json") and path.is_file():
        return load_config(path, "encoders")
    options: dict[str, Any] = {"name": "hf/sentence-encoder"}
    if model != "minilm":
        if not path.is_dir():
            raise typer.BadParameter(f"{model}: not a model folder, an encoder config file, or 'minilm'")
        if not (path / "config.json").is_file():  # else transformers fails deep inside with a vague message
            from omnimm.errors import BuildError

            found = "it is empty" if not any(path.iterdir()) else "it has no config.json"
            raise BuildError(str(path), f"not a transformers or sentence-transformers model folder ({found})")
        options["path"] = str(path)
    options["pooling"] = pooling or _folder_pooling(path) or "mean"
    return encoders.validate(options)


def _folder_pooling(folder: Path) -> str | None:
    config = folder / "1_Pooling" / "config.json"
    if not config.is_file():
        return None
    modes = json.loads(config.read_text(encoding="utf-8"))
    if modes.get("pooling_mode_cls_token"):
        return "cls"
    if modes.get("pooling_mode_mean_tokens"):
        return "mean"
    return None


@recse_app.command("train")
def train_command(
    config: Annotated[Path, typer.Argument(help="A training config (YAML/JSON), e.g. recse:unsup.")],
    max_steps: Annotated[int | None, typer.Option(help="Override max_steps.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override the seed.")] = None,
    output_dir: Annotated[Path | None, typer.Option(help="Override output_dir.")] = None,
) -> None:
    """Train a sentence encoder (SimCSE or word repetition, optionally with the reshaped view).

    The checkpoint with the best STS-B dev Spearman is kept and exported for sentence-transformers.
    """
    from omnimm.config import load_config
    from omnimm_plugins.recse.configs import RecseTrainConfig
    from omnimm_plugins.recse.training import train

    loaded = load_config(config, RecseTrainConfig)
    overrides = {"max_steps": max_steps, "seed": seed, "output_dir": str(output_dir) if output_dir else None}
    updates = {key: value for key, value in overrides.items() if value is not None}
    run = RecseTrainConfig.model_validate({**loaded.model_dump(), **updates})
    result = train(run)
    best = f", best STS-B dev Spearman {result.best_spearman:.4f}" if result.best_spearman is not None else ""
    _console().print(f"model: {result.model_dir}{best}", markup=False)


@recse_app.command("eval")
def eval_command(
    model: ModelArgument = "minilm",
    stsb: Annotated[Path | None, typer.Option(help="An STS-B folder.")] = None,
    split: Annotated[str, typer.Option(help="STS-B split: train, dev (select) or test (report).")] = "dev",
    csv: Annotated[Path | None, typer.Option(help="A CSV/TSV of sentence1, sentence2, score instead.")] = None,
    pooling: PoolingOption = None,
) -> None:
    """Spearman and Pearson correlation of a model's cosine similarities with gold similarity scores."""
    from omnimm.registry import encoders, evaluators

    if (stsb is None) == (csv is None):
        raise typer.BadParameter("give exactly one of --stsb FOLDER or --csv FILE")
    spec = (
        {"name": "recse/stsb", "folder": str(stsb), "split": split}
        if stsb
        else {"name": "recse/sts-csv", "path": str(csv)}
    )
    evaluator = evaluators.build(spec)
    scores = evaluator.evaluate(encoders.build(encoder_config(model, pooling)))
    _console().print(
        f"{scores['pairs']} pairs: Spearman {scores['spearman']:.4f}, Pearson {scores['pearson']:.4f}", markup=False
    )


def encode_command(
    model: ModelArgument,
    file: Annotated[Path, typer.Argument(help="A UTF-8 text file, one sentence per line (blank lines are skipped).")],
    out: Annotated[
        Path,
        typer.Option(
            help="Where to write the embeddings (.safetensors: tensor 'embeddings', and 'line' with each row's "
            "1-based line number in FILE)."
        ),
    ],
    batch_size: Annotated[int, typer.Option(help="Sentences per batch.")] = 64,
    pooling: PoolingOption = None,
) -> None:
    """Embed every non-blank line of FILE with a sentence encoder; writes unit-length float32 embeddings as
    safetensors, with the line number of each row beside them (`line`, int64), since blank lines are skipped."""
    import numpy as np

    from omnimm.deps import require
    from omnimm.files import atomic_write_bytes
    from omnimm.registry import encoders

    safetensors_numpy = require("safetensors.numpy", extra="torch", purpose="writing embeddings")
    numbered = [(n, line.strip()) for n, line in enumerate(read_utf8(file).split("\n"), 1) if line.strip()]
    if not numbered:
        raise typer.BadParameter(f"{file}: no sentences (one per line expected)")
    lines, sentences = np.asarray([n for n, _ in numbered], dtype=np.int64), [text for _, text in numbered]
    config = encoder_config(model, pooling)
    encoder = encoders.build(config)
    vectors = encoder.encode(sentences, batch_size=batch_size, progress=True)
    metadata = {"model": json.dumps(config.model_dump(mode="json")), "source": str(file), "count": str(len(sentences))}
    atomic_write_bytes(out, safetensors_numpy.save({"embeddings": vectors, "line": lines}, metadata=metadata))
    skipped = int(lines[-1]) - len(lines)
    note = f" (lines of {file} in tensor 'line'; {skipped} blank lines skipped)" if skipped else ""
    _console().print(f"{out}: {vectors.shape[0]} x {vectors.shape[1]} embeddings{note}", markup=False)
