"""`openai/chat`: any server that speaks the OpenAI chat-completions protocol (vLLM, llama.cpp, ollama, hosted APIs).

Standard library only (urllib): nothing to install for the HTTP part.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from omnimm.errors import BackendError
from omnimm.llm.chat import Message, check_messages
from omnimm.llm.configs import OpenAIChatConfig

log = logging.getLogger(__name__)

_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
CHARS_PER_TOKEN = 4


class OpenAIChat:
    """Chat with a served model; `count_tokens` uses a local tokenizer when configured, else an estimate."""

    def __init__(self, config: OpenAIChatConfig) -> None:
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self._tokenizer: Any = None
        self._warned_estimate = False
        if config.tokenizer is not None:
            from omnimm.deps import require

            transformers = require("transformers", extra="haruhi", purpose="counting tokens for 'openai/chat'")
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(config.tokenizer)

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is not None:
            return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        if not self._warned_estimate:
            log.warning("openai/chat: no `tokenizer` configured; token counts are estimated (4 characters/token)")
            self._warned_estimate = True
        return math.ceil(len(text) / CHARS_PER_TOKEN)

    def chat(
        self,
        messages: Sequence[Message],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> str:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": [dict(m) for m in check_messages(messages)],
            "max_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            **({"seed": seed} if seed is not None else {}),
            **self.config.extra_body,
        }
        answer = self._post(body)
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise BackendError(
                f"{self.url}: the answer has no choices[0].message.content: {_preview(answer)}"
            ) from None
        if not isinstance(content, str):
            raise BackendError(f"{self.url}: choices[0].message.content is {type(content).__name__}, not text")
        return content.strip()

    def _post(self, body: dict[str, Any]) -> Any:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.config.api_key_env) if self.config.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode("utf-8")
        for attempt in range(self.config.max_retries + 1):
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.config.timeout) as response:
                    raw = response.read()
                break
            except urllib.error.HTTPError as error:
                detail = error.read().decode("utf-8", "replace")
                if error.code not in _RETRY_STATUS or attempt == self.config.max_retries:
                    raise BackendError(f"{self.url}: HTTP {error.code} {error.reason}: {detail[:300]}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                if attempt == self.config.max_retries:
                    reason = getattr(error, "reason", error)
                    raise BackendError(
                        f"{self.url}: cannot reach the server ({reason}) after {attempt + 1} attempt(s)"
                    ) from None
            time.sleep(min(0.25 * 2**attempt, 4.0))
        try:
            return json.loads(raw)
        except ValueError:
            raise BackendError(f"{self.url}: the answer is not JSON: {raw[:200]!r}") from None


def _preview(answer: Any) -> str:
    text = json.dumps(answer) if not isinstance(answer, str) else answer
    return text[:200]
