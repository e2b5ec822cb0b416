"""Role-play sessions: retrieve scenes for each user turn, compose the prompt, ask the LLM, keep the history.

```python
session = RolePlaySession.from_config({"character": "ROMEO", "llm": {"name": "openai/chat", ...}})
reply = session.ask("Where is Juliet?")
print(reply.text, reply.prompt.render())
session.save("romeo-session.json")            # JSON; resume with RolePlaySession.resume(..., llm_config=...)
```
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
from omnimm.files import atomic_write_text
from omnimm_plugins.haruhi.character import Character
from omnimm_plugins.haruhi.configs import SessionConfig
from omnimm_plugins.haruhi.prompt import (
    TEMPLATES,
    ComposedPrompt,
    Exchange,
    compose,
    estimate_tokens,
    format_query,
)

SESSION_FORMAT = "omnimm-haruhi-session/1"

log = logging.getLogger(__name__)


@dataclass
class Reply:
    text: str
    prompt: ComposedPrompt
    hits: list[Any]
    """The retrieved memories (rank order), packed or not."""


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
        self.history: list[Exchange] = []

    @classmethod
    def from_config(cls, config: SessionConfig | Mapping[str, Any], **parts: Any) -> RolePlaySession:
        return cls(config if isinstance(config, SessionConfig) else SessionConfig.model_validate(config), **parts)

    def _indexed_encoder(self) -> ComponentConfig:
        from omnimm.registry import encoders

        model = self.store.model or {}
        if not isinstance(model, dict) or "name" not in model:
            raise ValueError(f"{self.character.folder}: the index does not record its encoder; set `encoder`")
        return encoders.validate({"name": model["name"], **model.get("config", {})})

    # -- one turn -------------------------------------------------------------------------------------------------

    def format_query(self, text: str, role: str | None = None) -> str:
        template = TEMPLATES[self.config.prompt.language]
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
        self.history.append(Exchange(prompt.messages[-1]["content"], answer))
        return Reply(answer, prompt, hits)

    def reset(self) -> None:
        self.history.clear()

    # -- persistence ----------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the config and history as JSON (atomically: an interrupted save keeps the previous file)."""
        data = {
            "format": SESSION_FORMAT,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": self.config.model_dump(mode="json"),
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


def read_session(path: str | os.PathLike[str]) -> dict[str, Any]:
    source = Path(path)
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{source}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or data.get("format") != SESSION_FORMAT:
        raise ValueError(f"{source}: not a haruhi session file (expected format {SESSION_FORMAT!r})")
    history = data.get("history")
    if not isinstance(history, list) or not all(
        isinstance(h, dict) and isinstance(h.get("user"), str) and isinstance(h.get("reply"), str) for h in history
    ):
        raise ValueError(f"{source}: history: expected a list of {{user, reply}} strings")
    return data


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
