"""A bounded queue and one generating thread: requests waiting together with equal options share a `generate` call.

The thread takes the oldest waiting request, waits up to `wait_s` for others with the same options (up to
`max_batch`), and generates for them at once; requests with other options wait for the next round, in order. A
request with a `seed` is answered alone, so that its reply depends on its seed and conversation only, not on which
requests happened to share its batch. A full queue refuses at once (`APIError` 503), so a burst never grows memory
or latency without bound; a batch nobody waits for any more (every client timed out or left) stops generating.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from omnimm.serve.backends import Backend, Completion, GenerationOptions, Sink
from omnimm.serve.schemas import APIError

log = logging.getLogger("omnimm.serve")


class Ticket(Future[Completion]):
    """A queued request's `Completion`. `cancel()` drops a request still waiting; on one already generating it
    marks it abandoned, and a batch whose every request is abandoned stops early."""

    def __init__(self) -> None:
        super().__init__()
        self.abandoned = threading.Event()

    def cancel(self) -> bool:
        self.abandoned.set()
        return super().cancel()


@dataclass
class Job:
    prepared: Any
    options: GenerationOptions
    sink: Sink | None
    future: Ticket = field(default_factory=Ticket)
    queued_at: float = field(default_factory=time.monotonic)


class Batcher:
    """Runs `backend.generate` on one thread for batches of queued jobs. `on_batch(size)` is told each batch's size."""

    def __init__(
        self,
        backend: Backend,
        *,
        max_batch: int = 8,
        max_queue: int = 64,
        wait_s: float = 0.01,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.backend = backend
        self.max_batch = max(1, min(max_batch, backend.max_batch))
        self.max_queue = max_queue
        self.wait_s = wait_s
        self.on_batch = on_batch
        self.queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="omnimm-serve-generate", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        with self._cond:
            return len(self.queue)

    def submit(self, prepared: Any, options: GenerationOptions, sink: Sink | None = None) -> Ticket:
        """Queue one request; its future gives the `Completion` (cancel it when the answer is no longer wanted)."""
        job = Job(prepared, options, sink)
        with self._cond:
            if self._closed:
                raise APIError(503, "the server is shutting down", code="unavailable")
            if len(self.queue) >= self.max_queue:
                raise APIError(
                    503, f"the server is busy ({self.max_queue} requests waiting); retry later", code="queue_full"
                )
            self.queue.append(job)
            self._cond.notify()
        return job.future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    # -- the generating thread --------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            jobs = self._next_batch()
            if jobs is None:
                return
            if jobs:
                self._generate(jobs)

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self.queue and not self._closed:
                self._cond.wait()
            if self._closed:
                for job in self.queue:
                    job.future.cancel()
                return None
            first = self.queue.popleft()
            if not first.future.set_running_or_notify_cancel():
                return []  # timed out or abandoned while waiting
            jobs = [first]
            deadline = time.monotonic() + self.wait_s
            while len(jobs) < self.max_batch and first.options.seed is None:
                jobs += self._take_matching(first.options, self.max_batch - len(jobs))
                left = deadline - time.monotonic()
                if len(jobs) >= self.max_batch or left <= 0:
                    break
                self._cond.wait(left)
            return jobs

    def _take_matching(self, options: GenerationOptions, limit: int) -> list[Job]:
        taken: list[Job] = []
        for job in list(self.queue):
            if len(taken) >= limit:
                break
            if job.options == options:
                self.queue.remove(job)
                if job.future.set_running_or_notify_cancel():
                    taken.append(job)
        return taken

    def _generate(self, jobs: list[Job]) -> None:
        try:
            if self.on_batch is not None:
                self.on_batch(len(jobs))
            results = self.backend.generate(
                [j.prepared for j in jobs],
                jobs[0].options,
                [j.sink for j in jobs],
                cancelled=lambda: all(j.future.abandoned.is_set() for j in jobs),
            )
        except APIError as error:
            for job in jobs:
                job.future.set_exception(error)
        except Exception as error:  # one failed batch must not stop the server
            log.exception("generation failed for a batch of %d", len(jobs))
            failure = APIError(500, f"generation failed: {type(error).__name__}: {error}", code="generation_failed")
            for job in jobs:
                job.future.set_exception(failure)
        else:
            for job, result in zip(jobs, results, strict=True):
                result.extra.setdefault("batch_size", len(jobs))
                job.future.set_result(result)
