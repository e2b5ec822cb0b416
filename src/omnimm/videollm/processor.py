"""Text + video -> model inputs: sample and preprocess frames, render the chat template, place visual tokens."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from omnimm.llm.templates import ChatTemplate, normalise_role
from omnimm.video import VideoClip, read_visual
from omnimm.videollm.configs import FrameSampling
from omnimm.vision.preprocess import ImageTransform

IGNORE_INDEX = -100


@dataclass
class Example:
    """One tokenised conversation with its frames."""

    input_ids: list[int]
    labels: list[int]
    pixel_values: dict[str, Any]
    """Per encoder key: `[T, 3, S, S]` (or what that encoder's preprocessing gives, e.g. pixels and a mask)."""
    clip: VideoClip | None = None
    cut: int = 0
    """Tokens cut from the end to fit `max_length` (0: none)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Items a dataset could not use before this one (media or item -> why), so that whoever collates the batch (the
    main process, whatever the number of data-loading workers) can count them."""


class TooLongError(ValueError):
    """An example cannot fit `max_length` without cutting into its visual tokens (or a prompt is too long)."""


class VideoLLMProcessor:
    """Everything between files and tensors for one video LLM (it is `model.processor`)."""

    def __init__(
        self,
        *,
        tokenizer: Any,
        template: ChatTemplate,
        visual_token: str,
        visual_token_id: int,
        transforms: Mapping[str, ImageTransform | Callable[..., Any]],
        sampling: FrameSampling,
        visual_ids: Callable[[int], list[int]],
        ignored_ids: set[int] | None = None,
        max_length: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.visual_token = visual_token
        self.visual_token_id = visual_token_id
        self.transforms = dict(transforms)
        self.sampling = sampling
        self.visual_ids = visual_ids
        self.ignored_ids = set(ignored_ids or ()) | {visual_token_id}
        self.max_length = max_length
        self._bos = self._leading_bos(tokenizer)
        self.seen: Counter[str] = Counter()  # what collating has met: examples, cut ones, clips with repeated frames
        self.skipped: dict[str, str] = {}

    @staticmethod
    def _leading_bos(tokenizer: Any) -> list[int]:
        """The BOS id if this tokenizer puts one in front of text by default (Llama-style), else nothing."""
        bos = tokenizer.bos_token_id
        if bos is None:
            return []
        ids = tokenizer("a").input_ids
        return [bos] if ids and ids[0] == bos else []

    # -- media ------------------------------------------------------------------------------------------------------

    def read(self, path: str | os.PathLike[str]) -> VideoClip:
        """Decode and sample a video (or read an image) the way this model expects."""
        s = self.sampling
        return read_visual(path, num_frames=s.num_frames, fps=s.fps, max_frames=s.max_frames)

    def pixels(self, clip: VideoClip) -> dict[str, Any]:
        """Each encoder's preprocessing applied to the clip's frames: `{key: [T, 3, S, S]}` (a preprocessing with a
        `clip_pixels(clip)` method gets the whole clip, e.g. to use landmarks stored with it)."""
        return {
            key: transform.clip_pixels(clip) if hasattr(transform, "clip_pixels") else transform(clip.frames)
            for key, transform in self.transforms.items()
        }

    # -- text -------------------------------------------------------------------------------------------------------

    def _with_placeholder(self, turns: Sequence[tuple[str, str]], has_visual: bool) -> list[tuple[str, str]]:
        turns = [(normalise_role(role), text) for role, text in turns]
        mentions = sum(text.count(self.visual_token) for _, text in turns)
        if not has_visual:
            if mentions:
                raise ValueError(f"the conversation mentions {self.visual_token} but no video or image was given")
            return turns
        if mentions > 1:
            raise ValueError(f"the conversation mentions {self.visual_token} {mentions} times; one video per sample")
        if mentions == 0:  # LLaVA's convention: the video goes in front of the first user message
            index = next((i for i, (role, _) in enumerate(turns) if role == "user"), None)
            if index is None:
                raise ValueError("a conversation needs a user turn")
            role, text = turns[index]
            turns[index] = (role, f"{self.visual_token}\n{text}")
        return turns

    def encode(
        self,
        turns: Sequence[tuple[str, str]],
        clip: VideoClip | None = None,
        *,
        for_generation: bool = False,
        pixel_values: dict[str, Any] | None = None,
    ) -> Example:
        """Tokenise a conversation (`(role, text)` turns); labels mark only the assistant's words (and the EOS).

        With `for_generation`, the prompt ends with the assistant prefix and labels are all ignored. `pixel_values`
        (what `pixels(clip)` gave before) skips preprocessing the clip again. Visual and
        delimiter positions never carry a label, wherever the marker sits. A training example longer than
        `max_length` is cut from the end (`example.cut` says by how much); one whose visual tokens would be cut, or
        a prompt for generation that is too long, raises `TooLongError`.
        """
        turns = self._with_placeholder(turns, clip is not None)
        segments = self.template.render(turns, add_generation_prompt=for_generation)
        ids: list[int] = list(self._bos)
        labels: list[int] = [IGNORE_INDEX] * len(ids)
        visual = self.visual_ids(clip.num_frames) if clip is not None else []
        for segment in segments:
            piece = self.tokenizer(segment.text, add_special_tokens=False).input_ids
            piece = self._expand_visual(piece, visual)
            ids += piece
            labels += piece if segment.target else [IGNORE_INDEX] * len(piece)
        eos = self.tokenizer.eos_token_id
        if not for_generation and eos is not None and segments and segments[-1].target:
            ids.append(eos)
            labels.append(eos)
        labels = [
            IGNORE_INDEX if token in self.ignored_ids else label for token, label in zip(ids, labels, strict=True)
        ]
        cut = self._overflow(ids, for_generation)
        if cut:
            ids, labels = ids[:-cut], labels[:-cut]
            if all(label == IGNORE_INDEX for label in labels):
                raise TooLongError(
                    f"cut to max_length ({self.max_length}), the example keeps none of its answer tokens"
                )
        if clip is None:
            pixel_values = {}
        elif pixel_values is None:
            pixel_values = self.pixels(clip)
        return Example(ids, labels, pixel_values, clip, cut)

    def _overflow(self, ids: list[int], for_generation: bool) -> int:
        if self.max_length is None or len(ids) <= self.max_length:
            return 0
        if for_generation:
            raise TooLongError(f"the prompt takes {len(ids)} tokens, more than max_length ({self.max_length})")
        last_visual = max((i for i, token in enumerate(ids) if token in self.ignored_ids), default=-1)
        if last_visual >= self.max_length:
            raise TooLongError(
                f"the example takes {len(ids)} tokens and its visual tokens end at {last_visual + 1}, past "
                f"max_length ({self.max_length}); use fewer frames or a longer max_length"
            )
        return len(ids) - self.max_length

    def _expand_visual(self, piece: list[int], visual: list[int]) -> list[int]:
        if self.visual_token_id not in piece:
            return piece
        index = piece.index(self.visual_token_id)
        return piece[:index] + list(visual) + piece[index + 1 :]

    # -- batches ----------------------------------------------------------------------------------------------------

    def collate(self, examples: Sequence[Example], *, padding_side: str = "right") -> dict[str, Any]:
        """Pad a list of examples into a batch. Right padding for training, left for generation."""
        if not examples:
            raise ValueError("cannot collate an empty batch")
        longest = max(len(e.input_ids) for e in examples)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(examples), longest), pad, dtype=torch.long)
        labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(examples), longest), dtype=torch.long)
        for row, example in enumerate(examples):
            length = len(example.input_ids)
            span = slice(longest - length, longest) if padding_side == "left" else slice(0, length)
            input_ids[row, span] = torch.tensor(example.input_ids)
            labels[row, span] = torch.tensor(example.labels)
            attention[row, span] = 1
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        visual = [e for e in examples if e.pixel_values]  # text-only examples may share the batch (as in LLaVA)
        if visual:
            keys = sorted({key for e in visual for key in e.pixel_values})
            batch["pixel_values"] = {key: [e.pixel_values[key] for e in visual] for key in keys}
        return batch

    def __call__(self, examples: Sequence[Example]) -> dict[str, Any]:
        """Collate for training (a `DataLoader`'s `collate_fn`); counts what the examples report (see `report`)."""
        for example in examples:
            self.seen["examples"] += 1
            self.seen["cut"] += bool(example.cut)
            self.seen["repeated"] += bool(example.clip is not None and example.clip.repeated)
            self.skipped.update(example.skipped)
        return self.collate(examples)

    def report(self) -> list[str]:
        """One line per kind of problem among the examples collated so far (then the counts start again)."""
        lines = []
        if self.skipped:
            skipped = sorted(self.skipped)[:5]
            lines.append(f"{len(self.skipped)} item(s) skipped (unreadable or too long): {skipped}")
        if self.seen["cut"]:
            lines.append(
                f"{self.seen['cut']} of {self.seen['examples']} example(s) cut to max_length {self.max_length}"
            )
        if self.seen["repeated"]:
            lines.append(
                f"{self.seen['repeated']} of {self.seen['examples']} example(s) with repeated frames (a video shorter "
                f"than the frames sampled from it)"
            )
        self.seen.clear()
        self.skipped = {}
        return lines
