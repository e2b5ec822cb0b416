"""recse: training-pool hygiene, the shuffled-matrix control, the second reshape configuration, embedding geometry,
and bad input through the real CLI (one clear error, non-zero exit)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from omnimm.sentence.sts import STSPair, read_stsb
from omnimm_plugins.recse.configs import ContrastiveConfig, ReshapeConfig, SentenceSource
from omnimm_plugins.recse.evaluate import embedding_geometry
from omnimm_plugins.recse.model import ContrastiveModel, RecseCollator
from omnimm_plugins.recse.reshape import ReshapeView, interaction_matrix, shuffle_entries
from omnimm_plugins.recse.training import load_sentences, normalise, script_lines

from .conftest import SHARED, requires_shared

STSB = SHARED / "data" / "stsb"


# -- pool hygiene ---------------------------------------------------------------------------------------------------


def test_normalise_folds_unicode_case_and_whitespace():
    assert normalise("  A\u00a0Man   is\tPLAYING ﬁddle. ") == "a man is playing fiddle."  # NBSP, ligature (NFKC)


@requires_shared
def test_the_training_pool_holds_no_stsb_dev_or_test_sentence():
    pairs = read_stsb(STSB, "dev") + read_stsb(STSB, "test")
    held = {normalise(s) for p in pairs for s in (p.sentence1, p.sentence2)}
    raw = [s for p in read_stsb(STSB, "train") for s in (p.sentence1, p.sentence2)]
    raw += script_lines(SHARED / "data" / "tinyshakespeare" / "input.txt")
    assert len({normalise(s) for s in raw} & held) > 400  # the splits share sentences: the unfiltered pool leaks
    pool = load_sentences(SentenceSource(stsb=str(STSB), script=str(SHARED / "data/tinyshakespeare/input.txt")))
    assert not {normalise(s) for s in pool} & held
    assert len(pool) > 30_000


def test_text_sources_are_filtered_against_an_eval_folder(tmp_path: Path):
    folder = tmp_path / "stsb"
    folder.mkdir()
    row = "g\tf\t2012\t1\t{score}\t{a}\t{b}\n"
    (folder / "sts-test.csv").write_text(row.format(score=4, a="A man plays a guitar.", b="Dogs run."), "utf-8")
    text = tmp_path / "lines.txt"
    text.write_text("a  MAN plays a guitar.\nA woman slices an onion.\nDOGS RUN.\nIt rains.\n", encoding="utf-8")
    kept = load_sentences(SentenceSource(text=str(text)), exclude_stsb=[folder])
    assert kept == ["A woman slices an onion.", "It rains."]


# -- the shuffled control and the second configuration ----------------------------------------------------------------


def test_shuffle_keeps_each_sentences_entries_and_padding():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 8, generator=generator)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    matrix = interaction_matrix(x, mask, ReshapeConfig())
    shuffled = shuffle_entries(matrix, mask, generator)
    for row, length in ((0, 6), (1, 4)):
        before, after = matrix[row, :length, :length].flatten(), shuffled[row, :length, :length].flatten()
        assert torch.equal(before.sort().values, after.sort().values) and not torch.equal(before, after)
    assert torch.all(shuffled[1, 4:] == 0) and torch.all(shuffled[1, :, 4:] == 0)


def test_a_shuffled_view_differs_from_the_structured_one_with_the_same_tower():
    x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 7, dtype=torch.long)
    torch.manual_seed(0)
    plain = ReshapeView(ReshapeConfig(max_length=8), hidden_size=16)
    control = ReshapeView(ReshapeConfig(max_length=8, shuffle=True), hidden_size=16)
    control.load_state_dict(plain.state_dict())
    assert not torch.allclose(plain(x, mask), control(x, mask))


def test_second_configuration_projects_with_tanh_and_its_own_temperature():
    def inter(tau: float) -> torch.Tensor:
        torch.manual_seed(0)
        reshape = ReshapeConfig(max_length=32, out_dim=256)
        config = ContrastiveConfig(
            reshape=reshape, reshape_weight=0.01, reshape_projection="linear-tanh", reshape_temperature=tau
        )
        model = ContrastiveModel(config).eval()  # no dropout: both runs see the same features
        assert isinstance(model.reshape_projection[1], torch.nn.Tanh)
        assert model.reshape_projection[0].out_features == 256
        batch = RecseCollator(model.tokenizer, config, max_length=32)([{"text": t} for t in ("A cat.", "Two dogs.")])
        return model(**batch)

    sharp, soft = inter(0.05), inter(0.5)
    assert torch.allclose(sharp["intra"], soft["intra"])
    assert not torch.allclose(sharp["inter"], soft["inter"])
    assert torch.allclose(sharp["loss"], sharp["intra"] + 0.01 * sharp["inter"], atol=1e-6)


# -- geometry -------------------------------------------------------------------------------------------------------


class TableEncoder:
    """Embeds each sentence as the vector written in it ("1 0 2")."""

    def encode(self, sentences, batch_size=None):
        return np.array([[float(v) for v in s.split()] for s in sentences])


def test_alignment_and_uniformity_match_wang_and_isola():
    pairs = [STSPair("1 0", "0.9 0.1", 5.0), STSPair("0 1", "0.2 1", 4.5), STSPair("1 0", "0 1", 0.0)]
    geometry = embedding_geometry(TableEncoder(), pairs)
    vectors = torch.nn.functional.normalize(
        torch.tensor([[1, 0], [0.9, 0.1], [0, 1], [0.2, 1]], dtype=torch.float64), dim=1
    )
    alignment = ((vectors[0] - vectors[1]).norm() ** 2 + (vectors[2] - vectors[3]).norm() ** 2) / 2
    uniformity = torch.pdist(vectors, p=2).pow(2).mul(-2).exp().mean().log()  # Wang & Isola's code
    assert geometry["alignment"] == pytest.approx(float(alignment))
    assert geometry["uniformity"] == pytest.approx(float(uniformity))
    assert -1 <= geometry["random_cosine_mean"] <= 1


# -- bad input through the CLI ----------------------------------------------------------------------------------------


def _fails_cleanly(result, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_cli_reports_bad_csvs_and_folders(cli, tmp_path: Path):
    bad_first = tmp_path / "bad_first.csv"
    bad_first.write_text("A cat sits.,A cat is sitting.,five\nA cat sits.,Stocks fell.,0\nA dog.,A cat.,2\n", "utf-8")
    _fails_cleanly(cli("recse", "eval", "minilm", "--csv", bad_first), "bad_first.csv:1: score: not a number: 'five'")
    one_row = tmp_path / "one_row.csv"
    one_row.write_text("sentence1,sentence2,score\nA cat sits.,A cat is sitting.,5\n", encoding="utf-8")
    _fails_cleanly(cli("recse", "eval", "minilm", "--csv", one_row), "one_row.csv", "needs at least 2")
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("A dog.,A cat.,1\nA café.,A cat.,2\n".encode("latin-1"))
    _fails_cleanly(cli("recse", "eval", "minilm", "--csv", latin), "latin1.csv:2: not UTF-8 text")
    good = tmp_path / "good.csv"
    good.write_text("Sentence1,Sentence2,Score\na b,c d,1\ne f,g h,2\n", encoding="utf-8")
    empty, other = tmp_path / "empty", tmp_path / "other"
    empty.mkdir()
    other.mkdir()
    (other / "notes.txt").write_text("not a model", encoding="utf-8")
    _fails_cleanly(cli("recse", "eval", empty, "--csv", good), "not a transformers or sentence-transformers model")
    _fails_cleanly(cli("recse", "eval", other, "--csv", good), "it has no config.json")


def test_cli_train_refuses_fewer_sentences_than_one_batch(cli, tmp_path: Path):
    lines = tmp_path / "lines.txt"
    lines.write_text("one two three\nfour five six\nseven eight nine\n", encoding="utf-8")
    config = tmp_path / "train.yaml"
    config.write_text(
        textwrap.dedent(f"""\
        data: {{text: {lines}}}
        output_dir: {tmp_path / "run"}
        batch_size: 4
        max_steps: 2
    """)
    )
    _fails_cleanly(cli("recse", "train", config), "3 training sentences, fewer than one batch (4)")
    assert not (tmp_path / "run" / "model").exists()


def test_cli_train_names_a_training_file_that_is_not_utf8(cli, tmp_path: Path):
    lines = tmp_path / "lines.txt"
    lines.write_bytes(b"one two three four\nfive six \xff seven\n")
    config = tmp_path / "train.yaml"
    config.write_text(f"data: {{text: {lines}}}\noutput_dir: {tmp_path / 'run'}\nbatch_size: 2\nmax_steps: 1\n")
    _fails_cleanly(cli("recse", "train", config), f"{lines}:2: not UTF-8 text (byte 0xff at column 10, offset 28)")
