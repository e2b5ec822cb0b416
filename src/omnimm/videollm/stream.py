"""Streaming a reply to a terminal as it is generated, without ever showing the template's stop string."""

from __future__ import annotations

from typing import Any, TextIO

import torch


class ReplyStreamer:
    """A transformers streamer (`put` / `end`) for `VideoLLM.generate(streamer=...)` with one row.

    Text is written as soon as it cannot be the start of the stop string (e.g. Valley's `###`); the stop string and
    what follows it never appear. `finish(reply)` writes whatever the final, cleaned reply adds and a newline.
    """

    def __init__(self, model: Any, stream: TextIO) -> None:
        self.model = model
        self.stream = stream
        self.ids: list[int] = []
        self.shown = ""
        self.stop = model.template.stop.strip()
        self.stop_ids = list(model._stop_sequence())
        self.stopped = False

    def put(self, value: torch.Tensor) -> None:
        ids = value.reshape(-1).tolist() if value.ndim <= 1 or value.shape[0] == 1 else value[0].tolist()
        if not ids or self.stopped:
            return
        self.ids += [int(i) for i in ids]
        safe = _before_stop(self.ids, self.stop_ids)
        self.stopped = _contains(self.ids, self.stop_ids)
        text = self.model.llm.tokenizer.decode(safe, skip_special_tokens=True).lstrip()
        if self.stop and self.stop in text:
            text = text[: text.index(self.stop)]
            self.stopped = True
        else:
            text = text[: len(text) - _held_back(text, self.stop)]
        self._show(text)

    def end(self) -> None:
        """Called by `generate` when it is done; `finish` writes the rest."""

    def finish(self, reply: str) -> None:
        if reply.startswith(self.shown):
            self._show(reply)
        self.stream.write("\n")
        self.stream.flush()

    def _show(self, text: str) -> None:
        if text.startswith(self.shown) and len(text) > len(self.shown):
            self.stream.write(text[len(self.shown) :])
            self.stream.flush()
            self.shown = text


def _held_back(sequence: Any, stop: Any) -> int:
    """How many trailing items of `sequence` (text or token ids) could be the beginning of `stop` (kept back until
    it is clear)."""
    for size in range(min(len(stop), len(sequence)), 0, -1):
        if list(stop[:size]) == list(sequence[-size:]):
            return size
    return 0


def _contains(ids: list[int], stop: list[int]) -> bool:
    return bool(stop) and any(ids[i : i + len(stop)] == stop for i in range(len(ids) - len(stop) + 1))


def _before_stop(ids: list[int], stop: list[int]) -> list[int]:
    """The ids that are surely reply: up to the stop sequence, and short of any trailing start of it."""
    for start in range(len(ids) - len(stop) + 1 if stop else 0):
        if ids[start : start + len(stop)] == stop:
            return ids[:start]
    return ids[: len(ids) - _held_back(ids, stop)] if stop else ids
