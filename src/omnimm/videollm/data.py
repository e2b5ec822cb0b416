"""Datasets of conversations about videos: unreadable media are skipped, counted and reported, never fatal."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from omnimm.errors import ConfigError, ConfigIssue, MediaError
from omnimm.video import VideoClip
from omnimm.videollm.configs import ConversationDataConfig
from omnimm.videollm.processor import Example, VideoLLMProcessor

log = logging.getLogger("omnimm.data")

_MAX_ATTEMPTS = 16


class MediaDataset(Dataset[Example]):
    """Base of datasets whose items pair a media file with a conversation.

    Subclasses implement `__len__` and `item(index) -> (media path or None, turns)`. When a file cannot be read,
    the next item is used instead, the file is recorded in `skipped`, and a warning is logged once per process:
    one broken video never stops a training run. With `cache`, decoded clips stay in memory (small datasets read
    for many epochs).
    """

    def __init__(self, processor: VideoLLMProcessor, *, cache: bool = False) -> None:
        self.processor = processor
        self.skipped: dict[str, str] = {}
        self.cache: dict[str, VideoClip] | None = {} if cache else None

    def item(self, index: int) -> tuple[str | None, Sequence[tuple[str, str]]]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Example:
        for attempt in range(min(len(self), _MAX_ATTEMPTS)):
            media, turns = self.item((index + attempt) % len(self))
            try:
                clip = self._read(media) if media is not None else None
            except MediaError as error:
                self._skip(error)
                continue
            return self.processor.encode(turns, clip)
        raise MediaError(
            f"{type(self).__name__}[{index}]", f"no readable media in {_MAX_ATTEMPTS} consecutive items; check the data"
        )

    def _read(self, media: str) -> VideoClip:
        if self.cache is None:
            return self.processor.read(media)
        if media not in self.cache:
            self.cache[media] = self.processor.read(media)
        return self.cache[media]

    def _skip(self, error: MediaError) -> None:
        if not self.skipped:
            log.warning("skipping unreadable media: %s (later skips are counted in dataset.skipped)", error)
        self.skipped[error.path] = error.reason


class ConversationDataset(MediaDataset):
    """Valley / LLaVA JSON conversations (see `ConversationDataConfig`), registered as `omnimm/conversations`."""

    def __init__(self, config: ConversationDataConfig, *, processor: VideoLLMProcessor) -> None:
        super().__init__(processor, cache=config.cache)
        self.config = config
        path = Path(config.path)
        self.root = Path(config.media_root) if config.media_root else path.parent
        self.records = _read_records(path)[: config.limit]

    def __len__(self) -> int:
        return len(self.records)

    def item(self, index: int) -> tuple[str | None, Sequence[tuple[str, str]]]:
        record = self.records[index]
        media = record.get("video") or record.get("image")
        turns = [(turn["from"], turn["value"]) for turn in record["conversations"]]
        return (str(self.root / media) if media else None), turns


def _read_records(path: Path) -> list[dict[str, Any]]:
    """Load and check the records; a malformed one is a `ConfigError` naming the file and the record."""
    if not path.is_file():
        raise FileNotFoundError(f"conversation file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            [ConfigIssue("", f"invalid JSON: {error.msg}", line=error.lineno)], source=str(path)
        ) from None
    if not isinstance(records, list):
        raise ConfigError([ConfigIssue("", "expected a list of records")], source=str(path))
    issues = [issue for index, record in enumerate(records) for issue in _check_record(index, record)]
    if issues:
        raise ConfigError(issues[:20], source=str(path), title="conversation data")
    return records


def _check_record(index: int, record: Any) -> list[ConfigIssue]:
    where = f"[{index}]"
    if not isinstance(record, dict):
        return [ConfigIssue(where, f"a record must be an object, got {type(record).__name__}")]
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        return [ConfigIssue(f"{where}.conversations", "needs a non-empty list of {from, value} turns")]
    issues = []
    for position, turn in enumerate(turns):
        if not (isinstance(turn, dict) and isinstance(turn.get("from"), str) and isinstance(turn.get("value"), str)):
            issues.append(ConfigIssue(f"{where}.conversations[{position}]", "a turn needs string 'from' and 'value'"))
    if not any(isinstance(t, dict) and t.get("from") in ("gpt", "assistant") for t in turns):
        issues.append(ConfigIssue(f"{where}.conversations", "no assistant ('gpt') turn: nothing to learn"))
    return issues
