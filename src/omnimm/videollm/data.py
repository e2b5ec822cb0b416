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
from omnimm.videollm.processor import Example, TooLongError, VideoLLMProcessor

log = logging.getLogger("omnimm.data")

_MAX_ATTEMPTS = 16


class MediaDataset(Dataset[Example]):
    """Base of datasets whose items pair a media file with a conversation.

    Subclasses implement `__len__` and `item(index) -> (media path or None, turns)`; `meta(index)` may add what an
    evaluator needs (e.g. the answer choices). When a file cannot be read, or an example cannot fit `max_length`
    without losing visual tokens, the next item is used instead, the cause is recorded in `skipped`, and a warning
    is logged once per process: one broken video never stops a training run. Examples cut to `max_length` are
    counted in `truncated`, clips whose sampled frames repeat (a video shorter than the frames asked for) in
    `short_clips`. With `cache`, decoded clips stay in memory (small datasets read for many epochs).
    """

    def __init__(self, processor: VideoLLMProcessor, *, cache: bool = False) -> None:
        self.processor = processor
        self.skipped: dict[str, str] = {}
        self.truncated: dict[int, int] = {}
        self.short_clips: dict[str, int] = {}
        self.cache: dict[str, VideoClip] | None = {} if cache else None
        self._pixels: dict[str, dict[str, Any]] = {}  # preprocessed frames of cached clips

    def item(self, index: int) -> tuple[str | None, Sequence[tuple[str, str]]]:
        raise NotImplementedError

    def meta(self, index: int) -> dict[str, Any]:
        """Extra facts about item `index` for evaluators (e.g. `{"kind": ..., "choices": [...]}`)."""
        return {}

    def __getitem__(self, index: int) -> Example:
        skipped: dict[str, str] = {}
        for attempt in range(min(len(self), _MAX_ATTEMPTS)):
            position = (index + attempt) % len(self)
            media, turns = self.item(position)
            try:
                clip = self.read_clip(media) if media is not None else None
                example = self.processor.encode(turns, clip, pixel_values=self._pixel_values(media, clip))
            except MediaError as error:
                skipped[error.path] = error.reason
                self._skip(error.path, error.reason)
                continue
            except TooLongError as error:
                skipped[media or f"item {position}"] = str(error)
                self._skip(media or f"item {position}", str(error))
                continue
            example.skipped = skipped
            if example.cut:
                if not self.truncated:
                    log.warning(
                        "an example was cut by %d tokens to max_length %s (later ones are counted in "
                        "dataset.truncated)",
                        example.cut,
                        self.processor.max_length,
                    )
                self.truncated[position] = example.cut
            return example
        raise MediaError(
            f"{type(self).__name__}[{index}]",
            f"no usable item in {_MAX_ATTEMPTS} consecutive items (unreadable media or too long); check the data",
        )

    def _pixel_values(self, media: str | None, clip: VideoClip | None) -> dict[str, Any] | None:
        """A cached clip's preprocessed frames, computed once (preprocessing is deterministic)."""
        if self.cache is None or media is None or clip is None:
            return None
        if media not in self._pixels:
            self._pixels[media] = self.processor.pixels(clip)
        return self._pixels[media]

    def read_clip(self, media: str) -> VideoClip:
        """The clip of a media file, read as the model samples it (cached with `cache`; repeats counted)."""
        return self._read(media)

    def pixel_values(self, media: str | None, clip: VideoClip | None) -> dict[str, Any] | None:
        """The clip's preprocessed frames, from the cache when the dataset keeps one."""
        return self._pixel_values(media, clip)

    def _read(self, media: str) -> VideoClip:
        if self.cache is not None and media in self.cache:
            return self.cache[media]
        clip = self.processor.read(media)
        if clip.repeated:
            if not self.short_clips:
                log.warning(
                    "%s: %d of %d sampled frames repeat the one before (the video has fewer frames than asked for; "
                    "later ones are counted in dataset.short_clips)",
                    media,
                    len(clip.repeated),
                    clip.num_frames,
                )
            self.short_clips[media] = len(clip.repeated)
        if self.cache is not None:
            self.cache[media] = clip
        return clip

    def _skip(self, where: str, reason: str) -> None:
        if not self.skipped:
            log.warning("skipping %s: %s (later skips are counted in dataset.skipped)", where, reason)
        self.skipped[where] = reason

    def report(self) -> list[str]:
        """One line per kind of problem met so far (for the end of a stage or an evaluation)."""
        lines = []
        if self.skipped:
            lines.append(f"{len(self.skipped)} item(s) skipped (unreadable or too long): {sorted(self.skipped)[:5]}")
        if self.truncated:
            lines.append(
                f"{len(self.truncated)} example(s) cut to max_length {self.processor.max_length} "
                f"(up to {max(self.truncated.values())} tokens each)"
            )
        if self.short_clips:
            lines.append(
                f"{len(self.short_clips)} clip(s) with repeated frames (videos shorter than the frames sampled from "
                f"them): {sorted(self.short_clips)[:5]}"
            )
        return lines


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

    def meta(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        meta = dict(record.get("meta") or {})
        meta.setdefault("id", str(record.get("id", index)))
        return meta


def _read_records(path: Path) -> list[dict[str, Any]]:
    """Load and check the records; a malformed one is a `ConfigError` naming the file and the record."""
    if not path.is_file():
        raise FileNotFoundError(f"conversation file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            [ConfigIssue("", f"not UTF-8 text (byte {error.start}: {error.reason})")], source=str(path)
        ) from None
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
