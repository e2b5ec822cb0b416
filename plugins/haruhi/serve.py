"""`omnimm serve --character DIR --llm FILE`: a character answering in role over the OpenAI-compatible API.

Each request carries the whole conversation (the API is stateless): its earlier user/assistant turns become the
session's history, scenes are retrieved for the last user message, and the reply comes back with the scenes it
drew on under the response's `omnimm.scenes` (the page shows them beside the reply).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from omnimm.errors import BackendError
from omnimm.serve.backends import Cancelled, Completion, GenerationOptions, Sink, cut_at_stops
from omnimm.serve.media import Conversation
from omnimm.serve.schemas import APIError


@dataclass
class _Turn:
    history: list[Any]
    text: str


class CharacterBackend:
    """One `RolePlaySession` answering every request in turn (its history is set from each request)."""

    mode = "character"
    max_batch = 1  # one prompt per backend call: the session's LLM backends answer one conversation at a time

    def __init__(self, session: Any, name: str) -> None:
        self.session = session
        self.name = name

    def prepare(self, conversation: Conversation) -> _Turn:
        from omnimm_plugins.haruhi.prompt import Exchange

        if conversation.media is not None:
            raise APIError(400, f"{conversation.media.field}: a character takes text only", param="messages")
        turns = [(role, text) for role, text in conversation.turns if role != "system"]
        if not turns or turns[-1][0] != "user":
            raise APIError(400, "messages: the last message must be the user's", param="messages")
        history = []
        for (role, text), (next_role, reply) in pairwise(turns):
            if role == "user" and next_role == "assistant":
                history.append(Exchange(self.session.format_query(text), reply))
        return _Turn(history, turns[-1][1])

    def generate(
        self,
        prepared: Sequence[_Turn],
        options: GenerationOptions,
        sinks: Sequence[Sink | None],
        cancelled: Cancelled | None = None,
    ) -> list[Completion]:
        """One LLM call per conversation (the character's backend answers one at a time); a batch nobody waits for
        any more is not started."""
        answers = []
        for turn, sink in zip(prepared, sinks, strict=True):
            if cancelled is not None and cancelled():
                raise APIError(504, "no client waits for this answer any more", code="timeout")
            answers.append(self._answer(turn, options, sink))
        return answers

    def _answer(self, turn: _Turn, options: GenerationOptions, sink: Sink | None) -> Completion:
        session = self.session
        session.history = list(turn.history)
        prompt, hits = session.prepare(turn.text)
        try:
            raw = session.llm.chat(
                prompt.messages,
                max_new_tokens=options.max_tokens,
                temperature=options.temperature,
                top_p=options.top_p,
                seed=options.seed,
            )
        except BackendError as error:
            raise APIError(502, f"the character's LLM failed: {error}", code="backend_error") from None
        text = cut_at_stops(session.clean(raw), options.stop)
        if sink is not None and text:
            sink(text)
        completion_tokens = session.count_tokens(text)
        return Completion(
            text=text,
            finish_reason="stop" if completion_tokens < options.max_tokens else "length",
            prompt_tokens=sum(session.count_tokens(m["content"]) for m in prompt.messages),
            completion_tokens=completion_tokens,
            extra={"scenes": [{"rank": h.rank, "score": round(float(h.score), 4), "text": h.text} for h in hits]},
        )


def character_backend(target: Path, options: dict[str, Any]) -> CharacterBackend:
    """The `character` serving mode: `target` is a character folder, `options["llm"]` an LLM config file."""
    from omnimm.config import read_config_file
    from omnimm_plugins.haruhi.session import RolePlaySession

    if options.get("llm") is None:
        raise ValueError("--character needs --llm FILE: the LLM config the character answers with (openai/chat, ...)")
    llm_config = read_config_file(options["llm"])[0]
    session = RolePlaySession.from_config({"character": str(target), "llm": llm_config})
    return CharacterBackend(session, options.get("name") or session.character.name)
