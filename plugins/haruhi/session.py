"""Role-play sessions: retrieve scenes for each user turn, compose the prompt, ask the LLM, keep the history.

```python
session = RolePlaySession.from_config({"character": "ROMEO", "llm": {"name": "openai/chat", ...}})
reply = session.ask("Where is Juliet?")
print(reply.text, reply.prompt.render())
session.save("romeo-session.json")            # JSON; resume with RolePlaySession.resume(..., llm_config=...)
```

The session speaks the character's language (`language` in its package, zh for most ChatHaruhi imports) unless
`prompt.language` is set. Replies are cleaned (`prompt.clean_reply`) before they enter the history: the model's
continuation of the dialogue (the user's next line, another speaker's) is cut off, and so is an echoed `NAME:`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnimm.config import ComponentConfig
from omnimm.configbase import issues_from_validation_error
from omnimm.files import atomic_write_text, read_utf8
from omnimm_plugins.haruhi.character import Character
from omnimm_plugins.haruhi.configs import SessionConfig
from omnimm_plugins.haruhi.prompt import (
    TEMPLATES,
    ComposedPrompt,
    Exchange,
    clean_reply,
    compose,
    estimate_tokens,
    format_query,
    known_speakers,
)

SESSION_FORMAT = "omnimm-haruhi-session/1"

log = logging.getLogger(__name__)


@dataclass
class Reply:
    text: str
    """The character's words, as they enter the history (see `prompt.clean_reply`)."""
    prompt: ComposedPrompt
    hits: list[Any]
    """The retrieved memories (rank order), packed or not."""
    raw: str = ""
    """What the backend answered, before cleaning."""


class RolePlaySession:
    """A character, its memory store, an encoder for queries, and (optionally) an LLM backend."""

    def __init__(
        self,
        config: SessionConfig,
        *,
        llm: Any = None,
        encoder: Any = None,
        count_tokens: Callable[[str], int] | None = None,
    ) -> None:
        from omnimm_plugins.haruhi.embeddings import build_encoder, describe_model, encoder_config

        self.config = config
        self.character = Character.load(config.character)
        self.store = self.character.open_store()
        encoder_cfg = config.encoder or self._indexed_encoder()
        self.store_model = describe_model(encoder_config(encoder_cfg))
        if self.store.model != self.store_model:
            from omnimm.errors import StoreError

            raise StoreError(
                f"{self.character.folder}: indexed with {self.store.model!r} but the session's encoder is "
                f"{self.store_model!r}; re-index with `omnimm haruhi index`"
            )
        self.encoder = encoder if encoder is not None else build_encoder(encoder_config(encoder_cfg))
        self.llm = llm if llm is not None else _build_llm(config.llm)
        if count_tokens is not None:
            self.count_tokens = count_tokens
        elif self.llm is not None:
            self.count_tokens = self.llm.count_tokens
        else:
            self.count_tokens = estimate_tokens
        self.language = session_language(config, self.character)
        self.speakers = known_speakers(c.text for c in self.character.chunks)
        """Names that open dialogue lines in the character's scenes: a reply is cut where one of them speaks."""
        self.history: list[Exchange] = []

    @classmethod
    def from_config(cls, config: SessionConfig | Mapping[str, Any], **parts: Any) -> RolePlaySession:
        """Validate `config` (`ConfigError` naming each field at fault) and build the session."""
        from omnimm.configbase import validate_as

        return cls(config if isinstance(config, SessionConfig) else validate_as(SessionConfig, config), **parts)

    def _indexed_encoder(self) -> ComponentConfig:
        from omnimm.registry import encoders

        model = self.store.model or {}
        if not isinstance(model, dict) or "name" not in model:
            raise ValueError(f"{self.character.folder}: the index does not record its encoder; set `encoder`")
        return encoders.validate({"name": model["name"], **model.get("config", {})})

    # -- one turn -------------------------------------------------------------------------------------------------

    def format_query(self, text: str, role: str | None = None) -> str:
        template = TEMPLATES[self.language]
        return format_query(text, self.config.user_role if role is None else role, template)

    def retrieve(self, query: str, k: int | None = None) -> list[Any]:
        vector = self.encoder.encode([query])
        return self.store.search(vector, k or self.config.prompt.top_k)[0]

    def prepare(self, text: str, role: str | None = None) -> tuple[ComposedPrompt, list[Any]]:
        """Retrieve and compose without calling the LLM (what `--show-prompt` and `--no-llm` print)."""
        query = self.format_query(text, role)
        hits = self.retrieve(query)
        prompt = compose(
            self.character.system_prompt,
            [h.text for h in hits],
            self.history,
            query,
            count_tokens=self.count_tokens,
            config=self.config.prompt,
            language=self.language,
        )
        return prompt, hits

    def ask(self, text: str, role: str | None = None) -> Reply:
        """One turn: the character's reply, the prompt that produced it, the retrieved memories."""
        if self.llm is None:
            raise RuntimeError("this session has no LLM (set `llm` in the session config); use prepare() instead")
        prompt, hits = self.prepare(text, role)
        generation = self.config.generation
        answer = self.llm.chat(
            prompt.messages,
            max_new_tokens=generation.max_new_tokens,
            temperature=generation.temperature,
            top_p=generation.top_p,
            seed=generation.seed,
        )
        text = self.clean(answer, role)
        self.history.append(Exchange(prompt.messages[-1]["content"], text))
        return Reply(text, prompt, hits, raw=answer)

    def clean(self, answer: str, role: str | None = None) -> str:
        """The character's words in a raw answer: cut where the user (or anyone in the scenes) speaks next."""
        user = self.config.user_role if role is None else role
        return clean_reply(answer, self.character.name, {*self.speakers, *([user] if user else [])})

    def reset(self) -> None:
        self.history.clear()

    # -- persistence ----------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the config and history as JSON (atomically: an interrupted save keeps the previous file)."""
        config = self.config.model_dump(mode="json")
        if "language" not in self.config.prompt.model_fields_set:
            del config["prompt"]["language"]  # unset: a resumed session keeps following the character
        data = {
            "format": SESSION_FORMAT,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": config,
            "history": [{"user": e.user, "reply": e.reply} for e in self.history],
        }
        return atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")

    @classmethod
    def resume(
        cls,
        path: str | os.PathLike[str],
        *,
        llm_config: ComponentConfig | Mapping[str, Any] | None = None,
        **parts: Any,
    ) -> RolePlaySession:
        """Rebuild a saved session (config + history); `parts` (llm, encoder, count_tokens) override the config's.

        The file's own `llm` is never built: a session file may come from someone else, and its backend could send
        the user's API key (or the conversation) to any server. Pass `llm_config` (the user's own) or `llm`.
        """
        data = read_session(path)
        values = without_backend(data["config"])
        if llm_config is not None:
            values["llm"] = llm_config
        elif "llm" not in parts and data["config"].get("llm"):
            log.warning("%s: %s", path, unused_backend_note(data["config"]["llm"]))
        session = cls.from_config(values, **parts)
        session.history = saved_history(data)
        return session


def session_language(config: SessionConfig, character: Character) -> str:
    """`prompt.language` when the config sets it, else the character's (en when it has no template)."""
    if "language" in config.prompt.model_fields_set:
        return config.prompt.language
    if character.language in TEMPLATES:
        return character.language
    log.warning("%s: no prompt template for language %r; using en", character.folder, character.language)
    return "en"


def read_session(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a session file; `ValueError` in one line naming the file and what is wrong (the byte, the
    JSON position, the field), so a damaged or hand-edited file never surfaces as a crash later."""
    source = Path(path)
    data = _session_json(source)
    if not isinstance(data, dict) or data.get("format") != SESSION_FORMAT:
        raise ValueError(f"{source}: not a haruhi session file (expected format {SESSION_FORMAT!r})")
    config = data.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{source}: config: expected a mapping of session options, got {type(config).__name__}")
    _check_saved_config(source, config)
    history = data.get("history")
    if not isinstance(history, list):
        raise ValueError(f"{source}: history: expected a list of {{user, reply}} strings")
    for index, item in enumerate(history):
        if not (isinstance(item, dict) and isinstance(item.get("user"), str) and isinstance(item.get("reply"), str)):
            raise ValueError(f"{source}: history[{index}]: expected {{user, reply}} strings")
    return data


def _session_json(source: Path) -> Any:
    text = read_utf8(source)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        cut = error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated")
        hint = " (the file ends early: truncated?)" if cut else ""
        raise ValueError(f"{source}:{error.lineno}: not valid JSON: {error.msg} (column {error.colno}){hint}") from None
    except RecursionError:
        raise ValueError(f"{source}: not valid JSON: nested too deeply") from None


def _check_saved_config(source: Path, config: dict[str, Any]) -> None:
    """Field types of the saved options (its `llm` is never used, so not checked)."""
    from pydantic import ValidationError

    try:
        SessionConfig.model_validate(without_backend(config))
    except ValidationError as error:
        issues = issues_from_validation_error(error)
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        raise ValueError(f"{source}: config.{issues[0].path}: {issues[0].message}{more}") from None


def without_backend(config: Mapping[str, Any]) -> dict[str, Any]:
    """A saved session config without its `llm`: the backend (endpoint, key variable) comes from the user."""
    return {key: value for key, value in config.items() if key != "llm"}


def unused_backend_note(llm: Any) -> str:
    """Says that a session file's backend is not used, naming it."""
    described = llm.get("name", "?") if isinstance(llm, dict) else "?"
    if isinstance(llm, dict) and llm.get("base_url"):
        described += f" at {llm['base_url']}"
    return (
        f"the saved llm ({described}) is not used: a session file never chooses the backend (it could send your "
        "API key elsewhere); give your own (--endpoint, --llm, --smollm2, or `llm` in --config)"
    )


def saved_history(data: dict[str, Any]) -> list[Exchange]:
    """The exchanges of a session file read by `read_session`."""
    return [Exchange(h["user"], h["reply"]) for h in data["history"]]


def _build_llm(config: ComponentConfig | None) -> Any:
    if config is None:
        return None
    from omnimm.registry import llms

    llm = llms.build(config)
    missing = [m for m in ("chat", "count_tokens") if not callable(getattr(llm, m, None))]
    if missing:
        raise TypeError(f"llm '{llms.name_of(config)}' has no {' / '.join(missing)}(): it cannot role-play")
    return llm
