"""Responses of an LLM stage to a list of prompts, as the gate's JSONL records: how scenarios are built."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


@torch.no_grad()
def respond(
    lm: Any,
    prompts: Sequence[str],
    *,
    template: Any = None,
    samples: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 32,
    seed: int = 0,
    batch_size: int = 16,
    query_type: str | None = None,
) -> list[dict[str, str]]:
    """Generate `samples` responses per prompt with an `hf/causal-lm` backbone; returns `{prompt, response, ...}` rows.

    With a chat `template` (e.g. `omnimm.llm.templates.CHATML`) each prompt is wrapped as a user turn.
    """
    tokenizer = lm.tokenizer
    tokenizer.padding_side = "left"
    generator_seed = torch.Generator().manual_seed(seed)
    rows: list[dict[str, str]] = []
    texts = [template.prompt([("user", p)]) if template is not None else p for p in prompts]
    stop = template.stop.strip() if template is not None else ""
    lm.eval()
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(list(texts[start : start + batch_size]), return_tensors="pt", padding=True)
        batch = {k: v.to(next(lm.parameters()).device) for k, v in batch.items()}
        for sample in range(samples):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator_seed)))
            options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
            if do_sample:
                options.update(temperature=temperature, top_p=top_p)
            out = lm.generate(**batch, **options)
            new = out[:, batch["input_ids"].shape[1] :]
            for offset, ids in enumerate(new):
                text = tokenizer.decode(ids, skip_special_tokens=True)
                if stop and stop in text:
                    text = text.split(stop, 1)[0]
                row = {"prompt": prompts[start + offset], "response": text.strip(), "sample": str(sample)}
                if query_type is not None:
                    row["query_type"] = query_type
                rows.append(row)
    return rows


def perturb(lm: Any, scale: float, seed: int = 0) -> None:
    """Add Gaussian noise of `scale` x each weight tensor's standard deviation, in place (a damaged checkpoint)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in lm.parameters():
            if parameter.numel() > 1:
                noise = torch.randn(parameter.shape, generator=generator).to(parameter.dtype)
                parameter.add_(noise * parameter.float().std().to(parameter.dtype) * scale)
