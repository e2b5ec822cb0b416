"""The chat interface every LLM backend offers: messages in, text out, and its own token count.

```python
llm = registries.llms.build({"name": "openai/chat", "base_url": "http://127.0.0.1:8000/v1", "model": "qwen"})
llm.chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], max_new_tokens=32)
llm.count_tokens("How many tokens is this?")
```

Role-play, gates and evaluators talk to `ChatBackend`, so a local transformers model and a served one (vLLM,
llama.cpp, ollama) are interchangeable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, TypedDict, runtime_checkable


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


@runtime_checkable
class ChatBackend(Protocol):
    """What a chat-capable LLM provides."""

    def chat(
        self,
        messages: Sequence[Message],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> str:
        """The assistant's reply to `messages`; `temperature` 0 means greedy decoding.

        A served backend that fails (unreachable, too slow, an error status, an unusable answer) raises
        `omnimm.errors.BackendError`, one line naming the URL and the reason: the caller may retry or go on.
        """
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes in this backend's own tokenizer (no special tokens)."""
        ...


def check_messages(messages: Sequence[Message]) -> list[Message]:
    """Validate roles and contents; returns the messages as a list. Raises ValueError naming the bad index."""
    checked: list[Message] = []
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"messages[{index}].role: expected system, user or assistant, got {role!r}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"messages[{index}].content: expected a string")
        if role == "system" and index != 0:
            raise ValueError(f"messages[{index}]: a system message may only come first")
        checked.append(message)
    if not checked:
        raise ValueError("messages: at least one message is needed")
    return checked
