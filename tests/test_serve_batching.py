"""The serving queue in-process, with the valley demo's real (untrained) model: abandoned batches stop generating,
seeded requests are answered alone and leave the process's random state as it was."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import pytest
import torch

from omnimm_plugins.valley.demo import save_untrained_model

pytest.importorskip("fastapi", reason="omnimm serve needs the serve extra")

from omnimm.serve.backends import GenerationOptions, VideoLLMBackend
from omnimm.serve.batching import Batcher
from omnimm.serve.media import read_conversation
from omnimm.serve.schemas import parse_request


@pytest.fixture(scope="module")
def backend_and_prompt(tmp_path_factory) -> tuple[VideoLLMBackend, object]:
    from omnimm.videollm.model import VideoLLM

    folder, clip = save_untrained_model(tmp_path_factory.mktemp("valley-demo"))
    backend = VideoLLMBackend(VideoLLM.from_pretrained(folder), "valley")
    url = "data:video/x-matroska;base64," + base64.b64encode(Path(clip).read_bytes()).decode("ascii")
    parts = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "what colour?"}]
    request = parse_request({"model": "valley", "messages": [{"role": "user", "content": parts}]})
    return backend, backend.prepare(read_conversation(request.messages, None))


def test_a_batch_nobody_waits_for_stops_generating(backend_and_prompt):
    backend, prepared = backend_and_prompt
    options = GenerationOptions(max_tokens=48)
    whole = backend.generate([prepared], options, [None])[0]
    assert whole.completion_tokens == 48  # this prompt runs to the length limit when nobody stops it
    batcher = Batcher(backend, max_batch=1)
    try:
        started = threading.Event()
        ticket = batcher.submit(prepared, options, sink=lambda _: started.set())
        assert started.wait(60)
        assert ticket.cancel() is False  # already generating: it cannot be dropped, only abandoned
        cut = ticket.result(timeout=60)
    finally:
        batcher.close()
    assert ticket.abandoned.is_set()
    assert cut.completion_tokens < whole.completion_tokens
    assert whole.text.startswith(cut.text)


def test_a_waiting_request_that_is_cancelled_is_never_generated(backend_and_prompt):
    backend, prepared = backend_and_prompt
    batches: list[int] = []
    batcher = Batcher(backend, max_batch=1, on_batch=batches.append)
    try:
        release = threading.Event()
        first = batcher.submit(prepared, GenerationOptions(max_tokens=24), sink=lambda _: release.wait(60))
        second = batcher.submit(prepared, GenerationOptions(max_tokens=24))
        assert second.cancel() is True
        release.set()
        assert first.result(timeout=60).completion_tokens == 24
    finally:
        batcher.close()
    assert batches == [1]  # only the first request reached the model


def test_seeded_requests_are_answered_alone_the_same_way_and_keep_the_random_state(backend_and_prompt):
    backend, prepared = backend_and_prompt
    sampled = GenerationOptions(max_tokens=12, temperature=1.5, seed=7)
    batcher = Batcher(backend, max_batch=8, wait_s=0.2)
    try:
        torch.manual_seed(123)
        expected_next = torch.rand(3)
        torch.manual_seed(123)
        tickets = [batcher.submit(prepared, sampled) for _ in range(3)]
        others = [batcher.submit(prepared, GenerationOptions(max_tokens=12, temperature=1.5, seed=s)) for s in (1, 2)]
        replies = [t.result(timeout=120) for t in tickets]
        other_replies = [t.result(timeout=120) for t in others]
        after = torch.rand(3)
    finally:
        batcher.close()
    assert len({r.text for r in replies}) == 1  # same seed, same conversation: the same reply
    assert all(r.extra["batch_size"] == 1 for r in [*replies, *other_replies])
    assert all(r.text != replies[0].text for r in other_replies)  # other seeds sample other replies
    assert torch.equal(after, expected_next)  # the process's own random stream did not move
