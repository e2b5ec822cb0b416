"""Small word-level tokenizers trained on a corpus: the tokenizer of tiny demo and test LLMs (no hub needed)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from omnimm.deps import require

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


def train_word_tokenizer(texts: Iterable[str], *, extra_tokens: Sequence[str] = (), lowercase: bool = True) -> Any:
    """A `PreTrainedTokenizerFast` whose vocabulary is every word and punctuation mark in `texts`.

    Words split on whitespace and punctuation; `extra_tokens` (e.g. `<video>`, chat markers) stay whole. Decoding
    joins words with spaces. Save it with `.save_pretrained(folder)` and point `hf/causal-lm`'s `tokenizer` there.
    """
    tokenizers = require("tokenizers", extra="video", purpose="training a tokenizer")
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = tokenizers.Tokenizer(models.WordLevel(unk_token="<unk>"))
    if lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins with spaces, glues nothing: word-level output
    special = [*SPECIAL_TOKENS, *extra_tokens]
    trainer = trainers.WordLevelTrainer(special_tokens=special, min_frequency=1)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return _as_transformers(tokenizer, extra_tokens)


def _as_transformers(tokenizer: Any, extra_tokens: Sequence[str]) -> Any:
    transformers = require("transformers", extra="video", purpose="a tokenizer")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=list(extra_tokens),
    )


BYTES = "bytes"
"""The `tokenizer` value that asks for `byte_tokenizer()`: no files needed."""


def byte_tokenizer(extra_tokens: Sequence[str] = ()) -> Any:
    """A byte-level tokenizer with no training and no files: every UTF-8 byte is a token (plus the specials).

    Sequences are long, but any text round-trips; made for tiny test and inspection models.
    """
    require("tokenizers", extra="video", purpose="a byte tokenizer")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS, *sorted(alphabet)])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return _as_transformers(tokenizer, extra_tokens)
