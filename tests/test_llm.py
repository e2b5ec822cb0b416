"""LLM backbones, attention kernels, chat templates and tokenizers."""

from __future__ import annotations

import pytest
import torch

from omnimm import ConfigError, llms
from omnimm.llm.attention import mask_to_bias, resolve_attention
from omnimm.llm.templates import CHATML, LLAVA_V0, PLAIN, Segment, normalise_role
from omnimm.llm.tokenizer import byte_tokenizer, train_word_tokenizer
from omnimm.registry import templates

LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def tiny_lm(**options):
    torch.manual_seed(0)
    return llms.build({"name": "hf/causal-lm", "config": LLAMA, "tokenizer": "bytes", **options}).eval()


def test_inline_model_fits_its_tokenizer_and_generates():
    lm = tiny_lm()
    assert lm.model.config.vocab_size == len(lm.tokenizer) == 260
    assert lm.hidden_size == 32
    ids = lm.tokenizer("hello", return_tensors="pt").input_ids
    out = lm.generate(
        inputs_embeds=lm.embed(ids), attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False
    )
    assert out.shape == (1, 3)


def test_a_model_saved_to_a_folder_loads_back_identically(tmp_path):
    lm = tiny_lm()
    lm.model.save_pretrained(tmp_path / "lm")
    lm.tokenizer.save_pretrained(tmp_path / "lm")
    loaded = llms.build({"name": "hf/causal-lm", "path": str(tmp_path / "lm")}).eval()
    ids = lm.tokenizer("same output", return_tensors="pt").input_ids
    assert torch.equal(lm(input_ids=ids).logits, loaded(input_ids=ids).logits)
    architecture = llms.build({"name": "hf/causal-lm", "path": str(tmp_path / "lm"), "load_weights": False}).eval()
    assert not torch.equal(lm(input_ids=ids).logits, architecture(input_ids=ids).logits)


def test_special_tokens_are_added_once_and_embeddings_grow():
    lm = tiny_lm()
    first = lm.add_special_tokens(["<video>"])
    assert lm.add_special_tokens(["<video>"]) == first
    assert lm.model.get_input_embeddings().num_embeddings == len(lm.tokenizer) == 261
    assert lm.tokenizer("a <video> b").input_ids.count(first[0]) == 1


def test_a_tokenizer_larger_than_the_model_is_refused():
    with pytest.raises(ValueError, match="the tokenizer has 260 tokens but the model only 100 embeddings"):
        tiny_lm(config={**LLAMA, "vocab_size": 100})


def test_config_errors_point_at_the_field():
    with pytest.raises(ConfigError, match=r"in llm config\n  path: set a local model folder"):
        llms.validate({"name": "hf/causal-lm"})
    with pytest.raises(ConfigError, match=r"config\.model_type: an inline config needs a model_type"):
        llms.validate({"name": "hf/causal-lm", "config": {"hidden_size": 8}, "tokenizer": "bytes"})
    with pytest.raises(ConfigError, match="tokenizer: an inline config needs a tokenizer folder"):
        llms.validate({"name": "hf/causal-lm", "config": LLAMA})


def test_xformers_attention_runs_everywhere_and_matches_sdpa_on_cpu():
    sdpa, xformers = tiny_lm(attention="sdpa"), tiny_lm(attention="xformers")
    assert (sdpa.attention, xformers.attention) == ("sdpa", "xformers")
    assert xformers.model.config._attn_implementation == "xformers"
    ids = torch.randint(0, 250, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    a = sdpa(input_ids=ids, attention_mask=mask).logits
    b = xformers(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(a[:, 3:], b[:, 3:], atol=1e-5)


def test_auto_attention_is_sdpa_without_cuda():
    expected = "xformers" if torch.cuda.is_available() else "sdpa"
    assert resolve_attention("auto") in (expected, "sdpa")
    assert resolve_attention("eager") == "eager"


def test_mask_to_bias_is_aligned_and_finite():
    mask = torch.tensor([[[[True, False, False], [True, True, False], [False, False, False]]]])
    bias = mask_to_bias(mask, heads=2, dtype=torch.float32)
    assert bias.shape == (1, 2, 3, 3) and bias.stride(-2) == 8  # rows padded to a multiple of 8
    assert torch.isfinite(bias).all()
    assert bias[0, 0, 0, 0] == 0 and bias[0, 1, 0, 1] == torch.finfo(torch.float32).min
    q = k = v = torch.randn(1, 2, 3, 4)
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    ours = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    assert torch.allclose(reference[..., :2, :], ours[..., :2, :], atol=1e-6)
    assert torch.isfinite(ours).all()  # the fully masked row: no NaN


@pytest.mark.skipif(not torch.cuda.is_available(), reason="xformers kernels need a CUDA device")
def test_xformers_on_cuda_matches_sdpa():  # pragma: no cover - runs on GPU machines only
    pytest.importorskip("xformers")
    sdpa, xformers = tiny_lm(attention="sdpa").cuda(), tiny_lm(attention="xformers").cuda()
    ids = torch.randint(0, 250, (2, 33), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    a, b = sdpa(input_ids=ids, attention_mask=mask).logits, xformers(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(a[:, 5:], b[:, 5:], atol=1e-4)


def test_llava_v0_template_marks_only_the_answers():
    segments = LLAVA_V0.render([("human", "hi"), ("gpt", "hello"), ("human", "more?"), ("gpt", "no")])
    assert "".join(s.text for s in segments) == (
        LLAVA_V0.system + "###Human: hi###Assistant: hello###Human: more?###Assistant: no###"
    )
    assert [s.text for s in segments if s.target] == ["hello###", "no###"]
    assert LLAVA_V0.prompt([("user", "q")]).endswith("###Human: q###Assistant: ")


def test_chatml_and_system_messages():
    segments = CHATML.render([("system", "Be brief."), ("user", "hi"), ("assistant", "yo")])
    assert segments[0] == Segment("<|im_start|>system\nBe brief.<|im_end|>\n", False)
    assert segments[-1] == Segment("yo<|im_end|>\n", True)
    assert PLAIN.prompt([("user", "<video>")]) == "<video>\n"
    with pytest.raises(ValueError, match="unknown conversation role 'robot'"):
        normalise_role("robot")


def test_templates_are_registered_by_name():
    assert templates.get("omnimm/llava-v0") is LLAVA_V0
    assert templates.get("valley/v0") is LLAVA_V0
    assert {"omnimm/chatml", "omnimm/plain"} <= set(templates.names())


def test_word_tokenizer_round_trips_its_corpus():
    tokenizer = train_word_tokenizer(["two red circles moving left.", "what colour?"], extra_tokens=["<video>"])
    ids = tokenizer("<video> two red circles moving left.").input_ids
    assert tokenizer.convert_ids_to_tokens(ids)[0] == "<video>"
    assert tokenizer.decode(ids[1:]) == "two red circles moving left."
    assert tokenizer.unk_token_id not in ids


def test_byte_tokenizer_round_trips_anything():
    tokenizer = byte_tokenizer()
    text = "héllo 世界 ###"
    assert tokenizer.decode(tokenizer(text).input_ids) == text
