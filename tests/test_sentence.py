"""`hf/sentence-encoder`: the packaged all-MiniLM-L6-v2, offline."""

from __future__ import annotations

import numpy as np
import pytest

from omnimm import encoders


@pytest.fixture(scope="module")
def encoder():
    return encoders.build("hf/sentence-encoder")


def test_embeddings_are_normalised_and_meaningful(encoder):
    vectors = encoder.encode(["A man is playing a guitar.", "Someone plays the guitar.", "Stocks fell sharply today."])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    similarity = vectors @ vectors.T
    # about 0.84 for the paraphrase and -0.09 for the unrelated sentence: both far from the bounds
    assert similarity[0, 1] > 0.6 > 0.2 > similarity[0, 2], similarity


def test_batches_do_not_change_results(encoder):
    sentences = [f"sentence number {i} about {word}" for i, word in enumerate(["cats", "dogs", "maths", "rain"] * 3)]
    assert np.allclose(encoder.encode(sentences, batch_size=5), encoder.encode(sentences, batch_size=64), atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_pooling_options_differ():
    text = ["pooling changes the vector"]
    mean = encoders.build("hf/sentence-encoder").encode(text)
    cls = encoders.build({"name": "hf/sentence-encoder", "pooling": "cls"}).encode(text)
    assert not np.allclose(mean, cls)


def test_embedding_cosine_joins_the_simct_features(encoder):
    from omnimm_plugins.simct.features import EMBEDDING, FEATURES, pair_features

    values, names = pair_features([("a cat sits", "a cat is sitting"), ("a cat sits", "taxes rose")], encoder=encoder)
    assert names == [*FEATURES, EMBEDDING] and values.shape == (2, len(FEATURES) + 1)
    assert values[0, -1] > values[1, -1]
