"""Pretrain a small BERT with masked-language modelling only, offline: the MLM-only start of the recse experiments.

    .venv/bin/python benchmarks/pretrain_mlm.py                        # STEPS steps; see mlm.json for the time
    .venv/bin/python benchmarks/pretrain_mlm.py --steps 20 --out /tmp/mlm   # a smoke run

A BertForMaskedLM built from a config (4 layers x 256 hidden x 4 heads) with all-MiniLM-L6-v2's packaged WordPiece
tokenizer, trained on tinyshakespeare speech lines and STS-B *train* sentences (every STS-B dev/test sentence removed,
see `omnimm_plugins.recse.training.load_sentences`), 15% masking by `DataCollatorForLanguageModeling`, seeded, for a
fixed number of steps (linear warm-up, then linear decay to zero): the checkpoint does not depend on the machine's
speed. It is saved once as a safetensors folder (default `~/.cache/omnimm/bench/mlm-bert`, or
`$OMNIMM_MLM_BERT`) with `mlm.json` beside the weights: size, steps, final training loss and held-out MLM loss. On
this budget the model is weak (a few million tokens seen); it is a genuinely MLM-only start, not a competitive BERT.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
STSB = SHARED / "stsb"
SCRIPT = SHARED / "tinyshakespeare" / "input.txt"
DEFAULT = Path.home() / ".cache" / "omnimm" / "bench" / "mlm-bert"
ARCHITECTURE = {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024}
SEED, BATCH, MAX_LENGTH, LEARNING_RATE, HELD_OUT, WARMUP = 0, 64, 32, 5e-4, 1000, 200
STEPS = 3000


def checkpoint_dir() -> Path:
    """Where the experiments find the checkpoint (`OMNIMM_MLM_BERT` overrides the default)."""
    return Path(os.environ.get("OMNIMM_MLM_BERT", DEFAULT))


def corpus() -> list[str]:
    from omnimm_plugins.recse.configs import SentenceSource
    from omnimm_plugins.recse.training import load_sentences

    return load_sentences(SentenceSource(stsb=str(STSB), script=str(SCRIPT)), exclude_stsb=[str(STSB)])


def masked_loss(model: Any, batch: dict[str, Any]) -> Any:
    """MLM cross-entropy computed on the masked positions only: the vocabulary projection is the costly part."""
    import torch

    hidden = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    chosen = batch["labels"] != -100
    logits = model.cls(hidden[chosen])
    return torch.nn.functional.cross_entropy(logits, batch["labels"][chosen])


def held_out_loss(model: Any, batches: list[dict[str, Any]]) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        losses = [float(masked_loss(model, b)) for b in batches]
    model.train()
    return sum(losses) / len(losses)


def pretrain(steps: int, out: Path) -> dict[str, Any]:
    import torch
    import transformers

    from omnimm.files import atomic_write_text
    from omnimm.sentence.encoder import default_model_path

    transformers.set_seed(SEED)
    tokenizer = transformers.AutoTokenizer.from_pretrained(default_model_path())
    sentences = corpus()
    random.Random(SEED).shuffle(sentences)
    held, train = sentences[:HELD_OUT], sentences[HELD_OUT:]
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=512, **ARCHITECTURE)
    model = transformers.BertForMaskedLM(config)
    collate = transformers.DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=SEED)

    def batch_of(texts: list[str]) -> dict[str, Any]:
        encoded = tokenizer(texts, truncation=True, max_length=MAX_LENGTH)
        rows = [{"input_ids": ids} for ids in encoded["input_ids"]]
        return collate(rows)

    held_batches = [batch_of(held[i : i + BATCH]) for i in range(0, len(held), BATCH)]  # masked once, fixed
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    started = time.monotonic()
    step, epoch, losses = 0, 0, []
    model.train()
    while step < steps:
        order = list(range(len(train)))
        random.Random(SEED + epoch).shuffle(order)
        for start in range(0, len(order) - BATCH + 1, BATCH):
            if step >= steps:
                break
            for group in optimizer.param_groups:  # linear warm-up, then linear decay to zero at the last step
                group["lr"] = LEARNING_RATE * min((step + 1) / WARMUP, (steps - step) / max(steps - WARMUP, 1))
            loss = masked_loss(model, batch_of([train[i] for i in order[start : start + BATCH]]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))
            step += 1
            if step % 100 == 0:
                print(f"step {step}/{steps}: loss {sum(losses[-100:]) / 100:.3f}", flush=True)
        epoch += 1
    held_loss = held_out_loss(model, held_batches)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    window = losses[-100:] or [float("nan")]
    summary = {
        "architecture": ARCHITECTURE,
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": step,
        "batch_size": BATCH,
        "max_length": MAX_LENGTH,
        "epochs_started": epoch,
        "train_sentences": len(train),
        "held_out_sentences": len(held),
        "final_train_loss_last_100_steps": sum(window) / len(window),
        "held_out_mlm_loss": held_loss,
        "held_out_perplexity": math.exp(held_loss),
        "uniform_guess_loss": math.log(tokenizer.vocab_size),
        "minutes": (time.monotonic() - started) / 60,
        "torch_threads": torch.get_num_threads(),
        "seed": SEED,
        "mlm_probability": 0.15,
        "learning_rate": LEARNING_RATE,
        "corpus": "tinyshakespeare speech lines + STS-B train sentences, STS-B dev/test sentences removed",
    }
    atomic_write_text(out / "mlm.json", json.dumps(summary, indent=1) + "\n")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS, help=f"optimizer steps of {BATCH} sentences")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint folder (default: $OMNIMM_MLM_BERT or cache)")
    args = parser.parse_args()
    out = args.out or checkpoint_dir()
    if (out / "mlm.json").is_file() and args.out is None:
        print(f"{out}: already pretrained ({json.loads((out / 'mlm.json').read_text())['steps']} steps)")
        return
    print(json.dumps(pretrain(args.steps, out), indent=1))


if __name__ == "__main__":
    main()
