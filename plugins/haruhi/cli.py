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


def _index(character: Any, encoder: Path | None, kind: str) -> None:
    store = character.index(_encoder(encoder), _store_config(kind), progress=True)
    _console().print(f"{character.folder}: {len(store)} memories indexed ({kind}, dim {store.dim})", markup=False)


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
    from omnimm_plugins.haruhi.character import character_from_script

    prompt = system_prompt.read_text(encoding="utf-8").strip() if system_prompt else None
    built = character_from_script(script, character, window=window, system_prompt=prompt, language=language)
    built.save(out)
    _console().print(f"{out}: {character} with {len(built.chunks)} scenes", markup=False)
    _index(built, encoder, index)


@haruhi_app.command("import-jsonl")
def import_jsonl(
    jsonl: Annotated[Path, typer.Argument(help="A character in ChatHaruhi's JSONL format.")],
    out: Annotated[Path, typer.Option(help="The character folder to write.")],
    name: Annotated[str | None, typer.Option(help="The character's name (default: from the file).")] = None,
    encoder: EncoderOption = None,
    index: IndexOption = "flat",
) -> None:
    """Import a ChatHaruhi JSONL character; chunks are re-embedded with omnimm's encoder (cached)."""
    from omnimm_plugins.haruhi.character import Character

    built, vectors = Character.from_chatharuhi(jsonl, name=name)
    built.save(out)
    _console().print(
        f"{out}: {built.name} with {len(built.chunks)} chunks (the file's {vectors.shape[1]}-d embeddings "
        f"'{built.info['embedding_key']}' are not reused: queries need the same encoder)",
        markup=False,
    )
    _index(built, encoder, index)


@haruhi_app.command("export-jsonl")
def export_jsonl(
    character: Annotated[Path, typer.Argument(help="A character folder with an index.")],
    out: Annotated[Path, typer.Argument(help="The JSONL file to write.")],
    embedding_key: Annotated[str, typer.Option(help="The embedding field name in the rows.")] = "omnimm",
) -> None:
    """Write a character in ChatHaruhi's JSONL format, with the embeddings of its index."""
    import numpy as np

    from omnimm_plugins.haruhi.character import Character
    from omnimm_plugins.haruhi.embeddings import EmbeddingCache, content_key

    loaded = Character.load(character)
    store = loaded.open_store()
    cache = EmbeddingCache.for_model(character / "cache", store.model)
    vectors = cache.lookup([content_key(c.text) for c in loaded.chunks])
    if any(v is None for v in vectors):
        raise typer.BadParameter(f"{character}: some chunks have no cached embedding; run `omnimm haruhi index` first")
    loaded.export_chatharuhi(out, np.stack(vectors), embedding_key=embedding_key, model=store.model)
    _console().print(f"{out}: {len(loaded.chunks)} chunks", markup=False)


@haruhi_app.command("index")
def index_command(
    character: Annotated[Path, typer.Argument(help="A character folder.")],
    encoder: EncoderOption = None,
    index: IndexOption = "flat",
) -> None:
    """(Re)build a character's index; unchanged chunks reuse their cached embeddings."""
    from omnimm_plugins.haruhi.character import Character

    _index(Character.load(character), encoder, index)


@haruhi_app.command("search")
def search_command(
    character: Annotated[Path, typer.Argument(help="A character folder with an index.")],
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", help="How many memories.")] = 5,
) -> None:
    """The memories closest to a query, with their scores."""
    from omnimm_plugins.haruhi.session import RolePlaySession

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

    A turn the backend fails is reported in one line and left out of the history; the chat goes on, and the exit
    status is 1 when any turn failed. A resumed session file never chooses the backend: give your own.
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
    chat = RolePlaySession.from_config(values)
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
        return {"name": "openai/chat", "base_url": endpoint, "model": model}
    if smollm2:
        from omnimm.llm.packaged import smollm2_config

        return smollm2_config()
    return None


def _repl(chat: Any, *, show_prompt: bool, session: Path | None) -> int:
    """Answer stdin line by line; returns how many turns the backend failed."""
    console = _console()
    name = chat.character.name
    failed = 0
    if chat.llm is None:
        console.print(f"{name}: no LLM configured; showing retrieval and the composed prompt only.", markup=False)
    for line in sys.stdin:
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
