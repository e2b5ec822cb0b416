"""What answers a request: a `Backend` prepares one conversation (off the event loop) and generates for a batch of
prepared ones that share their options. `VideoLLMBackend` serves a saved video/image LLM; plugins add other modes
(e.g. a character that answers in role) through the `omnimm_serve_modes` hook."""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from omnimm.errors import MediaError
from omnimm.serve.media import Conversation, Media, media_file
from omnimm.serve.schemas import APIError, ChatRequest

Sink = Callable[[str], None]
"""Receives the reply's text as it grows (one delta per call), from the generating thread."""

Cancelled = Callable[[], bool]
"""True once nobody waits for any row of the batch (every client timed out or went away): stop generating."""


@dataclass(frozen=True)
class GenerationOptions:
    """The request's generation settings; requests with equal options may share one `generate` call."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @classmethod
    def from_request(cls, request: ChatRequest, default_max_tokens: int) -> GenerationOptions:
        return cls(
            max_tokens=request.new_tokens(default_max_tokens),
            temperature=request.temperature or 0.0,
            top_p=request.top_p if request.top_p is not None else 1.0,
            stop=request.stops(),
            seed=request.seed,
        )


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    extra: dict[str, Any] = field(default_factory=dict)
    """Additions under the response's `omnimm` key (e.g. the scenes a character's reply drew on)."""


class Backend(Protocol):
    """What `omnimm serve` needs from a model (or a mode a plugin adds)."""

    name: str
    mode: str
    max_batch: int
    """1 when the model cannot answer several conversations in one call."""

    def prepare(self, conversation: Conversation) -> Any:
        """Read the media and tokenise (runs in a worker thread); `APIError` for what the request got wrong."""

    def generate(
        self,
        prepared: Sequence[Any],
        options: GenerationOptions,
        sinks: Sequence[Sink | None],
        cancelled: Cancelled | None = None,
    ) -> list[Completion]:
        """Answer each prepared conversation; `sinks[i]`, when given, receives row i's text as it is generated.
        `cancelled()`, when given, turns true once no row is awaited: a backend should stop early where it can."""


class StopFilter:
    """Passes text on as it grows, holding back what may be the start of a stop string and cutting at one."""

    def __init__(self, stops: Sequence[str], sink: Sink | None) -> None:
        self.stops = [s for s in stops if s]
        self.sink = sink
        self.sent = ""
        self.shown = ""
        self.stopped = False

    def update(self, text: str) -> None:
        """`text`: the whole reply so far."""
        if self.stopped:
            return
        cut = cut_at_stops(text, self.stops)
        if cut != text:
            self.stopped = True
            text = cut
        else:
            text = text[: len(text) - max((_overlap(text, s) for s in self.stops), default=0)]
        if text.startswith(self.sent) and len(text) > len(self.sent):
            if self.sink is not None:
                self.sink(text[len(self.sent) :])
            self.sent = text

    def write(self, delta: str) -> None:  # the stream ReplyStreamer writes to
        self.update(self.shown + delta)
        self.shown += delta

    def flush(self) -> None:
        pass


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    positions = [text.index(s) for s in stops if s and s in text]
    return text[: min(positions)] if positions else text


def _overlap(text: str, stop: str) -> int:
    for size in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:size]):
            return size
    return 0


class _BatchStreamer:
    """A transformers streamer for a batch: row r's new tokens go to its own `ReplyStreamer` (which hides the
    template's stop string), whose text goes through that row's `StopFilter`."""

    def __init__(self, model: Any, filters: Sequence[StopFilter]) -> None:
        from omnimm.videollm.stream import ReplyStreamer

        self.rows = [ReplyStreamer(model, f) if f.sink is not None else None for f in filters]  # type: ignore[arg-type]

    def put(self, value: Any) -> None:
        if value.ndim == 2 and value.shape[1] == 0:  # the (empty) prompt ids of an inputs_embeds call
            return
        for row, streamer in enumerate(self.rows):
            if streamer is not None:
                streamer.put(value[row : row + 1])

    def end(self) -> None:
        pass


class _StopStrings:
    """Stopping criterion: a row is done once its decoded new text holds one of the request's stop strings."""

    def __init__(self, stops: Sequence[str], tokenizer: Any, prompt_length: int) -> None:
        self.stops = list(stops)
        self.tokenizer = tokenizer
        self.start = prompt_length

    def __call__(self, input_ids: Any, scores: Any, **_: Any) -> Any:
        import torch

        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)


class _Abandoned:
    """Stopping criterion: every row is done once nobody waits for the batch."""

    def __init__(self, cancelled: Cancelled) -> None:
        self.cancelled = cancelled

    def __call__(self, input_ids: Any, scores: Any, **_: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.cancelled(), dtype=torch.bool, device=input_ids.device)


@contextlib.contextmanager
def _seeded(seed: int | None, device: Any) -> Iterator[None]:
    """Sample from `seed` without touching the process's random state (other requests' sampling goes on as if this
    request had not been served)."""
    if seed is None:
        yield
        return
    import torch

    devices = [device] if getattr(device, "type", None) == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@dataclass
class _Prepared:
    example: Any
    prompt_tokens: int


class VideoLLMBackend:
    """A saved `omnimm/video-llm` (valley, favchat, ...): its processor samples the frames and applies its chat
    template; concurrent requests with the same options become one left-padded `generate` call."""

    mode = "model"

    def __init__(self, model: Any, name: str, *, max_batch: int = 8) -> None:
        self.model = model.eval()
        self.name = name
        self.max_batch = max_batch

    def read(self, media: Media) -> Any:
        """The clip the model would see (frames sampled as it samples them)."""
        with media_file(media) as path:
            try:
                return self.model.processor.read(path)
            except (MediaError, OSError, ValueError) as error:
                raise APIError(400, f"{media.field}: {_one_line(error)}", param=media.field) from None

    def prepare(self, conversation: Conversation) -> _Prepared:
        clip = self.read(conversation.media) if conversation.media is not None else None
        try:
            example = self.model.processor.encode(conversation.turns, clip, for_generation=True)
        except ValueError as error:  # TooLongError, a misplaced system message, a second <video> marker
            raise APIError(400, f"messages: {_one_line(error)}", param="messages") from None
        return _Prepared(example, len(example.input_ids))

    def generate(
        self,
        prepared: Sequence[_Prepared],
        options: GenerationOptions,
        sinks: Sequence[Sink | None],
        cancelled: Cancelled | None = None,
    ) -> list[Completion]:
        model = self.model
        batch = model.processor.collate([p.example for p in prepared], padding_side="left")
        batch.pop("labels")
        kwargs: dict[str, Any] = {"max_new_tokens": options.max_tokens}
        if options.temperature > 0:
            kwargs.update(do_sample=True, temperature=options.temperature, top_p=options.top_p)
        criteria: list[Any] = [_Abandoned(cancelled)] if cancelled is not None else []
        if options.stop:
            criteria.append(_StopStrings(options.stop, model.llm.tokenizer, 0))
        if criteria:
            kwargs["stopping_criteria"] = criteria
        filters = [StopFilter(options.stop, sink) for sink in sinks]
        if any(sink is not None for sink in sinks):
            kwargs["streamer"] = _BatchStreamer(model, filters)
        with _seeded(options.seed, model._device()):
            new = model.generate(**batch, **kwargs)
        return [self._completion(new[row], p, options, filters[row]) for row, p in enumerate(prepared)]

    def _completion(self, ids: Any, prepared: _Prepared, options: GenerationOptions, stream: StopFilter) -> Completion:
        model = self.model
        tokens = [int(i) for i in ids]
        eos = model.llm.tokenizer.eos_token_id
        if eos is not None and eos in tokens:
            tokens = tokens[: tokens.index(eos) + 1]
        pad = model.llm.tokenizer.pad_token_id
        while tokens and pad is not None and pad != eos and tokens[-1] == pad:  # rows that finished early
            tokens.pop()
        decoded = model.decode(tokens)
        text = cut_at_stops(decoded, options.stop)
        stopped = text != decoded or (eos is not None and eos in tokens) or _has_template_stop(model, tokens)
        stream.update(text)  # whatever the final, cleaned reply adds to what was streamed
        return Completion(
            text=text,
            finish_reason="stop" if stopped or len(tokens) < options.max_tokens else "length",
            prompt_tokens=prepared.prompt_tokens,
            completion_tokens=len(tokens),
        )

    def frames(self, media: Media, *, width: int = 160) -> dict[str, Any]:
        """The sampled frames as small PNG data URLs, with their times (what the page shows before asking)."""
        from PIL import Image

        clip = self.read(media)
        images = []
        for frame in clip.frames:
            image = Image.fromarray(frame)
            image.thumbnail((width, width))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            images.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
        return {
            "frames": images,
            "timestamps": [round(float(t), 3) for t in clip.timestamps],
            "total_frames": clip.total_frames,
            "repeated": len(clip.repeated),
        }


def _has_template_stop(model: Any, tokens: list[int]) -> bool:
    from omnimm.videollm.stream import _contains

    return _contains(tokens, list(model._stop_sequence()))


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
