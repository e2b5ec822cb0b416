"""Play scripts made of `SPEAKER:` turns (tinyshakespeare's format) -> turns -> a character's scenes.

A turn is a speaker line ending in `:` followed by the speech, turns separated by blank lines:

    ROMEO:
    Is the day so young?

    BENVOLIO:
    But new struck nine.

A character's scenes are the fixed windows of `window` consecutive turns in which the character speaks at least once
(windows do not overlap, so every line belongs to exactly one scene).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_SPEAKER = re.compile(r"^(\S[^:]{0,58}):\s*$")


@dataclass(frozen=True)
class Turn:
    index: int
    speaker: str
    speech: str
    line: int
    """1-based line of the speaker line in the source file."""

    def render(self) -> str:
        return f"{self.speaker}:\n{self.speech}"


@dataclass(frozen=True)
class Scene:
    text: str
    turns: tuple[int, ...]
    """Indices of the turns it holds."""

    @property
    def first_turn(self) -> int:
        return self.turns[0]


def read_turns(path: str | os.PathLike[str]) -> list[Turn]:
    """Parse a script file; raises ValueError naming the file and line of text that belongs to no speaker."""
    source = Path(path)
    return parse_turns(source.read_text(encoding="utf-8"), source=str(source))


def parse_turns(text: str, *, source: str = "<text>") -> list[Turn]:
    turns: list[Turn] = []
    speaker: str | None = None
    speech: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not line:
            if speaker is not None and speech:
                turns.append(Turn(len(turns), speaker, "\n".join(speech), start))
                speaker, speech = None, []
            continue
        if speaker is not None:
            speech.append(line)
            continue
        match = _SPEAKER.match(line)
        if match is None:
            raise ValueError(f"{source}:{number}: text outside a turn (expected a 'SPEAKER:' line): {line[:60]!r}")
        speaker, start = match.group(1), number
    if speaker is not None and speech:
        turns.append(Turn(len(turns), speaker, "\n".join(speech), start))
    return turns


def speakers(turns: Sequence[Turn]) -> dict[str, int]:
    """Turn counts per speaker, most frequent first."""
    counts: dict[str, int] = {}
    for turn in turns:
        counts[turn.speaker] = counts.get(turn.speaker, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def character_scenes(
    turns: Sequence[Turn], character: str, *, window: int = 6, exclude: frozenset[int] = frozenset()
) -> list[Scene]:
    """The windows of `window` turns where `character` speaks (case-insensitive); turns in `exclude` are left out
    of the scene texts (held-out lines for evaluation) but still make their window a scene of the character."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    name = character.casefold()
    scenes = []
    for start in range(0, len(turns), window):
        block = turns[start : start + window]
        if not any(t.speaker.casefold() == name for t in block):
            continue
        kept = [t for t in block if t.index not in exclude]
        if kept:
            scenes.append(Scene("\n\n".join(t.render() for t in kept), tuple(t.index for t in kept)))
    return scenes


def default_system_prompt(character: str, *, language: str = "en") -> str:
    """A plain role-play instruction for a character imported from a script."""
    if language == "zh":
        return (
            f"你正在扮演{character}。请模仿{character}的语气、个性和说话方式回答，不要暴露你是人工智能。"
            f"下面的经典桥段展示了{character}说话的方式。"
        )
    return (
        f"You are {character}. Answer as {character} would, in {character}'s voice, manner and knowledge, "
        f"and never say you are an AI. The classic scenes below show how {character} speaks."
    )
