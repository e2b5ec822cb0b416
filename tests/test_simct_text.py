"""simct's tokenisation per script and its response-pair features, against the reference packages themselves:
sacreBLEU (`BLEU(tokenize=...)`, `sentence_chrf`), rouge-score (`RougeScorer` with its default tokenizer, or with
tokens written out by hand for CJK), NLTK's METEOR, jieba, and hand computations. Nothing here compares the code
with itself."""

from __future__ import annotations

import random

import numpy as np
import pytest

from omnimm_plugins.simct.features import FEATURES, extract, lcs_length, meteor
from omnimm_plugins.simct.text import bleu_tokenizer_name, scripts, words


class NoSynonyms:
    """Stands in for WordNet (not downloadable here): NLTK's METEOR with exact and stem stages only."""

    def synsets(self, word):
        return []


class GivenTokens:
    """A rouge-score tokenizer that returns tokens written out by hand (rouge-score's default drops non-ASCII)."""

    def __init__(self, tokens: dict[str, list[str]]):
        self.tokens = tokens

    def tokenize(self, text):
        return self.tokens[text]


# (reference, candidate, the tokenizer sacreBLEU recommends for the language, hand-written word tokens of both
# texts or None for English, where rouge-score's own tokenizer gives them)
CASES = [
    ("A plane is taking off.", "An air plane is taking off.", "13a", None),
    ("The cats were running quickly", "a cat runs quick", "13a", None),
    ("Don't stop: it's 3.5 km away!", "It is 3.5 kilometres away, don't stop.", "13a", None),
    ("Same sentence.", "Same   sentence. ", "13a", None),
    ("the the the the", "the the", "13a", None),
    ("", "not empty", "13a", None),
    ("", "", "13a", None),
    ("我爱北京天安门。", "我爱北京", "zh", (list("我爱北京天安门"), list("我爱北京"))),
    ("今天天气很好, very nice", "今天天气不错", "zh", ([*"今天天气很好", "very", "nice"], list("今天天气不错"))),
    (
        "今日はいい天気ですね。",
        "今日は天気がいいですね。",
        "ja-mecab",
        (list("今日はいい天気ですね"), list("今日は天気がいいですね")),
    ),
    (
        "東京タワーに行きました",
        "東京タワーへ行った",
        "ja-mecab",
        (list("東京タワーに行きました"), list("東京タワーへ行った")),
    ),
    (
        "iPhoneを買いました",
        "I bought an iPhone",
        "ja-mecab",
        (["iphone", *"を買いました"], ["i", "bought", "an", "iphone"]),
    ),
    (
        "나는 학교에 갑니다.",
        "나는 학교에 간다.",
        "ko-mecab",
        (list("나는학교에갑니다"), list("나는학교에간다")),
    ),
    (
        "서울은 한국의 수도입니다",
        "Seoul is the capital",
        "ko-mecab",
        (list("서울은한국의수도입니다"), ["seoul", "is", "the", "capital"]),
    ),
]


def reference_features(reference: str, candidate: str, tokenize: str, tokens) -> list[float]:
    import sacrebleu
    from nltk.translate.meteor_score import single_meteor_score
    from rouge_score import rouge_scorer
    from rouge_score import tokenize as rouge_tokenize
    from sacrebleu.metrics import BLEU

    if tokens is None:
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
        ref_words, cand_words = rouge_tokenize.tokenize(reference, None), rouge_tokenize.tokenize(candidate, None)
    else:
        ref_words, cand_words = tokens
        given = GivenTokens({reference: ref_words, candidate: cand_words})
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=given)
    rouge = scorer.score(reference, candidate)
    longest = max(len(ref_words), len(cand_words))
    return [
        rouge["rouge1"].fmeasure,
        rouge["rouge2"].fmeasure,
        rouge["rougeL"].fmeasure,
        BLEU(tokenize=tokenize, effective_order=True).sentence_score(candidate, [reference]).score / 100,
        sacrebleu.sentence_chrf(candidate, [reference]).score / 100,
        single_meteor_score(ref_words, cand_words, wordnet=NoSynonyms()),
        min(len(ref_words), len(cand_words)) / longest if longest else 1.0,
        float(" ".join(reference.split()) == " ".join(candidate.split())),
    ]


def assert_close(ours: np.ndarray, reference: np.ndarray) -> None:
    worst = np.abs(ours - reference).max(axis=0)
    assert worst.max() < 1e-9, dict(zip(FEATURES, worst.tolist(), strict=True))


def test_scripts_are_detected_per_text():
    assert scripts("A plane, 3 km.") == {"latin"}
    assert scripts("3.5 km!"[:4]) == set()  # digits and punctuation belong to no script
    assert scripts("我爱北京") == {"han"}
    assert scripts("今日はいい天気") == {"han", "kana"}
    assert scripts("コーヒー") == {"kana"}  # the prolonged-sound mark ー is Common in Unicode, Japanese in use
    assert scripts("나는 학교에") == {"hangul"}
    assert scripts("Привет, мир") == {"other"}
    assert scripts("iPhoneを買う") == {"latin", "han", "kana"}


@pytest.mark.parametrize(("reference", "candidate", "tokenize", "tokens"), CASES)
def test_each_pair_gets_the_tokenizer_sacrebleu_recommends_for_its_language(reference, candidate, tokenize, tokens):
    assert bleu_tokenizer_name(reference, candidate) == tokenize
    assert bleu_tokenizer_name(candidate, reference) == tokenize


def test_features_match_the_reference_packages_in_english_chinese_japanese_korean_and_mixed():
    pairs = [(r, c) for r, c, _, _ in CASES]
    ours = extract(pairs, workers=1)
    reference = np.array([reference_features(*case) for case in CASES])
    assert ours.shape == (len(CASES), len(FEATURES))
    assert_close(ours, reference)


def test_japanese_bleu_is_not_scored_with_the_chinese_tokenizer():
    """sacreBLEU's `zh` splits kanji but keeps kana runs whole, `13a` keeps the whole unspaced sentence as one word:
    neither is Japanese BLEU. The values differ, so the test above tells the tokenizers apart."""
    from sacrebleu.metrics import BLEU

    reference, candidate = "今日はいい天気ですね。", "今日は天気がいいですね。"
    ours = extract([(reference, candidate)], workers=1)[0, FEATURES.index("bleu")]
    scores = {
        name: BLEU(tokenize=name, effective_order=True).sentence_score(candidate, [reference]).score / 100
        for name in ("ja-mecab", "zh", "13a")
    }
    assert ours == pytest.approx(scores["ja-mecab"]) and scores["ja-mecab"] > 0
    assert scores["13a"] == 0.0 and abs(scores["zh"] - scores["ja-mecab"]) > 0.05, scores


def test_jieba_segmentation_is_jiebas_own_words():
    import jieba
    from rouge_score import rouge_scorer

    reference, candidate = "我来到北京清华大学", "他来到了网易杭研大厦"
    tokens = {text: jieba.lcut(text) for text in (reference, candidate)}
    assert words(reference, "jieba") == tokens[reference]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=GivenTokens(tokens))
    rouge = scorer.score(reference, candidate)
    ours = extract([(reference, candidate)], segmentation="jieba", workers=1)[0]
    for name in ("rouge1", "rouge2", "rougeL"):
        assert ours[FEATURES.index(name)] == pytest.approx(rouge[name].fmeasure, abs=1e-12)
    # Japanese is never cut by jieba (a Chinese dictionary): its characters stay tokens.
    assert words("今日は天気", "jieba") == list("今日は天気")


def test_english_words_are_rouge_scores_default_tokens():
    from rouge_score import tokenize

    texts = [r for r, _, _, tokens in CASES if tokens is None]
    texts += ["café İstanbul, naïve", "Kelvin \u212a and ℃", "ÀÉÎ õü ß", "e-mail: a_b@c.de"]
    for text in texts:
        assert words(text) == tokenize.tokenize(text, None), text


def test_other_scripts_keep_their_words():
    """rouge-score's default drops every non-ASCII letter (ROUGE would be 0 for Russian); words of other scripts
    are kept whole, with their combining marks."""
    assert words("Привет, Мир! 42") == ["привет", "мир", "42"]
    assert words("हिन्दी भाषा") == ["हिन्दी", "भाषा"]


SENTENCE_WORDS = "the a cat cats dog dogs runs running ran quick quickly . , ! ? 3.5 km it's don't The A Cat".split()


def random_english_pairs(count: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)

    def sentence() -> str:
        return " ".join(rng.choice(SENTENCE_WORDS) for _ in range(rng.randint(0, 14)))

    pairs = []
    for _ in range(count):
        reference = sentence()
        if rng.random() < 0.5:  # a close variant: a few words changed
            variant = reference.split()
            for _ in range(rng.randint(0, 3)):
                if variant:
                    variant[rng.randrange(len(variant))] = rng.choice(SENTENCE_WORDS)
            pairs.append((reference, " ".join(variant)))
        else:
            pairs.append((reference, sentence()))
    return pairs


def test_random_english_pairs_match_the_reference_packages_across_worker_processes():
    """Repeated words (clipped counts), empty texts and near-duplicates, in small chunks over two processes."""
    pairs = random_english_pairs(300)
    reference = np.array([reference_features(r, c, "13a", None) for r, c in pairs])
    assert_close(extract(pairs, workers=2, chunk_size=37), reference)


def test_meteor_matches_nltk_on_random_token_lists():
    from nltk.translate.meteor_score import single_meteor_score

    rng = random.Random(1)
    vocabulary = ["cat", "cats", "run", "running", "runs", "the", "a", "happily", "happy", "dog"]
    for _ in range(300):
        reference = [rng.choice(vocabulary) for _ in range(rng.randint(1, 9))]
        hypothesis = [rng.choice(vocabulary) for _ in range(rng.randint(1, 9))]
        expected = single_meteor_score(reference, hypothesis, wordnet=NoSynonyms())
        assert meteor(reference, hypothesis) == pytest.approx(expected, abs=1e-12), (reference, hypothesis)


def test_lcs_and_meteor_on_hand_computed_cases():
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # the textbook example (CLRS 15.4)
    assert lcs_length([], ["a"]) == 0
    # two words, both matched in one chunk: P = R = 1, penalty 0.5 * (1/2)^3
    assert meteor(["the", "cat"], ["the", "cat"]) == pytest.approx(1 - 0.5 * (1 / 2) ** 3)
    # "cats" and "cat" share the Porter stem: one match, one chunk
    assert meteor(["cats"], ["cat"]) == pytest.approx(1 - 0.5)
    assert meteor(["dog"], ["cat"]) == 0.0
