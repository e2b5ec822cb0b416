"""The `omnimm` command line (typer + rich). Plugins add sub-commands through the `omnimm_cli` hook."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from omnimm import __version__


def _console(*, stderr: bool = False) -> Console:
    # Piped output (logs, grep, tests) gets wide tables instead of rich's 80-column default, which folds names.
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 1000
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


stdout = _console()
stderr = _console(stderr=True)

app = typer.Typer(
    name="omnimm",
    help="Published multimodal and LLM methods as plugins that compose.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)
config_app = typer.Typer(
    help="Check config files, show them with defaults, write their JSON schema.", no_args_is_help=True
)
app.add_typer(config_app, name="config")
demo_app = typer.Typer(help="Embedded demos of the installed plugins: offline, CPU, small.", no_args_is_help=True)
app.add_typer(demo_app, name="demo")

KindOption = Annotated[
    str | None,
    typer.Option("--kind", "-k", help="Registry the file's component belongs to (e.g. encoders), when ambiguous."),
]


def _version_callback(value: bool) -> None:
    if value:
        stdout.print(f"omnimm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Published multimodal and LLM methods as plugins that compose."""


# -- plugins and components --------------------------------------------------------------------------------------

_STATUS_STYLE = {"loaded": "green", "failed": "bold red", "skipped": "yellow", "missing": "bold red"}


@app.command("plugins")
def plugins_command(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List components and show full tracebacks.")] = False,
    check: Annotated[bool, typer.Option("--check", help="Exit with status 1 if any plugin failed to load.")] = False,
) -> None:
    """List installed plugins: where each comes from, whether it loaded, what it registered, what it needs."""
    from omnimm.deps import install_hint, unmet_requirements
    from omnimm.plugins import plugin_records
    from omnimm.registry import get_registry

    records = plugin_records()
    table = Table(title="omnimm plugins", title_justify="left")
    table.add_column("plugin", no_wrap=True)
    table.add_column("from", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("components", no_wrap=True)
    table.add_column("notes", overflow="fold")
    for record in records:
        components = record.components()
        counts = ", ".join(_count(len(names), get_registry(plural)) for plural, names in components.items()) or "-"
        notes = record.reason or ""
        if record.status == "loaded" and record.extra:
            unmet = unmet_requirements(record.extra)
            if unmet:
                notes = f"dependencies missing ({', '.join(unmet)}): {install_hint(record.extra)}"
        source = f"{record.distribution} {record.version or ''}".strip() if record.distribution else record.target
        style = _STATUS_STYLE.get(record.status, "")
        table.add_row(record.name, escape(source), f"[{style}]{record.status}[/]", counts, escape(notes))
    stdout.print(table)
    if verbose:
        for record in records:
            for plural, names in record.components().items():
                stdout.print(f"{record.name} {plural}: {', '.join(names)}", markup=False)
            if record.traceback:
                stdout.print(f"\n{record.name} failed:\n{record.traceback}", markup=False)
    if check and any(r.status in ("failed", "missing") for r in records):
        raise typer.Exit(1)


def _count(number: int, registry: Any) -> str:
    return f"{number} {registry.kind if number == 1 else registry.plural}"


@app.command("list")
def list_command(
    registry: Annotated[
        str | None, typer.Argument(help="A registry (encoders, adapters, ...); all when omitted.")
    ] = None,
    patterns: Annotated[list[str] | None, typer.Argument(help="Wildcard filters, e.g. '*vit*'.")] = None,
) -> None:
    """List registered components, optionally of one registry and matching wildcards."""
    from omnimm.plugins import ensure_plugins_loaded
    from omnimm.registry import all_registries, get_registry

    ensure_plugins_loaded()
    chosen = [get_registry(registry)] if registry else list(all_registries().values())
    table = Table(title_justify="left")
    table.add_column("registry", no_wrap=True)
    table.add_column("name", no_wrap=True)
    table.add_column("from", no_wrap=True)
    table.add_column("description", overflow="fold")
    rows = 0
    for reg in chosen:
        for name in reg.names(*(patterns or ())):
            entry = reg.entry(name)
            table.add_row(reg.plural, name, escape(entry.owner.plugin or entry.owner.label), escape(entry.summary()))
            rows += 1
    if rows:
        stdout.print(table)
    else:
        where = registry or "any registry"
        stderr.print(f"no components in {where} match {' '.join(patterns or ['*'])}", markup=False)
        raise typer.Exit(1)


# -- configs -----------------------------------------------------------------------------------------------------


@config_app.command("validate")
def config_validate(
    files: Annotated[list[Path], typer.Argument(help="YAML or JSON config files.")],
    kind: KindOption = None,
    build: Annotated[
        bool,
        typer.Option(
            "--build",
            help="Also build the model on the meta device (no memory, no weights loaded) to catch configs that "
            "validate but cannot be built: widths that do not divide, unknown model types, missing folders.",
        ),
    ] = False,
) -> None:
    """Check config files: every problem with its field path, file line and a close-match suggestion."""
    from omnimm.config import load_config
    from omnimm.errors import ConfigError

    failed = 0
    for file in files:
        try:
            config = load_config(file, into=kind)
        except (ConfigError, FileNotFoundError, UnicodeDecodeError) as error:
            stderr.print(str(error), markup=False)
            failed += 1
            continue
        if build:
            problem = _meta_build_problem(config, kind)
            if problem is not None:
                stderr.print(f"{file}: validates, but {problem}", markup=False)
                failed += 1
                continue
        built = " and builds" if build else ""
        stdout.print(f"ok: {file} ({_describe_config(config)}){built}", markup=False)
    if failed:
        raise typer.Exit(1)


def _meta_build_problem(config: Any, kind: str | None) -> str | None:
    """Build a config's component on the meta device; return what went wrong, or None."""
    from omnimm.errors import BuildError
    from omnimm.registry import get_registry, models
    from omnimm.run import RunConfig

    if isinstance(config, RunConfig):
        registry, component, where = models, config.model, "model"
    else:
        registry = get_registry(kind) if kind else _owner_registry(config)
        component, where = config, registry.kind
    try:
        import torch
    except ImportError:
        return 'torch is not installed, so it cannot be built (pip install "omnimm[torch]")'
    try:
        with torch.device("meta"):
            registry.build(component.without_weights())
    except BuildError as error:
        return f"{where}.{error.where} cannot be built: {error.reason}"
    except (ValueError, TypeError, KeyError, OSError, RuntimeError, ImportError) as error:
        return f"{where} cannot be built: {_one_line(error)}"
    return None


def _owner_registry(config: Any) -> Any:
    from omnimm.registry import all_registries

    return next(r for r in all_registries().values() if getattr(config, "name", None) in r)


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    if isinstance(error, KeyError):
        text = f"missing key {text}"
    first = text.splitlines()[0] if text else type(error).__name__
    return first if len(first) < 400 else first[:400] + "..."


def _describe_config(config: Any) -> str:
    name = getattr(config, "name", None)
    model = getattr(config, "model", None)
    if name:
        return f"{type(config).__name__} '{name}'"
    if model is not None and getattr(model, "name", None):
        return f"{type(config).__name__}, model '{model.name}'"
    return type(config).__name__


@config_app.command("show")
def config_show(
    file: Annotated[Path, typer.Argument(help="YAML or JSON config file.")],
    kind: KindOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
) -> None:
    """Print a config with every default filled in: exactly what will run."""
    from omnimm.config import load_config

    config = load_config(file, into=kind)
    stdout.print(config.to_json() if as_json else config.to_yaml().rstrip(), markup=False)


@config_app.command("schema")
def config_schema(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
    kind: Annotated[
        str | None, typer.Option("--kind", "-k", help="Schema for single-component files of this registry.")
    ] = None,
) -> None:
    """Write the JSON schema of config files, with every registered component (for editor completion)."""
    from omnimm.config import json_schema
    from omnimm.files import atomic_write_text

    text = json.dumps(json_schema(kind), indent=2, ensure_ascii=False) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    atomic_write_text(output, text)
    stderr.print(f"wrote {output}", markup=False)


# -- building ----------------------------------------------------------------------------------------------------


@app.command("build")
def build_command(
    config_file: Annotated[
        Path, typer.Argument(metavar="CONFIG", help="A run file (with `model:`) or a component file.")
    ],
    kind: KindOption = None,
    depth: Annotated[
        int | None, typer.Option("--depth", "-d", min=0, help="How many levels of sub-modules to show (default 2).")
    ] = None,
    memory: Annotated[
        bool,
        typer.Option(
            "--memory",
            help="Instead of the tree, estimate training memory: parameters, gradients, optimizer state and "
            "activations per part, and what one process holds in each mode (built on the meta device).",
        ),
    ] = False,
    mode: Annotated[
        str | None,
        typer.Option(help="With --memory: single, ddp, fsdp, zero1-3 (default: the run's train.distributed)."),
    ] = None,
    world_size: Annotated[int | None, typer.Option(help="With --memory: number of processes (default 1).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="With --memory: per process (default: the stage's).")] = None,
    text_tokens: Annotated[
        int | None, typer.Option(help="With --memory: text tokens per sample (default: up to max_length).")
    ] = None,
    frames: Annotated[int | None, typer.Option(help="With --memory: frames per clip (default: the model's).")] = None,
    precision: Annotated[str | None, typer.Option(help="With --memory: fp32, bf16, fp16 (default: the run's).")] = None,
    stage: Annotated[str | None, typer.Option(help="With --memory: one stage of the run (default: each).")] = None,
) -> None:
    """Build the model a config describes and print its tree with parameter counts (trainable vs frozen)."""
    from omnimm.config import config_target, read_config_file, validate_config
    from omnimm.registry import Registry, models
    from omnimm.run import RunConfig
    from omnimm.summary import describe, module_tree, parameter_counts

    data, positions = read_config_file(config_file)
    target = config_target(data, kind, source=str(config_file))
    config = validate_config(data, target, source=str(config_file), positions=positions)
    memory_options = (mode, batch_size, text_tokens, frames, precision, stage, world_size)
    if not memory and any(option is not None for option in memory_options):
        raise ValueError(
            "--mode, --world-size, --batch-size, --text-tokens, --frames, --precision and --stage need --memory"
        )
    if memory and depth is not None:
        raise ValueError("--depth sets how deep the tree goes; --memory prints tables instead of the tree")
    if memory:
        from omnimm.training.memory import memory_report, part_table, rank_table

        for estimate in memory_report(
            config,
            registry=target,
            mode=mode,
            world_size=world_size,
            batch_size=batch_size,
            precision=precision,
            frames=frames,
            text_tokens=text_tokens,
            stage=stage,
        ):
            stdout.print(part_table(estimate))
            stdout.print(rank_table(estimate))
        return
    if isinstance(config, RunConfig):
        built, label = models.build(config.model), "model"
    else:
        assert isinstance(target, Registry)
        built, label = target.build(config), target.kind
    if hasattr(built, "named_children"):
        stdout.print(module_tree(built, label=label, depth=2 if depth is None else depth))
        total, trainable = parameter_counts(built)
        stdout.print(
            f"total: {total:,} parameters, {trainable:,} trainable, {total - trainable:,} frozen", markup=False
        )
        if hasattr(built, "encoder_groups"):
            stdout.print(_token_table(built))
    else:
        stdout.print(f"{label}: {describe(built)}", markup=False)


def _token_table(model: Any, frames: int | None = None) -> Any:
    """Token groups of a video LLM: what each encoder gives per frame, what the connector gives per clip."""
    frames = frames or model.config.frames.num_frames or model.config.frames.max_frames
    table = Table(title=f"visual tokens for a clip of {frames} frames", title_justify="left")
    table.add_column("group")
    table.add_column("from")
    table.add_column("tokens", justify="right")
    table.add_column("width", justify="right")
    table.add_column("note")
    for ref, group in model.encoder_groups.items():
        table.add_row(ref, "encoder (per frame)", str(group.tokens), str(group.dim), escape(group.description))
    for name, group in model.visual_groups(frames).items():
        table.add_row(name, "connector (per clip)", str(group.tokens), str(group.dim), escape(group.description))
    visual = model.num_visual_tokens(frames)
    table.add_row(
        "into the LLM", "with delimiters", str(visual), "", f"all frame tokens: {frames * model.frame_tokens}"
    )
    for line in model.connector.describe():
        table.add_row("", "connector", "", "", escape(line))
    return table


@app.command("train")
def train_command(
    config_file: Annotated[Path, typer.Argument(metavar="RUN", help="A run file with `model:` and `train:`.")],
    resume: Annotated[
        bool, typer.Option(help="Skip finished stages and continue an unfinished one from its last checkpoint.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train a run's model stage by stage; each stage ends with `<output_dir>/<stage>/final`."""
    import logging

    from omnimm.config import load_config
    from omnimm.run import RunConfig
    from omnimm.training.trainer import run_training

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run = load_config(config_file, into=RunConfig)
    if run.train is None:
        stderr.print(f"{config_file}: no `train:` section, nothing to train", markup=False)
        raise typer.Exit(1)
    run_training(run, resume=resume, progress=progress)
    last = run.train.stages[-1].name
    stdout.print(f"done: {Path(run.train.output_dir) / last / 'final'}", markup=False)


video_app = typer.Typer(help="Look at what a video model sees.", no_args_is_help=True)
app.add_typer(video_app, name="video")


@video_app.command("inspect")
def video_inspect(
    video: Annotated[Path, typer.Argument(help="A video (or image) file.")],
    config_file: Annotated[
        str,
        typer.Option(
            "--config",
            "-c",
            help="A video LLM config: a run file (its model), a model file, a saved model folder, or plugin:name "
            "(e.g. valley:inspect, a small random model).",
        ),
    ],
    question: Annotated[str, typer.Option(help="A prompt, to count text tokens.")] = "What happens in the video?",
) -> None:
    """Frames sampled (indices, timestamps, repeats), each stage's tensor shapes, and the tokens that reach the
    LLM."""
    from omnimm.registry import models
    from omnimm.video import read_visual

    config = _model_config(config_file)
    sampling = getattr(config, "frames", None)
    if sampling is None:
        stderr.print(f"{config_file}: model '{config.name}' is not a video LLM", markup=False)
        raise typer.Exit(1)
    clip = read_visual(video, num_frames=sampling.num_frames, fps=sampling.fps, max_frames=sampling.max_frames)
    model = models.build(config)
    processor = model.processor
    rule = f"num_frames={sampling.num_frames}" if sampling.num_frames else f"fps={sampling.fps}"
    stdout.print(
        f"video: {clip.source}  {clip.fps:.2f} fps, {clip.duration:.2f} s, {clip.total_frames} frames, "
        f"{clip.frames.shape[2]}x{clip.frames.shape[1]}",
        markup=False,
    )
    frames = Table(title=f"{clip.num_frames} frames sampled ({rule})", title_justify="left")
    frames.add_column("#", justify="right")
    frames.add_column("frame index", justify="right")
    frames.add_column("time (s)", justify="right")
    frames.add_column("note")
    repeated = set(clip.repeated)
    for number, (index, stamp) in enumerate(zip(clip.indices, clip.timestamps, strict=True)):
        frames.add_row(
            str(number), str(index), f"{stamp:.3f}", "repeats the frame before" if number in repeated else ""
        )
    stdout.print(frames)
    if repeated:
        stderr.print(
            f"warning: {len(repeated)} of {clip.num_frames} sampled frames repeat the one before: the video has "
            f"fewer frames ({clip.total_frames}) than asked for",
            markup=False,
        )
    shapes = Table(title=f"model: {config_file} ({config.name})", title_justify="left")
    shapes.add_column("stage")
    shapes.add_column("shape")
    for stage, shape in model.trace(processor.pixels(clip)):
        shapes.add_row(escape(stage), str(list(shape)))
    stdout.print(shapes)
    stdout.print(_token_table(model, clip.num_frames))
    example = processor.encode([("user", question)], clip, for_generation=True)
    visual = model.num_visual_tokens(clip.num_frames)
    unpooled = clip.num_frames * model.frame_tokens
    stdout.print(
        f"tokens into the LLM: {visual} visual + {len(example.input_ids) - visual} text = {len(example.input_ids)} "
        f"(all frame tokens would be {clip.num_frames} x {model.frame_tokens} = {unpooled} visual)",
        markup=False,
    )


def _model_config(source: str) -> Any:
    """A video LLM's config from a run file, a model file, a saved model folder or `plugin:name`."""
    from omnimm.config import load_config
    from omnimm.run import RunConfig

    folder = Path(source)
    if folder.is_dir():
        from omnimm.videollm.model import saved_config

        return saved_config(_model_folder(folder))
    config = load_config(source)
    if isinstance(config, RunConfig):
        return config.model
    return config


def _model_folder(source: Path) -> Path:
    """A saved model folder from the folder itself, or from a run file (its last stage's `final`)."""
    from omnimm.config import load_config
    from omnimm.errors import ConfigError, ConfigIssue
    from omnimm.run import RunConfig
    from omnimm.videollm.model import restore_interrupted_save

    restored = restore_interrupted_save(source)  # a save killed between its renames: its complete copy
    if restored is not None:
        return restored
    if source.is_dir():
        if (source / "config.json").is_file():
            return source
        for stage in source.iterdir():
            if stage.is_dir():
                restore_interrupted_save(stage / "final")
        finals = sorted(source.glob("*/final/config.json"), key=lambda p: p.stat().st_mtime)
        if finals:
            return finals[-1].parent
        raise FileNotFoundError(
            f"{source} is neither a saved model (no config.json) nor a run folder with a final model"
        )
    run = load_config(source, into=RunConfig)
    if run.train is None:
        raise ConfigError(
            [ConfigIssue("train", "a run file without `train:` has no trained model")], source=str(source)
        )
    folder = Path(run.train.output_dir) / run.train.stages[-1].name / "final"
    folder = restore_interrupted_save(folder) or folder
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{source}: the run has no trained model yet ({folder} is missing; omnimm train {source})"
        )
    return folder


def _load_model(source: Path) -> Any:
    from omnimm.videollm.model import VideoLLM

    return VideoLLM.from_pretrained(_model_folder(source))


# -- using a trained model ---------------------------------------------------------------------------------------


@app.command("ask")
def ask_command(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="A saved model folder, or a run file.")],
    video: Annotated[Path, typer.Argument(help="A video or image file.")],
    question: Annotated[str | None, typer.Argument(help="The question (omit it with --chat).")] = None,
    chat: Annotated[
        bool, typer.Option("--chat", help="A conversation in the terminal: empty line or Ctrl-D ends.")
    ] = False,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest reply, in tokens.")] = 128,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 answers greedily; above 0 samples.")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling.")] = None,
) -> None:
    """Ask a trained video LLM about a video; the reply streams as it is generated."""
    import torch

    from omnimm.video import check_media_file
    from omnimm.videollm.stream import ReplyStreamer

    if question is None and not chat:
        stderr.print("error: give a QUESTION, or --chat for a conversation", markup=False)
        raise typer.Exit(2)
    check_media_file(video)  # before the model loads: a mistyped path fails in a moment
    model = _load_model(model_path).eval()
    clip = model.processor.read(video)
    if clip.repeated:
        stderr.print(
            f"warning: {len(clip.repeated)} of {clip.num_frames} sampled frames repeat the one before: {video} has "
            f"fewer frames ({clip.total_frames}) than the model samples",
            markup=False,
        )
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    if temperature > 0:
        options.update(do_sample=True, temperature=temperature)
        if seed is not None:
            torch.manual_seed(seed)
    turns: list[tuple[str, str]] = []
    while True:
        if question is None:
            try:
                question = input("you: ").strip()
            except EOFError:
                question = ""
            if not question:
                return
            sys.stdout.write("model: ")
        turns.append(("user", question))
        streamer = ReplyStreamer(model, sys.stdout)
        reply = model.answer(clip, turns, streamer=streamer, **options)
        streamer.finish(reply)
        turns.append(("assistant", reply))
        if not chat:
            return
        question = None


@app.command("eval")
def eval_command(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="A saved model folder, or a run file.")],
    data: Annotated[
        str,
        typer.Option(
            "--data",
            "-d",
            help="A dataset config file ({name: ..., options}), plugin:name, or a conversations "
            "JSON/JSONL file whose last assistant turn is the reference.",
        ),
    ],
    evaluator: Annotated[
        list[str], typer.Option("--evaluator", "-e", help="An evaluator name or config file; repeat for several.")
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Folder for predictions.jsonl and metrics.json.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N items.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    device: Annotated[
        str,
        typer.Option(help="auto (a GPU when there is one: cuda:LOCAL_RANK under torchrun), cpu, cuda or cuda:N."),
    ] = "auto",
) -> None:
    """Answer every item of a dataset with a trained model, score the replies, write predictions and metrics.

    Under `torchrun --nproc_per_node N -m omnimm eval ...` the N processes share the batches; the first one
    writes the files and prints the table, identical to a single process's."""
    from omnimm.registry import datasets
    from omnimm.videollm.evaluate import METRICS_FILE, PREDICTIONS_FILE, distributed, evaluate

    folder = _model_folder(model_path)
    scorers = {_evaluator_label(spec): _evaluator(spec) for spec in evaluator}
    target = _eval_device(device)
    data_config = _dataset_config(data)  # a bad data file is reported before the model loads
    with distributed() as (rank, _):
        model = _load_model(folder).to(target)
        dataset = datasets.build(data_config, processor=model.processor)
        out = output or folder / "eval"
        result = evaluate(
            model,
            dataset,
            scorers,
            output=out,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            limit=limit,
            progress=progress,
        )
    if rank != 0:  # the first process speaks for all
        return
    for name, metrics in result.metrics.items():
        if not name.startswith("_"):
            stdout.print(_metrics_table(name, metrics))
    skipped = f", {len(result.skipped)} skipped" if result.skipped else ""
    stdout.print(
        f"{len(result.predictions)} answers{skipped}: {out / PREDICTIONS_FILE}, {out / METRICS_FILE}", markup=False
    )


def _eval_device(device: str) -> Any:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":  # one GPU per process under torchrun
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % max(torch.cuda.device_count(), 1)}"
    try:
        return torch.device(device)
    except RuntimeError:
        stderr.print(f"error: --device: '{device}' is not a device (auto, cpu, cuda or cuda:N)", markup=False)
        raise typer.Exit(2) from None


def _evaluator_label(spec: str) -> str:
    return Path(spec).stem if spec.endswith((".yaml", ".yml", ".json")) else spec


def _evaluator(spec: str) -> Any:
    from omnimm.config import load_config
    from omnimm.registry import evaluators

    config = load_config(spec, into="evaluators") if spec.endswith((".yaml", ".yml", ".json")) else spec
    name = config if isinstance(config, str) else config.name
    if not getattr(evaluators.get(name), "scores_answers", False):
        answering = [n for n in evaluators.names() if _scores_answers(evaluators, n)]
        raise ValueError(
            f"evaluator '{name}' does not score a model's answers; the ones that do: {', '.join(answering)}"
        )
    return evaluators.build(config)


def _scores_answers(registry: Any, name: str) -> bool:
    try:
        return bool(getattr(registry.get(name), "scores_answers", False))
    except ImportError:  # its plugin's dependencies are missing: not one to suggest
        return False


def _dataset_config(data: str) -> Any:
    from omnimm.config import load_config, read_config_file

    path = Path(data)
    if path.suffix.lower() == ".jsonl":
        return {"name": "omnimm/conversations", "path": str(path)}
    if path.suffix.lower() == ".json" and path.is_file():
        parsed, _ = read_config_file(path)
        if isinstance(parsed, list):
            return {"name": "omnimm/conversations", "path": str(path)}
        if isinstance(parsed, dict) and "name" not in parsed:
            raise ValueError(
                f"{path}: --data takes a dataset config (a mapping with 'name') or a conversations file (a JSON "
                f"list, or JSON Lines); this is a mapping without 'name'"
            )
    return load_config(data, into="datasets")


def _metrics_table(name: str, metrics: Any) -> Any:
    table = Table(title=name, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in _flatten(metrics):
        table.add_row(escape(key), f"{value:.4g}" if isinstance(value, float) else escape(str(value)))
    return table


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        rows = []
        for key, item in value.items():
            rows += _flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(value, list) and len(value) > 8:
        return [(prefix, f"[{len(value)} values]")]
    return [(prefix, value)]


# -- serving -----------------------------------------------------------------------------------------------------


@app.command("serve")
def serve_command(
    model_path: Annotated[
        Path | None, typer.Argument(metavar="MODEL", help="A saved model folder or a run file (not with --character).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind; other than loopback only with --api-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one; the address is printed).")] = 8000,
    api_key: Annotated[
        str | None, typer.Option(help="Require `Authorization: Bearer KEY` on the API.", envvar="OMNIMM_SERVE_API_KEY")
    ] = None,
    allow_files: Annotated[
        Path | None, typer.Option(help="A folder whose files requests may name by path (nothing else is readable).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="The model name clients ask for (default: the folder's).")] = None,
    character: Annotated[
        Path | None, typer.Option(help="Serve a character folder answering in role (a plugin's mode), with --llm.")
    ] = None,
    llm: Annotated[Path | None, typer.Option(help="The LLM config file a --character answers with.")] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Most requests answered by one generate call.")] = 8,
    batch_wait_ms: Annotated[float, typer.Option(min=0, help="How long a batch waits for more requests.")] = 10.0,
    max_queue: Annotated[int, typer.Option(min=1, help="Requests waiting beyond this are answered 503.")] = 64,
    max_body_mb: Annotated[float, typer.Option(min=0.001, help="Larger request bodies are answered 413.")] = 32.0,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds a request may wait and generate in all.")] = 120.0,
    max_tokens: Annotated[int, typer.Option(min=1, help="Reply length when a request does not say.")] = 128,
) -> None:
    """Serve a trained model over an OpenAI-compatible API (`/v1/chat/completions`), with a web page at `/`."""
    from omnimm.serve.app import ServeSettings, binding_problem, serve

    settings = ServeSettings(
        host=host,
        port=port,
        api_key=api_key,
        allow_files=allow_files,
        max_batch=max_batch,
        batch_wait_ms=batch_wait_ms,
        max_queue=max_queue,
        max_body_mb=max_body_mb,
        timeout_s=timeout,
        default_max_tokens=max_tokens,
    )
    problem = binding_problem(settings)
    if problem is not None:
        stderr.print(f"error: {problem}", markup=False)
        raise typer.Exit(2)
    if allow_files is not None and not allow_files.is_dir():
        raise FileNotFoundError(f"--allow-files {allow_files}: not a folder")
    if (character is None) == (model_path is None):
        stderr.print("error: give a MODEL folder, or --character DIR (not both)", markup=False)
        raise typer.Exit(2)
    if character is not None:
        backend = _serve_mode("character", character, {"llm": llm, "name": name})
    else:
        from omnimm.serve.backends import VideoLLMBackend

        assert model_path is not None
        folder = _model_folder(model_path)
        backend = VideoLLMBackend(_load_model(folder), name or _served_name(model_path, folder), max_batch=max_batch)
    serve(backend, settings, announce=lambda text: print(text, flush=True))


def _served_name(source: Path, folder: Path) -> str:
    """A saved folder's own name; a run's `final` folder is named after its run."""
    if folder.name == "final" and folder.parent.parent.name:
        return folder.parent.parent.name
    return folder.name if source.is_dir() else source.stem


def _serve_mode(mode: str, target: Path, options: dict[str, Any]) -> Any:
    """The backend a plugin provides for `mode` (through the `omnimm_serve_modes` hook)."""
    import importlib

    from omnimm.plugins import get_plugin_manager

    modes: dict[str, str] = {}
    for plugin, error in get_plugin_manager().call_each("omnimm_serve_modes", modes=modes).items():
        stderr.print(f"warning: plugin '{plugin}' could not add its serving modes: {error}", markup=False)
    if mode not in modes:
        raise LookupError(f"no installed plugin provides the '{mode}' serving mode (`omnimm plugins` lists them)")
    module, _, function = modes[mode].partition(":")
    return getattr(importlib.import_module(module), function)(target, options)


# -- entry point -------------------------------------------------------------------------------------------------

_plugin_commands_added = False


def get_app() -> typer.Typer:
    """The root app with every plugin's sub-commands added (once)."""
    global _plugin_commands_added
    if not _plugin_commands_added:
        from omnimm.plugins import get_plugin_manager

        _plugin_commands_added = True
        for plugin, error in get_plugin_manager().call_each("omnimm_cli", app=app).items():
            stderr.print(f"warning: plugin '{plugin}' could not add its commands: {error}", markup=False)
    return app


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, LookupError, ImportError, RuntimeError)
"""What bad input raises (omnimm's own errors subclass these; pydantic's ValidationError and UnicodeDecodeError
are ValueErrors, transformers' loading errors OSErrors or ValueErrors): one line, no traceback."""


def main(argv: list[str] | None = None) -> None:
    """Run the CLI. Errors from bad input print as one clear line (set OMNIMM_DEBUG=1 for the traceback)."""
    from omnimm.errors import ConfigError, OmnimmError

    try:
        command = typer.main.get_command(get_app())  # loads the plugins: Ctrl-C there is an interrupt too
        command.main(args=argv, prog_name="omnimm", standalone_mode=True)
    except KeyboardInterrupt:
        stderr.print("interrupted", markup=False)
        sys.exit(130)
    except EXPECTED_ERRORS as error:
        if os.environ.get("OMNIMM_DEBUG"):
            raise
        if isinstance(error, ConfigError):  # several issues, one per line, each naming file, line and field
            stderr.print(f"error: {error}", markup=False)
        elif isinstance(error, OmnimmError):
            stderr.print(f"error: {_one_line(error)}", markup=False)
        else:
            stderr.print(f"error: {type(error).__name__}: {_one_line(error)}", markup=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
