"""Conversation templates: turn a conversation into text segments, marking which ones the model learns to say.

```python
from omnimm.registry import templates

valley = templates.get("omnimm/llava-v0")
valley.render([("user", "<video>\\nWhat happens?"), ("assistant", "A pancake flips.")])
# [Segment('A chat between ...###', False), Segment('Human: <video>\\nWhat happens?###', False),
#  Segment('Assistant: ', False), Segment('A pancake flips.###', True)]
```

Tokenising segment by segment (rather than the joined string) makes the label mask exact: no guessing where a
turn starts after the tokenizer has merged characters across the boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Role = Literal["system", "user", "assistant"]

_ROLE_ALIASES: dict[str, Role] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
}


def normalise_role(role: str) -> Role:
    """`human`/`user` -> `user`, `gpt`/`assistant` -> `assistant` (LLaVA/Valley JSON use the former)."""
    try:
        return _ROLE_ALIASES[role.lower()]
    except KeyError:
        raise ValueError(f"unknown conversation role {role!r} (use one of {sorted(_ROLE_ALIASES)})") from None


@dataclass(frozen=True)
class Segment:
    text: str
    target: bool


@dataclass(frozen=True)
class ChatTemplate:
    """A chat format made of a system block and per-role prefixes and suffixes.

    A conversation renders as `system_prefix + system + system_suffix`, then per user turn
    `user_prefix + text + user_suffix`, per assistant turn `assistant_prefix` (context) + `text + assistant_suffix`
    (the target). `stop` is where generation ends.
    """

    name: str
    system: str
    system_prefix: str
    system_suffix: str
    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    assistant_suffix: str
    stop: str
    description: str = ""

    def render(
        self, turns: Sequence[tuple[str, str]], *, add_generation_prompt: bool = False, system: str | None = None
    ) -> list[Segment]:
        """Segments for `turns` (`(role, text)` pairs); with `add_generation_prompt`, end with the assistant prefix."""
        segments: list[Segment] = []
        system_text = system if system is not None else self.system
        normalised = [(normalise_role(role), text) for role, text in turns]
        if normalised and normalised[0][0] == "system":
            system_text = normalised[0][1]
            normalised = normalised[1:]
        if system_text or self.system_prefix:
            segments.append(Segment(self.system_prefix + system_text + self.system_suffix, False))
        for role, text in normalised:
            if role == "user":
                segments.append(Segment(self.user_prefix + text + self.user_suffix, False))
            elif role == "assistant":
                segments.append(Segment(self.assistant_prefix, False))
                segments.append(Segment(text + self.assistant_suffix, True))
            else:
                raise ValueError("a system message may only come first")
        if add_generation_prompt:
            segments.append(Segment(self.assistant_prefix, False))
        return [s for s in segments if s.text]

    def prompt(self, turns: Sequence[tuple[str, str]], **options: object) -> str:
        """The rendered text with a generation prompt at the end."""
        return "".join(s.text for s in self.render(turns, add_generation_prompt=True, **options))  # type: ignore[arg-type]


VALLEY_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

LLAVA_V0 = ChatTemplate(
    "omnimm/llava-v0",
    system=VALLEY_SYSTEM,
    system_prefix="",
    system_suffix="###",
    user_prefix="Human: ",
    user_suffix="###",
    assistant_prefix="Assistant: ",
    assistant_suffix="###",
    stop="###",
    description="The '###' Human/Assistant format of LLaVA v0 and Valley.",
)
CHATML = ChatTemplate(
    "omnimm/chatml",
    system="You are a helpful assistant.",
    system_prefix="<|im_start|>system\n",
    system_suffix="<|im_end|>\n",
    user_prefix="<|im_start|>user\n",
    user_suffix="<|im_end|>\n",
    assistant_prefix="<|im_start|>assistant\n",
    assistant_suffix="<|im_end|>\n",
    stop="<|im_end|>",
    description="ChatML, as SmolLM2, Qwen and others use it.",
)
PLAIN = ChatTemplate(
    "omnimm/plain",
    system="",
    system_prefix="",
    system_suffix="",
    user_prefix="",
    user_suffix="\n",
    assistant_prefix="",
    assistant_suffix="\n",
    stop="\n",
    description="No roles: the prompt, a newline, the answer (LLaVA-style caption pre-training).",
)
