"""Prompt composition under token budgets: system prompt, retrieved scenes, dialogue history, query.

Rules (tokens counted with the LLM backend's own tokenizer):

- **Scenes**: taken in retrieval rank order; a scene is added when the heading, the scenes so far, and this scene
  with its separator stay within `max_story_tokens`. A scene too long for what is left is skipped and the next one is
  tried, so one long scene does not starve the rest.
- **History**: exchanges (the user's turn + the character's reply) from the newest back; the first exchange that
  does not fit ends the history, so what is kept is always a contiguous, most recent stretch. If even the newest
  exchange does not fit, no history is sent (ChatHaruhi sends the whole history in that case).
- **Order**: one system message (system prompt, then the scene block), the kept exchanges oldest first, the query.
  Scenes sit inside the system message so that chat templates requiring user/assistant alternation accept it.
- **Language**: the template (scene heading, query format) is the character's language unless the config sets one:
  zh writes a turn as ChatHaruhi does, `阿虚:「text」`, en as `JULIET: text`; a narrator (`旁白`, `narrator`,
  `scene`) speaks without brackets.
- **Replies** (`clean_reply`): a model continuing the dialogue writes the next speakers' lines too; the reply is cut
  at the first line another speaker opens, and the character's own `NAME:` prefix (and zh `「」`) is taken off.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

from omnimm.llm.chat import Message
from omnimm_plugins.haruhi.configs import PromptConfig


@dataclass(frozen=True)
class LanguageTemplate:
    story_heading: str
    scene_separator: str
    query_format: str
    """How a user turn is written: `{role}` and `{text}` placeholders (`{text}` alone when no role is set)."""


TEMPLATES: dict[str, LanguageTemplate] = {
    "en": LanguageTemplate(
        story_heading="\n\nClassic scenes for the role are as follows:\n",
        scene_separator="\n###\n",
        query_format="{role}: {text}",
    ),
    "zh": LanguageTemplate(
        story_heading="\n\n角色的经典桥段如下：\n",
        scene_separator="\n###\n",
        query_format="{role}:「{text}」",
    ),
}


@dataclass(frozen=True)
class Exchange:
    user: str
    """The user's turn as it was sent (role prefix included)."""
    reply: str


@dataclass
class ComposedPrompt:
    messages: list[Message]
    scenes: list[int] = field(default_factory=list)
    """Ranks (0-based) of the retrieved scenes that were packed."""
    skipped_scenes: list[int] = field(default_factory=list)
    """Ranks of retrieved scenes that did not fit."""
    history_kept: int = 0
    """How many of the latest exchanges were sent."""
    tokens: dict[str, int] = field(default_factory=dict)
    """Tokens per part: system, story, history, query."""

    def render(self) -> str:
        """The messages as readable text (for `--show-prompt`)."""
        return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in self.messages)


NARRATORS = frozenset({"旁白", "narrator", "scene"})
"""Roles that narrate rather than speak (casefolded): their turns are written `role:text`, without brackets."""


def format_query(text: str, role: str, template: LanguageTemplate) -> str:
    if not role:
        return text
    if role.casefold() in NARRATORS:
        return f"{role}:{text}"
    return template.query_format.format(role=role, text=text)


def compose(
    system_prompt: str,
    scenes: Sequence[str],
    history: Sequence[Exchange],
    query: str,
    *,
    count_tokens: Callable[[str], int],
    config: PromptConfig | None = None,
    language: str | None = None,
) -> ComposedPrompt:
    """Compose the messages for one turn. `scenes` are in retrieval rank order; `query` is already formatted.

    `language` (the character's, as a session resolves it) overrides `config.language`.
    """
    config = config or PromptConfig()
    template = TEMPLATES[language or config.language]
    heading = config.story_heading if config.story_heading is not None else template.story_heading

    story, packed, skipped, story_tokens = pack_scenes(
        scenes, heading, template.scene_separator, config.max_story_tokens, count_tokens
    )
    kept = pack_history(history, config.max_history_tokens, count_tokens)
    messages: list[Message] = [{"role": "system", "content": system_prompt + story}]
    for exchange in history[len(history) - kept :] if kept else []:
        messages.append({"role": "user", "content": exchange.user})
        messages.append({"role": "assistant", "content": exchange.reply})
    messages.append({"role": "user", "content": query})
    history_tokens = sum(_exchange_tokens(e, count_tokens) for e in history[len(history) - kept :]) if kept else 0
    tokens = {
        "system": count_tokens(system_prompt),
        "story": story_tokens,
        "history": history_tokens,
        "query": count_tokens(query),
    }
    return ComposedPrompt(messages, packed, skipped, kept, tokens)


def pack_scenes(
    scenes: Sequence[str], heading: str, separator: str, budget: int, count_tokens: Callable[[str], int]
) -> tuple[str, list[int], list[int], int]:
    """Greedy by rank: (story text, packed ranks, skipped ranks, tokens used)."""
    if not scenes:
        return "", [], [], 0
    used = count_tokens(heading)
    if used > budget:
        return "", [], list(range(len(scenes))), 0
    parts, packed, skipped = [heading], [], []
    for rank, scene in enumerate(scenes):
        cost = count_tokens(scene + separator)
        if used + cost <= budget:
            parts.append(scene + separator)
            packed.append(rank)
            used += cost
        else:
            skipped.append(rank)
    if not packed:
        return "", [], skipped, 0
    return "".join(parts), packed, skipped, used


def pack_history(history: Sequence[Exchange], budget: int, count_tokens: Callable[[str], int]) -> int:
    """How many of the newest exchanges fit in `budget` (0 when even the newest does not)."""
    used = kept = 0
    for exchange in reversed(history):
        cost = _exchange_tokens(exchange, count_tokens)
        if used + cost > budget:
            break
        used += cost
        kept += 1
    return kept


def _exchange_tokens(exchange: Exchange, count_tokens: Callable[[str], int]) -> int:
    return count_tokens(exchange.user) + count_tokens(exchange.reply)


def estimate_tokens(text: str) -> int:
    """Rough count when no tokenizer is at hand: one token per 4 characters."""
    return (len(text) + 3) // 4


# -- replies --------------------------------------------------------------------------------------------------------

_SPEAKER_PREFIX = re.compile(r"^\s*([^:：「」\n]{1,40}?)\s*[:：]\s*(.*)$")
"""`NAME: rest` / `NAME：rest` at the start of a line (ASCII or full-width colon); the name has no brackets."""
_SCRIPT_NAME = re.compile(r"[A-Z][A-Z' .-]*")
"""A play script's speaker line (`JULIET:` alone on its line, tinyshakespeare's form)."""
_WRAPPERS = (("「", "」"), ("“", "”"), ('"', '"'))


def known_speakers(texts: Iterable[str]) -> set[str]:
    """Names that open a dialogue line in `texts` (scenes): `NAME:` alone on a line, or `NAME:「...`."""
    names: set[str] = set()
    for text in texts:
        for line in text.splitlines():
            match = _SPEAKER_PREFIX.match(line)
            if match and (not match.group(2) or match.group(2).startswith("「")):
                names.add(match.group(1).strip())
    return names


def clean_reply(text: str, own: str, speakers: Collection[str] = ()) -> str:
    """The character's own words in a raw model reply.

    - a line opened by another speaker ends the reply: one of `speakers` (the user's role, the scenes' speakers),
      any `NAME:「` line (ChatHaruhi's dialogue form), or a script speaker line in capitals (`JULIET:`);
    - the character's own prefix is taken off wherever it opens a line (`ROMEO:`, `春日：「...」` -> `...`).

    When the very first line is another speaker's, nothing of the character's is left: the reply is kept as it came
    (stripped), so an answer is never emptied.
    """
    own_name = own.strip().casefold()
    others = {name.strip().casefold() for name in speakers} - {own_name}
    kept: list[str] = []
    for line in text.strip().splitlines():
        speaker = _line_speaker(line, own_name, others)
        if speaker is None:
            kept.append(line)
        elif speaker == own_name:
            rest = _unwrap(_SPEAKER_PREFIX.match(line).group(2).strip())  # type: ignore[union-attr]
            if rest:
                kept.append(rest)
        else:
            break
    cleaned = "\n".join(kept).strip()
    return cleaned or text.strip()


def _line_speaker(line: str, own: str, others: set[str]) -> str | None:
    """The (casefolded) name opening `line` when it is a dialogue line, else None."""
    match = _SPEAKER_PREFIX.match(line)
    if match is None:
        return None
    name, rest = match.group(1).strip(), match.group(2)
    folded = name.casefold()
    if folded == own or folded in others or rest.startswith("「"):
        return folded
    if not rest.strip() and _SCRIPT_NAME.fullmatch(name):
        return folded
    return None


def _unwrap(text: str) -> str:
    """`「words」` -> `words` (also curly and straight double quotes) when the brackets hold the whole text."""
    for opening, closing in _WRAPPERS:
        inner = text[len(opening) : -len(closing)]
        if len(text) >= 2 and text.startswith(opening) and text.endswith(closing) and closing not in inner:
            return inner.strip()
    return text
