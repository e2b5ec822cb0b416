"""`omnimm serve`: requests/s and p50/p99 latency with 1, 4 and 16 concurrent clients, batched vs one at a time.

The valley demo's model (its config and tokenizer, untrained: the speed does not depend on the weights) is served
twice from the same folder in subprocesses: `--max-batch 16` (concurrent requests with the same options share one
`generate` call) and `--max-batch 1` (each request generates alone: what a server without batching does). Every
request sends one of the demo's clips as a data URL and asks for exactly 16 new tokens (`stop` never matches, so
every reply has the same length); clients are threads with their own keep-alive HTTP connection.

    python benchmarks/run.py serve            # writes benchmarks/results/serve.json
"""

from __future__ import annotations

import base64
import os
import queue
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

OMNIMM = Path(sys.executable).with_name("omnimm")
CONCURRENCY = (1, 4, 16)
NEW_TOKENS = 16


def start(folder: Path, *args: str) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIMM_")}
    process = subprocess.Popen(
        [str(OMNIMM), "serve", str(folder), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            found = re.search(r"on (http://127\.0\.0\.1:\d+)", lines.get(timeout=1))
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        if found:
            return process, found.group(1)
    process.kill()
    raise RuntimeError("omnimm serve did not start")


def load(url: str, clip: Path, clients: int, requests: int) -> dict[str, Any]:
    import httpx

    video = "data:video/x-matroska;base64," + base64.b64encode(clip.read_bytes()).decode("ascii")
    local = threading.local()

    def one(number: int) -> tuple[float, int]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=300)
        body = {
            "model": "valley",
            "max_tokens": NEW_TOKENS,
            "stop": ["never-in-a-reply"],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "video_url", "video_url": {"url": video}},
                        {"type": "text", "text": f"what colour is the shape? ({number})"},
                    ],
                }
            ],
        }
        began = time.perf_counter()
        answer = local.client.post(f"{url}/v1/chat/completions", json=body)
        answer.raise_for_status()
        data = answer.json()
        if data["usage"]["completion_tokens"] != NEW_TOKENS:
            raise RuntimeError(f"expected {NEW_TOKENS} tokens, got {data['usage']}")
        return time.perf_counter() - began, data["omnimm"]["batch_size"]

    for warm in range(2):
        one(-1 - warm)
    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - began
    latencies = sorted(r[0] for r in results)
    return {
        "requests_per_s": requests / wall,
        "p50_s": statistics.median(latencies),
        "p99_s": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        "mean_batch": statistics.mean(r[1] for r in results),
    }


def measure(folder: Path, clip: Path, args: list[str], quick: bool) -> dict[int, dict[str, Any]]:
    process, url = start(folder, *args)
    try:
        # p99 needs enough requests to mean something: at least 64 per setting (16 with --quick)
        return {c: load(url, clip, c, max(16 if quick else 64, (2 if quick else 8) * c)) for c in CONCURRENCY}
    finally:
        process.terminate()
        process.wait(timeout=30)


def run(quick: bool = False) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        from omnimm_plugins.valley.demo import save_untrained_model

        folder, clip = save_untrained_model(Path(tmp))
        batched = measure(folder, clip, ["--max-batch", "16", "--batch-wait-ms", "10"], quick)
        single = measure(folder, clip, ["--max-batch", "1"], quick)
    rows = []
    for clients in CONCURRENCY:
        ours, reference = batched[clients], single[clients]
        note = f"mean batch {ours['mean_batch']:.1f} vs 1"
        for key, unit, label in (
            ("requests_per_s", "requests/s", "throughput"),
            ("p50_s", "s", "p50 latency"),
            ("p99_s", "s", "p99 latency"),
        ):
            rows.append(
                {
                    "benchmark": f"{label}, {clients} concurrent client(s), {NEW_TOKENS} new tokens, 8-frame clip",
                    "ours_label": "omnimm serve --max-batch 16",
                    "reference_label": "omnimm serve --max-batch 1 (one request per generate call)",
                    "ours": ours[key],
                    "reference": reference[key],
                    "ratio": ours[key] / reference[key],
                    "unit": unit,
                    "notes": note + ("; ratio > 1 is faster" if key == "requests_per_s" else "; ratio < 1 is faster"),
                }
            )
    return rows
