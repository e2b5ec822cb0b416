"""`recse/contrastive`: a sentence encoder trained contrastively, with recse's reshaped view as an optional extra.

Frameworks (`framework`):

- `simcse`: unsupervised SimCSE. The batch goes through the encoder twice in one call (dropout makes two views);
  InfoNCE over cosine / tau with in-batch negatives.
- `repeat`: a discrete augmentation, ESimCSE-style word repetition: `views - 1` copies of each sentence with some
  tokens duplicated, each its own forward pass; InfoNCE of the anchor against every copy, averaged.

`reshape` attaches to either: the anchor pass's token features become an interaction matrix, embedded by a small
tower (`recse/reshape`), and an inter-view InfoNCE between the projected sentence embedding and that view is added
with weight `reshape_weight` (lambda). The encoder gets gradients from both losses, the tower from the second.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from omnimm_plugins.recse.configs import ContrastiveConfig
from omnimm_plugins.recse.reshape import ReshapeView


def info_nce(anchors: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of each anchor against all positives in the batch (its own is the target), cosine / tau."""
    similarities = nn.functional.cosine_similarity(anchors.unsqueeze(1), positives.unsqueeze(0), dim=-1) / temperature
    targets = torch.arange(len(anchors), device=anchors.device)
    return nn.functional.cross_entropy(similarities, targets)


class ContrastiveModel(nn.Module):
    """`forward(input_ids, attention_mask, [view_input_ids, view_attention_mask]) -> {loss, intra, inter}`."""

    def __init__(self, config: ContrastiveConfig) -> None:
        super().__init__()
        from omnimm.registry import encoders

        self.config = config
        self.encoder = encoders.build(config.encoder)
        for needed in ("model", "tokenizer", "pool"):
            if not hasattr(self.encoder, needed):
                raise TypeError(f"recse trains transformers sentence encoders (hf/sentence-encoder); it lacks {needed}")
        hidden = int(self.encoder.out_dim)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh()) if config.train_mlp else None
        self.reshape: ReshapeView | None = None
        self.reshape_projection: nn.Module | None = None
        if config.reshape is not None:
            self.reshape = ReshapeView(config.reshape, hidden_size=hidden)
            projection = nn.Linear(hidden, self.reshape.out_dim)
            tanh = config.reshape_projection == "linear-tanh"
            self.reshape_projection = nn.Sequential(projection, nn.Tanh()) if tanh else projection

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the randomly initialised reshape tower and projection (trained at their own rate)."""
        if self.reshape is None or self.reshape_projection is None:
            return []
        return [*self.reshape.parameters(), *self.reshape_projection.parameters()]

    @property
    def tokenizer(self) -> Any:
        return self.encoder.tokenizer

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, tokens: bool) -> tuple[Any, Any]:
        want_inputs = tokens and self.config.reshape is not None and self.config.reshape.source == "embeddings"
        output = self.encoder.model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=want_inputs
        )
        sentence = self.encoder.pool(output, attention_mask)
        features = None
        if tokens and self.config.reshape is not None:
            features = output.hidden_states[0] if want_inputs else output.last_hidden_state
        return sentence, features

    def _head(self, sentence: torch.Tensor) -> torch.Tensor:
        return self.mlp(sentence) if self.mlp is not None else sentence

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        view_input_ids: torch.Tensor | None = None,
        view_attention_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        tau = self.config.temperature
        batch = len(input_ids)
        if self.config.framework == "simcse":
            both, features = self._encode(
                torch.cat([input_ids, input_ids]), torch.cat([attention_mask, attention_mask]), tokens=True
            )
            anchor = both[:batch]
            intra = info_nce(self._head(anchor), self._head(both[batch:]), tau)
            if features is not None:
                features = features[:batch]
        else:
            if view_input_ids is None or view_attention_mask is None:
                raise ValueError("framework 'repeat' needs view_input_ids / view_attention_mask (see RecseCollator)")
            anchor, features = self._encode(input_ids, attention_mask, tokens=True)
            losses = []
            for ids, mask in zip(view_input_ids, view_attention_mask, strict=True):
                view, _ = self._encode(ids, mask, tokens=False)
                losses.append(info_nce(self._head(anchor), self._head(view), tau))
            intra = torch.stack(losses).mean()
        result = {"intra": intra.detach()}
        loss = intra
        if self.reshape is not None and self.reshape_projection is not None:
            view = self.reshape(features, attention_mask)
            projected = self.reshape_projection(anchor)
            tau_view = self.config.reshape_temperature or tau
            inter = 0.5 * (info_nce(projected, view, tau_view) + info_nce(view, projected, tau_view))
            loss = loss + self.config.reshape_weight * inter
            result["inter"] = inter.detach()
        result["loss"] = loss
        return result


class RecseCollator:
    """Tokenises a batch of `{"text": ...}`; for `repeat`, adds `views - 1` word-repetition copies."""

    def __init__(self, tokenizer: Any, config: ContrastiveConfig, *, max_length: int, seed: int = 0) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.max_length = max_length
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, rows: list[dict[str, str]]) -> dict[str, torch.Tensor]:
        texts = [row["text"] for row in rows]
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        if self.config.framework == "repeat":
            views = [
                self._repeat(encoded["input_ids"], encoded["attention_mask"]) for _ in range(self.config.views - 1)
            ]
            width = max(v[0].shape[1] for v in views)
            batch["view_input_ids"] = torch.stack([_pad(v[0], width, self.tokenizer.pad_token_id) for v in views])
            batch["view_attention_mask"] = torch.stack([_pad(v[1], width, 0) for v in views])
        return batch

    def _repeat(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Duplicate a random subset of each sentence's inner tokens (special tokens at both ends are kept once)."""
        rows = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            tokens = ids[mask.bool()].tolist()
            inner = len(tokens) - 2
            count = int(
                torch.randint(0, max(1, int(self.config.repeat_rate * inner)) + 1, (1,), generator=self.generator)
            )
            chosen = set(torch.randperm(max(inner, 0), generator=self.generator)[:count].add(1).tolist())
            rows.append([t for i, t in enumerate(tokens) for _ in range(2 if i in chosen else 1)])
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=input_ids.dtype)
        mask = torch.zeros((len(rows), width), dtype=attention_mask.dtype)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=input_ids.dtype)
            mask[i, : len(row)] = 1
        return ids, mask


def _pad(tensor: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=value)
