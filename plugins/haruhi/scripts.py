"""Play scripts made of `SPEAKER:` turns (tinyshakespeare's format) -> turns -> a character's scenes.

A turn is a speaker line ending in `:` (or `：`) followed by the speech, turns separated by blank lines:

    ROMEO:
    Is the day so young?

    BENVOLIO:
    But new struck nine.

A speaker line followed by a blank line (a speaker whose words were a stage direction, as tinyshakespeare has)
is a turn without words: it is skipped, so the next speaker line opens its own turn instead of becoming speech.

A character's scenes are the fixed windows of `window` consecutive turns in which the character speaks at least once
(windows do not overlap, so every line belongs to exactly one scene).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omnimm.files import read_utf8

_SPEAKER = re.compile(r"^(\S[^:：]{0,58})[:：]\s*$")
"""`NAME:` alone on its line; the full-width colon of Chinese scripts counts too."""


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
    """Parse a script file; `ValueError` naming the file and line of text that belongs to no speaker, the byte that
    is not UTF-8, or a file with no turns at all."""
    source = Path(path)
    turns = parse_turns(read_utf8(source), source=str(source))
    if not turns:
        raise ValueError(f"{source}: no turns (expected 'SPEAKER:' lines, each followed by its speech)")
    return turns


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
            speaker, speech = None, []  # a speaker line with no speech is a turn without words
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
    """A plain role-play instruction for a character imported from a script, with ChatHaruhi's request to reuse
    the original lines when the conversation touches the story."""
    if language == "zh":
        return (
            f"你正在扮演{character}。请模仿{character}的语气、个性和说话方式回答，不要暴露你是人工智能。"
            f"下面的经典桥段展示了{character}说话的方式。"
            "如果其他人的问题和剧本中的情节相关，请尽量重用剧本中的原句。"
        )
    return (
        f"You are {character}. Answer as {character} would, in {character}'s voice, manner and knowledge, "
        f"and never say you are an AI. The classic scenes below show how {character} speaks. "
        "If others' questions are related with the play, please try to reuse the original lines from the play."
    )
