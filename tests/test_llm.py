"""LLM backbones, attention kernels, chat templates and tokenizers."""

from __future__ import annotations

import pytest
import torch

from omnimm import ConfigError, llms
from omnimm.errors import MissingDependencyError
from omnimm.llm import attention
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


def test_auto_attention_is_sdpa_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_attention("auto") == "sdpa"
    assert resolve_attention("xformers") == "xformers"  # runs SDPA on CPU tensors
    assert resolve_attention("eager") == "eager"


def test_auto_attention_on_cuda_is_xformers_when_installed(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(attention, "is_available", lambda module: module == "xformers")
    assert resolve_attention("auto") == "xformers"
    monkeypatch.setattr(attention, "is_available", lambda module: False)
    assert resolve_attention("auto") == "sdpa"
    with pytest.raises(MissingDependencyError, match=r"omnimm\[gpu\]"):
        resolve_attention("xformers")


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


# -- chat backends ----------------------------------------------------------------------------------------------


def test_hf_causal_lm_chat_uses_a_registered_template_and_counts_tokens():
    from omnimm.llm.chat import ChatBackend

    lm = tiny_lm(chat_template="omnimm/chatml")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text, stop = lm.chat_prompt(messages)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert stop == "<|im_end|>"
    reply = lm.chat(messages, max_new_tokens=5)
    assert isinstance(reply, str)
    assert lm.chat(messages, max_new_tokens=5) == reply  # greedy: deterministic
    assert lm.count_tokens("héllo") == len("héllo".encode())  # the byte tokenizer: one token per byte
    assert isinstance(lm, ChatBackend)


def test_chat_rejects_bad_messages_with_their_index():
    lm = tiny_lm()
    with pytest.raises(ValueError, match=r"messages\[1\]\.role"):
        lm.chat([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}])
    with pytest.raises(ValueError, match=r"messages\[1\]: a system message may only come first"):
        lm.chat([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])


def test_openai_chat_talks_to_a_real_loopback_server(monkeypatch):
    from tests.openai_server import openai_server

    monkeypatch.setenv("OMNIMM_TEST_API_KEY", "sk-test")
    with openai_server() as server:
        llm = llms.build(
            {"name": "openai/chat", "base_url": server.url, "model": "tiny", "api_key_env": "OMNIMM_TEST_API_KEY"}
        )
        messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hello"}]
        assert llm.chat(messages, max_new_tokens=7, temperature=0.5, seed=3) == "reply 1 to: Hello"
        sent = server.requests[0]
        assert sent["model"] == "tiny" and sent["messages"] == messages
        assert (sent["max_tokens"], sent["temperature"], sent["seed"]) == (7, 0.5, 3)
        assert server.headers[0]["Authorization"] == "Bearer sk-test"


def test_openai_chat_retries_then_reports_the_url_and_status():
    from omnimm import BackendError
    from tests.openai_server import openai_server

    with openai_server() as server:
        llm = llms.build({"name": "openai/chat", "base_url": server.url, "model": "m", "max_retries": 2})
        server.fail_with = [503, 503]
        assert llm.chat([{"role": "user", "content": "x"}]) == "reply 3 to: x"  # two retries, then success
        server.fail_with = [400]
        with pytest.raises(BackendError, match=r"chat/completions: HTTP 400"):
            llm.chat([{"role": "user", "content": "x"}])
        server.garbage = True
        with pytest.raises(BackendError, match="not JSON"):
            llm.chat([{"role": "user", "content": "x"}])
    dead = llms.build({"name": "openai/chat", "base_url": server.url, "model": "m", "max_retries": 0, "timeout": 2})
    with pytest.raises(BackendError, match="cannot reach the server"):
        dead.chat([{"role": "user", "content": "x"}])


def test_openai_chat_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="base_url: expected an http"):
        llms.validate({"name": "openai/chat", "base_url": "localhost:8000", "model": "m"})
    with pytest.raises(ConfigError, match="model"):
        llms.validate({"name": "openai/chat", "base_url": "http://x/v1"})


def test_openai_chat_estimates_tokens_without_a_tokenizer():
    llm = llms.build({"name": "openai/chat", "base_url": "http://127.0.0.1:9/v1", "model": "m"})
    assert llm.count_tokens("") == 0
    assert llm.count_tokens("abcdefgh") == 2
    assert llm.count_tokens("abcdefghi") == 3
