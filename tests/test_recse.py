"""recse: the reshaped view, the contrastive frameworks, STS evaluators and readers, training and export, the CLI."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from omnimm import ConfigError, evaluators
from omnimm.sentence.sts import STSPair, read_sts_csv
from omnimm_plugins.recse.configs import ContrastiveConfig, RecseTrainConfig, ReshapeConfig
from omnimm_plugins.recse.evaluate import sts_correlations
from omnimm_plugins.recse.model import ContrastiveModel, RecseCollator, info_nce
from omnimm_plugins.recse.reshape import ReshapeView, interaction_matrix

from .conftest import SHARED, requires_shared

SENTENCES = [
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "The cat sleeps on the warm windowsill.",
    "Two dogs run across a snowy field.",
    "A child is reading a book in the library.",
    "The stock market fell sharply today.",
    "A chef is cooking pasta in a large pot.",
    "Rain is falling on the empty street.",
]


def features(batch: int = 3, length: int = 7, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, dim, generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    return x, mask


@pytest.fixture(scope="module")
def simcse_reshape():
    torch.manual_seed(0)
    config = ContrastiveConfig(reshape=ReshapeConfig(max_length=32))
    return ContrastiveModel(config)


# -- the reshaped view ----------------------------------------------------------------------------------------------


def test_interaction_matrix_is_symmetric_and_zero_on_padding():
    x, mask = features()
    matrix = interaction_matrix(x, mask, ReshapeConfig(normalize="none"))
    assert matrix.shape == (3, 7, 7)
    assert torch.allclose(matrix, matrix.transpose(1, 2))
    assert torch.all(matrix[1, 5:] == 0) and torch.all(matrix[1, :, 5:] == 0)
    raw = x[0] @ x[0].T / 4.0  # scale 1/sqrt(16), then the signed square root
    assert torch.allclose(matrix[0], torch.sign(raw) * torch.sqrt(raw.abs() + 1e-8), atol=1e-5)
    rows = interaction_matrix(x, mask, ReshapeConfig(normalize="row-l2"))
    assert torch.allclose(rows[2, :3].norm(dim=-1), torch.ones(3), atol=1e-5)
    soft = interaction_matrix(x, mask, ReshapeConfig(normalize="softmax"))
    assert torch.allclose(soft[2, :3].sum(-1), torch.ones(3), atol=1e-5) and torch.all(soft[2, 3:] == 0)


@pytest.mark.parametrize("tower", ["cnn", "aggregate"])
def test_reshape_view_gives_one_vector_per_sentence(tower: str):
    x, mask = features()
    view = ReshapeView(ReshapeConfig(tower=tower, max_length=8, out_dim=12), hidden_size=16)
    out = view(x, mask)
    assert out.shape == (3, 12)
    padded_x = torch.cat([x, torch.randn(3, 1, 16)], dim=1)  # an extra padding token changes nothing
    padded_mask = torch.cat([mask, torch.zeros(3, 1, dtype=torch.long)], dim=1)
    assert torch.allclose(view(padded_x, padded_mask), out, atol=1e-5)
    with pytest.raises(ValueError, match=r"9 tokens exceed reshape\.max_length \(8\)"):
        view(torch.randn(1, 9, 16), torch.ones(1, 9))


def test_reshape_is_a_registered_adapter():
    from omnimm import adapters

    view = adapters.build({"name": "recse/reshape", "tower": "cnn"}, hidden_size=16)
    assert isinstance(view, ReshapeView) and view.out_dim == 16


# -- contrastive training -------------------------------------------------------------------------------------------


def test_info_nce_prefers_matching_pairs():
    anchors = torch.eye(4)
    assert info_nce(anchors, anchors, 0.05) < 1e-6
    assert info_nce(anchors, anchors.roll(1, dims=0), 0.05) > 10


def test_loss_decreases_on_a_tiny_batch_with_reshape(simcse_reshape):
    model = simcse_reshape
    collate = RecseCollator(model.tokenizer, model.config, max_length=32)
    batch = collate([{"text": s} for s in SENTENCES])
    heads = {id(p) for p in model.head_parameters()}
    encoder = [p for p in model.parameters() if id(p) not in heads]
    optimizer = torch.optim.AdamW([{"params": encoder, "lr": 3e-5}, {"params": model.head_parameters(), "lr": 1e-3}])
    model.eval()  # without dropout each step is deterministic: plain gradient descent on one batch
    losses = []
    for _ in range(20):  # the first steps overshoot (0.22 -> 0.32); by step 20 the loss is about half the first
        out = model(**batch)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out["loss"].item())
    model.train()
    assert losses[-1] < 0.8 * losses[0], f"last / first loss {losses[-1] / losses[0]:.2f} (about 0.5): {losses}"
    assert set(out) == {"loss", "intra", "inter"}


def test_gradients_reach_the_encoder_through_both_losses_and_the_tower(simcse_reshape):
    model = simcse_reshape
    batch = RecseCollator(model.tokenizer, model.config, max_length=32)([{"text": s} for s in SENTENCES[:4]])
    embeddings = model.encoder.model.embeddings.word_embeddings.weight
    configured = model.config
    model.eval()  # no dropout: both runs below see the same forward pass

    def gradients(weight: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.config = configured.model_copy(update={"reshape_weight": weight})
        model.zero_grad()
        model(**batch)["loss"].backward()
        return embeddings.grad.clone(), [p.grad.clone() for p in model.reshape.parameters()]

    try:
        encoder_with, tower_with = gradients(1.0)
        encoder_without, tower_without = gradients(0.0)
    finally:
        model.config = configured
        model.train()
    assert all(g.abs().sum() > 0 for g in tower_with)  # the reshape tower learns
    assert all(g.abs().sum() == 0 for g in tower_without)
    assert encoder_without.abs().sum() > 0  # the intra-view (SimCSE) loss reaches the encoder
    assert not torch.allclose(encoder_with, encoder_without)  # and so does the inter-view loss


def test_word_repetition_views_duplicate_tokens_and_train():
    torch.manual_seed(0)
    config = ContrastiveConfig(framework="repeat", views=3, repeat_rate=0.5)
    model = ContrastiveModel(config)
    batch = RecseCollator(model.tokenizer, config, max_length=32, seed=1)([{"text": s} for s in SENTENCES[:4]])
    assert batch["view_input_ids"].shape[0] == 2
    lengths = batch["attention_mask"].sum(1)
    view_lengths = batch["view_attention_mask"].sum(-1)
    assert torch.all(view_lengths >= lengths) and torch.any(view_lengths > lengths)
    first = batch["view_input_ids"][0, 0, : int(view_lengths[0, 0])].tolist()
    original = batch["input_ids"][0, : int(lengths[0])].tolist()
    assert first[0] == original[0] and first[-1] == original[-1]  # CLS and SEP kept once
    assert [t for i, t in enumerate(first) if i == 0 or t != first[i - 1]] == [
        t for i, t in enumerate(original) if i == 0 or t != original[i - 1]
    ]
    assert torch.isfinite(model(**batch)["loss"])


def test_config_rules_name_their_fields():
    from omnimm import models
    from omnimm.config import validate_config

    with pytest.raises(ConfigError, match="views: simcse uses exactly 2 dropout views"):
        models.validate({"name": "recse/contrastive", "views": 3})
    with pytest.raises(ConfigError, match=r"model\.reshape\.max_length: must be >= max_length \(64\)"):
        validate_config(
            {"model": {"reshape": {"max_length": 32}}, "data": {"text": "x"}, "output_dir": "o", "max_length": 64},
            RecseTrainConfig,
        )
    with pytest.raises(ConfigError, match="data: give at least one of stsb, script, text"):
        validate_config({"data": {}, "output_dir": "o"}, RecseTrainConfig)


# -- STS evaluation -------------------------------------------------------------------------------------------------


class TableEncoder:
    """Embeds each sentence as the vector written in it ("1 0 2")."""

    def encode(self, sentences, batch_size=None):
        return np.array([[float(v) for v in s.split()] for s in sentences])


def test_sts_correlations_match_scipy_on_a_known_case():
    from scipy import stats

    pairs = [
        STSPair("1 0", "1 0", 5.0),
        STSPair("1 0", "1 1", 3.5),
        STSPair("1 0", "0 1", 0.5),
        STSPair("1 1", "-1 -1", 0.0),
        STSPair("2 1", "1 2", 4.0),
    ]
    cosines = [1.0, 1 / np.sqrt(2), 0.0, -1.0, 0.8]
    gold = [5.0, 3.5, 0.5, 0.0, 4.0]
    result = sts_correlations(TableEncoder(), pairs)
    assert result["spearman"] == pytest.approx(stats.spearmanr(cosines, gold).statistic, abs=1e-12)
    assert result["pearson"] == pytest.approx(stats.pearsonr(cosines, gold).statistic, abs=1e-12)
    assert result["pairs"] == 5


def test_sts_csv_reports_bad_rows_by_line(tmp_path: Path):
    path = tmp_path / "pairs.csv"
    path.write_text('sentence1,sentence2,score\na,b,1.5\n"c, d",e,high\nf,g\n\nh,i,4\n,j,2\n', encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        read_sts_csv(path)
    text = str(error.value)
    assert "pairs.csv:3: score: not a number: 'high'" in text
    assert "pairs.csv:4: expected 3 fields" in text and "pairs.csv:7: empty sentence" in text
    good = tmp_path / "good.tsv"
    good.write_text("a b\tc d\t1\ne f\tg h\t2\n", encoding="utf-8")  # no header, tabs
    assert [p.score for p in read_sts_csv(good)] == [1.0, 2.0]


def test_csv_evaluator_from_the_registry(tmp_path: Path):
    path = tmp_path / "pairs.csv"
    path.write_text("1 0,1 0,5\n1 0,0 1,0\n1 1,1 0,3\n", encoding="utf-8")
    scores = evaluators.build({"name": "recse/sts-csv", "path": str(path)}).evaluate(TableEncoder())
    assert scores["spearman"] == pytest.approx(1.0)


@requires_shared
def test_stsb_evaluator_scores_minilm_on_dev_rows_with_extra_fields():
    from omnimm import encoders

    evaluator = evaluators.build({"name": "recse/stsb", "folder": str(SHARED / "data" / "stsb"), "split": "dev"})
    assert len(evaluator.pairs) == 1500
    scores = evaluator.evaluate(encoders.build({"name": "hf/sentence-encoder"}))
    assert 0.8 < scores["spearman"] < 0.95, f"dev Spearman {scores['spearman']:.3f} (MiniLM scores about 0.87)"
    assert scores["split"] == "dev"


# -- training, export, CLI ------------------------------------------------------------------------------------------


def tiny_stsb(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        (5.0, SENTENCES[0], "A man plays the guitar."),
        (0.2, SENTENCES[0], SENTENCES[5]),
        (4.6, SENTENCES[1], "A woman cuts an onion."),
        (0.5, SENTENCES[2], SENTENCES[6]),
        (3.8, SENTENCES[3], "Dogs are running in the snow."),
        (1.0, SENTENCES[4], SENTENCES[7]),
    ]
    lines = [
        f"main-captions\tMSRvid\t2012test\t{i:04d}\t{s}\t{a}\t{b}\textra\tfields" for i, (s, a, b) in enumerate(rows)
    ]
    (folder / "sts-dev.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_training_keeps_the_best_checkpoint_and_exports_for_sentence_transformers(tmp_path: Path):
    from sentence_transformers import SentenceTransformer

    from omnimm import encoders
    from omnimm_plugins.recse.training import train

    text = tmp_path / "sentences.txt"
    # the dev sentences themselves would be dropped from the pool (hygiene): train on other wordings
    pool = [f"Somewhere, {s[0].lower()}{s[1:]}" for s in SENTENCES]
    text.write_text("\n".join(pool * 3), encoding="utf-8")
    config = RecseTrainConfig.model_validate(
        {
            "model": {"reshape": {"max_length": 16}},
            "data": {"text": str(text)},
            "output_dir": str(tmp_path / "run"),
            "eval_stsb": str(tiny_stsb(tmp_path / "stsb")),
            "batch_size": 4,
            "max_length": 16,
            "max_steps": 4,
            "eval_steps": 2,
        }
    )
    result = train(config, progress=False)
    evaluations = [h["eval_stsb_spearman"] for h in result.history if "eval_stsb_spearman" in h]
    assert len(evaluations) == 2 and result.best_spearman == max(evaluations)
    summary = json.loads((result.model_dir / "recse.json").read_text())
    assert summary["best_dev_spearman"] == result.best_spearman and summary["sentences"] == len(pool)
    assert not [p for p in result.model_dir.rglob("*") if p.suffix in (".bin", ".pt", ".pkl", ".pth")]
    st_vectors = SentenceTransformer(str(result.model_dir), device="cpu").encode(SENTENCES[:3])
    ours = encoders.build({"name": "hf/sentence-encoder", "path": str(result.model_dir), "pooling": "cls"})
    assert np.allclose(st_vectors, ours.encode(SENTENCES[:3]), atol=1e-5)
    dev = evaluators.build({"name": "recse/stsb", "folder": str(tmp_path / "stsb"), "split": "dev"}).evaluate(ours)
    assert dev["spearman"] == pytest.approx(result.best_spearman, abs=1e-6)  # the best checkpoint was exported


def test_cli_eval_encode_and_train(cli, tmp_path: Path):
    from safetensors.numpy import load_file

    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "\n".join(
            f"{a},{b},{s}"
            for s, a, b in [
                (5, "A cat sits.", "A cat is sitting."),
                (0, "A cat sits.", "Stocks fell."),
                (2, "A dog runs.", "A cat sits."),
            ]
        ),
        encoding="utf-8",
    )
    scored = cli("recse", "eval", "minilm", "--csv", pairs)
    assert scored.returncode == 0, scored.stderr
    assert "3 pairs: Spearman 1.0000" in scored.stdout
    both = cli("recse", "eval", "minilm")
    assert both.returncode != 0 and "exactly one of --stsb FOLDER or --csv FILE" in both.stderr
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(SENTENCES[:5]) + "\n\n", encoding="utf-8")
    encoded = cli("encode", "minilm", lines, "--out", tmp_path / "e.safetensors")
    assert encoded.returncode == 0, encoded.stderr
    vectors = load_file(str(tmp_path / "e.safetensors"))["embeddings"]
    assert vectors.shape == (5, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    config = tmp_path / "train.yaml"
    config.write_text(
        textwrap.dedent(f"""\
        model: {{framework: repeat, views: 3}}
        data: {{text: {lines}}}
        output_dir: {tmp_path / "run"}
        batch_size: 2
        max_steps: 2
        eval_steps: 2
    """)
    )
    trained = cli("recse", "train", config)
    assert trained.returncode == 0, trained.stderr
    assert f"model: {tmp_path / 'run' / 'model'}" in trained.stdout
    assert (tmp_path / "run" / "model" / "modules.json").is_file()


def test_the_packaged_training_config_validates():
    from omnimm.config import load_config

    config = load_config("recse:unsup", RecseTrainConfig)
    assert config.model.reshape is not None and config.batch_size == 64 and config.learning_rate == 3e-5
