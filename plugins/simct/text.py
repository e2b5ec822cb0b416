"""Tokenisation for English and Chinese (and text mixing both)."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal

Segmentation = Literal["char", "jieba"]

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_CJK_CHAR = re.compile(f"[{_CJK}]")
# Latin words: letters and digits, as rouge-score keeps them; every CJK character is a token of its own.
_WORDS = re.compile(f"[a-z0-9]+|[{_CJK}]")
_ALL_CJK = re.compile(f"[{_CJK}]+")


def has_cjk(text: str) -> bool:
    return _CJK_CHAR.search(text) is not None


def words(text: str, segmentation: Segmentation = "char") -> list[str]:
    """Lower-cased word tokens: `[a-z0-9]+` runs (rouge-score's definition for English) and Chinese characters,
    one per token, or jieba words (`segmentation="jieba"`)."""
    lowered = text.lower()
    if segmentation == "jieba" and has_cjk(lowered):
        return [token for piece in _jieba_cut(lowered) for token in _pieces(piece)]
    return _WORDS.findall(lowered)


def _pieces(piece: str) -> list[str]:
    """A jieba word made of Chinese characters stays whole; anything else splits like `words`."""
    return [piece] if _ALL_CJK.fullmatch(piece) else _WORDS.findall(piece)


@lru_cache(maxsize=1)
def _jieba() -> object:
    from omnimm.deps import require

    jieba = require("jieba", extra="simct", purpose="Chinese word segmentation")
    jieba.setLogLevel(60)  # quiet: jieba prints its dictionary loading on stderr
    return jieba


def _jieba_cut(text: str) -> list[str]:
    return list(_jieba().cut(text))  # type: ignore[attr-defined]


@lru_cache(maxsize=2)
def bleu_tokenizer(chinese: bool) -> object:
    """sacreBLEU's own tokenizers, so BLEU here is sacreBLEU's BLEU: `13a` (English), `zh` (Chinese)."""
    from omnimm.deps import require

    require("sacrebleu", extra="simct", purpose="BLEU tokenisation")
    if chinese:
        from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

        return TokenizerZh()
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()
