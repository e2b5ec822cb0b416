"""`omnimm haruhi ...` (build, index, search, chat with characters) and `omnimm demo haruhi`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

haruhi_app = typer.Typer(
    help="Role-play with characters revived from their original lines (ChatHaruhi-style retrieval).",
    no_args_is_help=True,
)

EncoderOption = Annotated[
    Path | None, typer.Option("--encoder", help="An encoder config file (YAML/JSON); default: all-MiniLM-L6-v2.")
]
IndexOption = Annotated[str, typer.Option("--index", help="Index kind: flat (exact), ivf or hnsw (approximate).")]
WindowOption = Annotated[
    int | None,
    typer.Option("--window-tokens", help="Tokens per embedded window of a scene (default: all the encoder reads)."),
]
StrideOption = Annotated[int | None, typer.Option("--stride-tokens", help="Tokens between window starts.")]
TruncateOption = Annotated[
    bool, typer.Option("--truncate", help="Embed each scene once, cut to the encoder's max_length (the default).")
]


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _encoder(path: Path | None) -> Any:
    if path is None:
        return None
    from omnimm.config import load_config

    return load_config(path, "encoders")


def _store_config(kind: str) -> Any:
    from omnimm_plugins.haruhi.configs import MemoryStoreConfig

    return MemoryStoreConfig.model_validate({"index": kind})


def _index(character: Any, encoder: Path | None, kind: str, *, windows: Any = "default", built: Any = None) -> None:
    from omnimm_plugins.haruhi.character import DEFAULT_WINDOWS

    chosen = DEFAULT_WINDOWS if windows == "default" else windows
    store = character.index(_encoder(encoder), _store_config(kind), windows=chosen, progress=True, built_encoder=built)
    scenes = store.scenes
    cut = "; each cut to the encoder's max_length"
    if scenes:
        cut = f"; {len(store.windows)} windows of {scenes['window']} {scenes['unit']}, stride {scenes['stride']}"
    _console().print(f"{character.folder}: {len(store)} memories indexed ({kind}, dim {store.dim}){cut}", markup=False)


def _windows(window: int | None, stride: int | None, truncate: bool) -> Any:
    """The --window-tokens / --stride-tokens / --truncate choice (an error line and exit 2 when they clash)."""
    from omnimm_plugins.haruhi.character import DEFAULT_WINDOWS
    from omnimm_plugins.haruhi.embeddings import SceneWindows

    if truncate:
        if window is not None or stride is not None:
            _usage_error("--truncate embeds each scene once: drop --window-tokens / --stride-tokens")
        return None
    if window is None and stride is None:
        return DEFAULT_WINDOWS
    try:
        return SceneWindows(window, stride)
    except ValueError as error:
        _usage_error(str(error))


def _usage_error(message: str) -> None:
    _console(stderr=True).print(f"error: {message}", markup=False)
    raise typer.Exit(2)


@haruhi_app.command("import-script")
def import_script(
    script: Annotated[Path, typer.Argument(help="A script of 'SPEAKER:' turns separated by blank lines.")],
    character: Annotated[str, typer.Argument(help="The speaker to revive, e.g. ROMEO.")],
    out: Annotated[Path, typer.Option(help="The character folder to write.")],
    window: Annotated[int, typer.Option(help="Turns per scene.")] = 6,
    system_prompt: Annotated[Path | None, typer.Option(help="A text file with the system prompt.")] = None,
    language: Annotated[str, typer.Option(help="en or zh (prompt template).")] = "en",
    encoder: EncoderOption = None,
    index: IndexOption = "flat",
) -> None:
    """Build a character package from a play script: scenes are windows of turns where the character speaks."""
    from omnimm.files import read_utf8
    from omnimm_plugins.haruhi.character import character_from_script
    from omnimm_plugins.haruhi.prompt import TEMPLATES

    if language not in TEMPLATES:
        raise ValueError(f"--language: expected one of {', '.join(TEMPLATES)}, got {language!r}")
    prompt = read_utf8(system_prompt).strip() if system_prompt else None
    if system_prompt is not None and not prompt:
        raise ValueError(f"{system_prompt}: the system prompt file is empty")
    built = character_from_script(script, character, window=window, system_prompt=prompt, language=language)
    built.save(out)
    _console().print(f"{out}: {character} with {len(built.chunks)} scenes", markup=False)
    _index(built, encoder, index)


@haruhi_app.command("import-jsonl")
def import_jsonl(
    jsonl: Annotated[Path, typer.Argument(help="A character in ChatHaruhi's JSONL format.")],
    out: Annotated[Path, typer.Option(help="The character folder to write.")],
    name: Annotated[str | None, typer.Option(help="The character's name (default: from the file).")] = None,
    embedding_key: Annotated[
        str | None,
        typer.Option(help="The embedding column to read when the file has several (default: the encoder's size)."),
    ] = None,
    encoder: EncoderOption = None,
    index: IndexOption = "flat",
    window_tokens: WindowOption = None,
    stride_tokens: StrideOption = None,
    truncate: TruncateOption = False,
) -> None:
    """Import a ChatHaruhi JSONL character; chunks are re-embedded with omnimm's encoder (cached)."""
    from omnimm_plugins.haruhi.character import Character
    from omnimm_plugins.haruhi.embeddings import build_encoder, encoder_config

    windows = _windows(window_tokens, stride_tokens, truncate)
    built, vectors = Character.from_chatharuhi(jsonl, name=name, embedding_key=embedding_key)  # checks the file
    module = build_encoder(encoder_config(_encoder(encoder)))
    if "ignored_embedding_keys" in built.info and embedding_key is None:  # several columns: the encoder's size
        dim = getattr(module, "out_dim", None)
        built, vectors = Character.from_chatharuhi(jsonl, name=name, prefer_dim=dim)
    built.save(out)
    ignored = built.info.get("ignored_embedding_keys")
    _console().print(
        f"{out}: {built.name} with {len(built.chunks)} chunks (read the {vectors.shape[1]}-d embedding column "
        f"'{built.info['embedding_key']}'" + (f", ignored {', '.join(ignored)}" if ignored else "") + "; not reused: "
        "queries need the same encoder)",
        markup=False,
    )
    _index(built, encoder, index, windows=windows, built=module)


@haruhi_app.command("export-jsonl")
def export_jsonl(
    character: Annotated[Path, typer.Argument(help="A character folder with an index.")],
    out: Annotated[Path, typer.Argument(help="The JSONL file to write.")],
    embedding_key: Annotated[str, typer.Option(help="The embedding field name in the rows.")] = "omnimm",
) -> None:
    """Write a character in ChatHaruhi's JSONL format, with the embeddings of its index."""
    import numpy as np

    from omnimm.errors import StoreError
    from omnimm_plugins.haruhi.character import Character
    from omnimm_plugins.haruhi.embeddings import EmbeddingCache

    loaded = Character.load(character)
    store = loaded.open_store()
    cache = EmbeddingCache.for_model(character / "cache", store.model)
    vectors = store.scene_vectors(loaded.chunks, cache)  # one per chunk: the mean of its windows', unit length
    missing = sum(v is None for v in vectors)
    if missing:
        raise StoreError(
            f"{character}: {missing} of {len(vectors)} chunks have no cached embedding; run `omnimm haruhi index`"
        )
    loaded.export_chatharuhi(out, np.stack(vectors), embedding_key=embedding_key, model=store.model)
    windowed = f" (each the mean of its {store.scenes['window']}-token windows)" if store.scenes else ""
    _console().print(f"{out}: {len(loaded.chunks)} chunks{windowed}", markup=False)


@haruhi_app.command("index")
def index_command(
    character: Annotated[Path, typer.Argument(help="A character folder.")],
    encoder: EncoderOption = None,
    index: IndexOption = "flat",
    window_tokens: WindowOption = None,
    stride_tokens: StrideOption = None,
    truncate: TruncateOption = False,
) -> None:
    """(Re)build a character's index; unchanged chunks reuse their cached embeddings.

    Each scene is embedded once with all the encoder's positions (512 tokens for the default MiniLM); with
    --window-tokens / --stride-tokens it is cut into overlapping windows and ranks by its best window."""
    from omnimm_plugins.haruhi.character import Character

    windows = _windows(window_tokens, stride_tokens, truncate)
    _index(Character.load(character), encoder, index, windows=windows)


@haruhi_app.command("search")
def search_command(
    character: Annotated[Path, typer.Argument(help="A character folder with an index.")],
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", help="How many memories (>= 1).")] = 5,
) -> None:
    """The memories closest to a query, with their scores."""
    from omnimm_plugins.haruhi.session import RolePlaySession

    if k < 1:
        _usage_error(f"-k must be >= 1, got {k}")
    session = RolePlaySession.from_config({"character": str(character)})
    console = _console()
    for hit in session.retrieve(query, k):
        console.print(f"#{hit.rank + 1}  {hit.score:.3f}  {_first_line(hit.text)}", markup=False)


@haruhi_app.command("chat")
def chat_command(
    character: Annotated[
        Path | None, typer.Argument(help="A character folder (or set `character` in --config).")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="A session config (YAML/JSON): encoder, llm, prompt, ...")] = None,
    llm: Annotated[Path | None, typer.Option(help="An LLM config file (hf/causal-lm, openai/chat, ...).")] = None,
    endpoint: Annotated[
        str | None, typer.Option(help="An OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1.")
    ] = None,
    model: Annotated[str, typer.Option(help="The model name for --endpoint.")] = "default",
    smollm2: Annotated[bool, typer.Option(help="Answer with the packaged SmolLM2-135M-Instruct.")] = False,
    no_llm: Annotated[bool, typer.Option("--no-llm", help="Retrieve and compose only; print the prompt.")] = False,
    show_prompt: Annotated[bool, typer.Option(help="Print what goes to the LLM before each answer.")] = False,
    session: Annotated[
        Path | None, typer.Option(help="A session file: resumed when it exists, saved after every turn.")
    ] = None,
    role: Annotated[str | None, typer.Option(help="The name you speak as (e.g. JULIET).")] = None,
) -> None:
    """Chat with a character. One line per turn; /reset clears the history, /exit (or end of input) quits.

    A turn the backend fails (or a line that is not UTF-8) is reported in one line and left out of the history; the
    chat goes on, and the exit status is 1 when any turn failed. A resumed session file never chooses the backend:
    give your own.
    """
    from omnimm_plugins.haruhi.session import RolePlaySession, read_session, saved_history

    saved = read_session(session) if session is not None and session.exists() else None
    values = _session_values(character, config, saved)
    llm_config = _llm_choice(llm, endpoint, model, smollm2, no_llm)
    if llm_config is not None:
        values["llm"] = llm_config
    elif no_llm:
        values["llm"] = None
    if role is not None:
        values["user_role"] = role
    if saved is not None and values.get("llm") is None and not no_llm:
        _note_unused_backend(session, saved)
    chat = RolePlaySession.from_config(_checked_session_config(values, config))
    if saved is not None:
        chat.history = saved_history(saved)
    failed = _repl(chat, show_prompt=show_prompt or chat.llm is None, session=session)
    if failed:
        raise typer.Exit(1)


def _session_values(character: Path | None, config: Path | None, saved: dict[str, Any] | None) -> dict[str, Any]:
    """The session options: a saved session's (without its backend), else --config's; `llm` only from --config."""
    from omnimm.config import read_config_file
    from omnimm_plugins.haruhi.session import without_backend

    own: dict[str, Any] = {}
    if config is not None:
        data, _ = read_config_file(config)
        if not isinstance(data, dict):
            raise typer.BadParameter(f"{config}: expected a mapping of session options")
        own = dict(data)
    values = without_backend(saved["config"]) if saved is not None else dict(own)
    if "llm" in own:
        values["llm"] = own["llm"]
    if character is not None:
        values["character"] = str(character)
    if "character" not in values:
        raise typer.BadParameter("give a CHARACTER folder (or `character:` in --config)")
    return values


def _checked_session_config(values: dict[str, Any], config: Path | None) -> Any:
    """The validated session options (`ConfigError` naming each field), before any model is loaded."""
    from omnimm.configbase import validate_as
    from omnimm_plugins.haruhi.configs import SessionConfig

    return validate_as(SessionConfig, values, source=str(config) if config is not None else None)


def _note_unused_backend(session: Path | None, saved: dict[str, Any]) -> None:
    from omnimm_plugins.haruhi.session import unused_backend_note

    if saved["config"].get("llm"):
        _console(stderr=True).print(f"note: {session}: {unused_backend_note(saved['config']['llm'])}", markup=False)


def _llm_choice(llm: Path | None, endpoint: str | None, model: str, smollm2: bool, no_llm: bool) -> Any:
    chosen = [flag for flag, on in (("--llm", llm), ("--endpoint", endpoint), ("--smollm2", smollm2)) if on]
    if len(chosen) > 1 or (chosen and no_llm):
        raise typer.BadParameter(f"choose one of {', '.join([*chosen, '--no-llm'] if no_llm else chosen)}")
    if llm is not None:
        from omnimm.config import read_config_file

        return read_config_file(llm)[0]
    if endpoint is not None:
        return _endpoint_config(endpoint, model)
    if smollm2:
        from omnimm.llm.packaged import smollm2_config

        return smollm2_config()
    return None


def _endpoint_config(endpoint: str, model: str) -> dict[str, Any]:
    """`openai/chat` for --endpoint, refused now (not at the first turn) when the URL cannot be used."""
    from omnimm.errors import ConfigError
    from omnimm.registry import llms

    config = {"name": "openai/chat", "base_url": endpoint, "model": model}
    try:
        llms.validate(config)
    except ConfigError as error:
        problems = "; ".join(issue.message for issue in error.issues)
        raise ValueError(f"--endpoint: {problems}") from None
    return config


def _input_lines() -> Any:
    """(line number, text or None) for each line of stdin; None where the line is not UTF-8 (reported by the REPL)."""
    for number, raw in enumerate(sys.stdin.buffer, 1):
        try:
            yield number, raw.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as error:
            _console(stderr=True).print(
                f"error: stdin line {number}: not UTF-8 text (byte 0x{raw[error.start]:02x} at column "
                f"{error.start + 1}); turn skipped",
                markup=False,
            )
            yield number, None


def _repl(chat: Any, *, show_prompt: bool, session: Path | None) -> int:
    """Answer stdin line by line; returns how many turns failed (the backend, or a line that is not UTF-8)."""
    console = _console()
    name = chat.character.name
    failed = 0
    if chat.llm is None:
        console.print(f"{name}: no LLM configured; showing retrieval and the composed prompt only.", markup=False)
    for _, line in _input_lines():
        if line is None:
            failed += 1
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            chat.reset()
            console.print("(history cleared)", markup=False)
            continue
        if chat.llm is None:
            prompt, hits = chat.prepare(text)
            _print_prompt(console, prompt, hits)
            continue
        if show_prompt:
            prompt, hits = chat.prepare(text)
            _print_prompt(console, prompt, hits)
        failed += not _answer(console, chat, text)
        if session is not None:
            chat.save(session)  # atomic; a failed turn leaves the history as it was
    return failed


def _answer(console: Any, chat: Any, text: str) -> bool:
    """One turn; a backend failure is one line on stderr (not in the history), and the chat goes on."""
    from omnimm.errors import BackendError

    try:
        reply = chat.ask(text)
    except BackendError as error:
        reason = " ".join(str(error).split())
        _console(stderr=True).print(f"error: {reason} (turn not answered; send it again or go on)", markup=False)
        return False
    console.print(f"{chat.character.name}: {reply.text}", markup=False)
    return True


def _print_prompt(console: Any, prompt: Any, hits: list[Any]) -> None:
    tokens = ", ".join(f"{part} {count}" for part, count in prompt.tokens.items())
    packed = set(prompt.scenes)
    console.print(f"--- retrieved ({len(hits)}; packed {len(packed)}, tokens: {tokens})", markup=False)
    for hit in hits:
        mark = "+" if hit.rank in packed else "-"
        console.print(f" {mark} #{hit.rank + 1} {hit.score:.3f} {_first_line(hit.text)}", markup=False)
    console.print(f"--- prompt (history: {prompt.history_kept} exchanges)", markup=False)
    console.print(prompt.render(), markup=False)
    console.print("---", markup=False)


def _first_line(text: str, width: int = 90) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def demo_haruhi(
    workdir: Annotated[
        Path | None, typer.Option(help="Where the character is built (default: ~/.cache/omnimm/haruhi-demo).")
    ] = None,
    no_llm: Annotated[bool, typer.Option("--no-llm", help="Show retrieval and the composed prompts only.")] = False,
) -> None:
    """ROMEO from Romeo and Juliet: build, index, retrieve, compose, and answer with SmolLM2-135M-Instruct."""
    from omnimm_plugins.haruhi.demo import run_demo

    console = _console()
    run_demo(workdir, llm=not no_llm, log=lambda text: console.print(text, markup=False))
