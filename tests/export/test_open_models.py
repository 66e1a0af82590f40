"""Open models imported from Hugging Face directories compute what transformers computes.

Each family (Llama 3.x, SmolLM2, Qwen2, Qwen3, Mistral) is a small random-weight checkpoint built here
with transformers' own classes and a tokenizer trained here on Korean text (`open_models.py`): no
download, and the weights mean nothing. Checked against transformers in fp32: logits, greedy tokens
with and without the KV cache, the chat template's ids, and where generation stops.
"""

from __future__ import annotations

import copy
import io
import json
import shutil

import pytest
import torch

from krmini.chat.template import prompt_ids, stop_ids
from krmini.cli import main
from krmini.export.hf import export_hf, import_hf
from krmini.export.hf_config import from_hf_config
from krmini.infer.build import build_engine
from krmini.infer.engine import Engine, default_stop_ids
from krmini.infer.fast.fused import fuse_for_decoding
from krmini.infer.generate import SamplingConfig, generate_ids
from krmini.infer.load import load_model
from krmini.infer.textstream import TextStream
from krmini.model.info import count_parameters
from tests.export.open_models import BY_NAME, FAMILIES

transformers = pytest.importorskip("transformers", reason="transformers not installed (pip install 'krmini[hf]')")

NAMES = [f.name for f in FAMILIES]
CPU = torch.device("cpu")
PROMPT = "대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다."
CONVERSATIONS = [
    [{"role": "system", "content": "당신은 친절한 한국어 비서입니다."},
     {"role": "user", "content": "안녕하세요? 오늘 날씨 어때요?"}, {"role": "assistant", "content": "맑고 따뜻합니다."},
     {"role": "user", "content": "헌법 제1조를 알려 줘."}],
    [{"role": "user", "content": "국회는 무엇을 하나요?"}],
    [{"role": "user", "content": "고마워요"}, {"role": "assistant", "content": "천만에요!"},
     {"role": "user", "content": "  앞뒤 공백은 어떻게 되나요?  "}],
]
GREEDY = SamplingConfig(max_new_tokens=32, temperature=0)


def hf_pair(hf_dir):
    return (transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval(),
            transformers.AutoTokenizer.from_pretrained(hf_dir))


def hf_greedy(model, ids: list[int], pad_id: int, **kw) -> list[int]:
    x = torch.tensor([ids])
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=32, do_sample=False,
                         pad_token_id=pad_id, **kw)
    return out[0, len(ids):].tolist()


def both_models(name: str, imported):
    """Family `name` imported and loaded by us, the same checkpoint in transformers, and PROMPT's ids."""
    hf_dir, run = imported(name)
    ours = load_model(run, CPU)
    hf, hf_tok = hf_pair(hf_dir)
    return ours, hf, hf_tok, ours.tokenizer.encode_prompt(PROMPT)


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(name, imported):
    ours, hf, hf_tok, ids = both_models(name, imported)
    assert ids == hf_tok(PROMPT)["input_ids"]  # BOS where the family adds one (Llama 3, Mistral), none for Qwen
    assert ours.tokenizer.decode(ids, skip_special_tokens=True) == hf_tok.decode(ids, skip_special_tokens=True) == PROMPT
    with torch.no_grad():
        diff = (ours.model(torch.tensor([ids]))[0] - hf(torch.tensor([ids])).logits).abs().max().item()
    assert diff < 1e-4, f"{name}: max |logit difference| {diff:.2e}"


@pytest.mark.parametrize("name", NAMES)
def test_greedy_tokens_match_with_and_without_cache(name, imported):
    ours, hf, _, ids = both_models(name, imported)
    cached = list(generate_ids(ours.model, ids, GREEDY))  # prefill + KV cache, no stop ids
    seq = list(ids)
    with torch.no_grad():  # every step recomputes the whole sequence
        for _ in range(32):
            seq.append(int(ours.model(torch.tensor([seq]))[0][0, -1].argmax()))
    theirs = hf_greedy(hf, ids, ours.tokenizer.pad_id, eos_token_id=None)
    theirs_uncached = hf_greedy(hf, ids, ours.tokenizer.pad_id, eos_token_id=None, use_cache=False)
    assert len(cached) == 32
    assert cached == seq[len(ids):] == theirs == theirs_uncached


@pytest.mark.parametrize("name", NAMES)
def test_chat_template_ids_match_apply_chat_template(name, imported):
    hf_dir, run = imported(name)
    tok = load_model(run, CPU).tokenizer
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert tok.chat_template == BY_NAME[name].tokenizer_config["chat_template"]
    for messages in CONVERSATIONS:
        theirs = hf_tok.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
        assert prompt_ids(tok, messages) == theirs, hf_tok.decode(theirs)


@pytest.mark.parametrize("name", NAMES)
def test_generation_stops_where_the_generation_config_says(name, imported, tmp_path):
    """A checkpoint whose generation_config.json names, besides its EOS, the fifth token greedy decoding
    produces: transformers stops there, and so do we (without printing it)."""
    hf_dir, run = imported(name)
    ours = load_model(run, CPU)
    ids = ours.tokenizer.encode_prompt(PROMPT)
    tokens = list(generate_ids(ours.model, ids, GREEDY))
    stop_at = tokens.index(tokens[4])
    src = tmp_path / "hf"
    shutil.copytree(hf_dir, src)
    config = json.loads((src / "generation_config.json").read_text(encoding="utf-8"))
    eos = [*config["eos_token_id"], tokens[4]]
    (src / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": eos}), encoding="utf-8")

    tok = load_model(import_hf(src, tmp_path / "run"), CPU).tokenizer
    assert default_stop_ids(tok) == stop_ids(tok) == set(eos)
    done = Engine(ours.model, tok).generate_batch([(PROMPT, GREEDY)])[0]
    theirs = hf_greedy(hf_pair(src)[0], ids, tok.pad_id)  # transformers stops at its generation config's EOS
    assert theirs == tokens[:stop_at + 1]
    assert done.token_ids[0] == theirs[:-1] and done.finish_reasons == ["stop"]


def test_streamed_text_keeps_sentencepiece_spaces(imported):
    """Mistral's decoder strips the leading space of whatever it decodes: pieces streamed after a prompt
    must keep theirs, so the printed text is what transformers decodes for prompt + continuation."""
    hf_dir, run = imported("mistral")
    ours = load_model(run, CPU)
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    words = "국민은 법 앞에 평등하다"
    ids = ours.tokenizer.encode(words)
    stream = TextStream(ours.tokenizer, ids[:1])  # as after a prompt that ends with the first word
    text = "".join(stream.push(i) for i in ids[1:]) + stream.flush()
    assert hf_tok.decode(ids[:1]) + text == hf_tok.decode(ids) == words

    prompt = ours.tokenizer.encode_prompt("헌법")
    done = Engine(ours.model, ours.tokenizer).generate_batch([(prompt, GREEDY)])[0]
    assert ours.tokenizer.tok.id_to_token(done.token_ids[0][0]).startswith("▁")  # the case that matters
    full = hf_tok.decode(prompt + done.token_ids[0], skip_special_tokens=True)
    assert full == hf_tok.decode(prompt, skip_special_tokens=True) + done.texts[0]


@pytest.mark.parametrize("name", ["qwen2", "qwen3", "mistral"])
def test_generate_and_chat_commands_on_an_imported_model(name, imported, capsys, monkeypatch):
    _, run = imported(name)
    prompt = "대한민국은"
    expected = build_engine(run, "cpu").generate(prompt, SamplingConfig(max_new_tokens=12, temperature=0))
    argv = ["generate", str(run), "--prompt", prompt, "--max-new-tokens", "12", "--temperature", "0", "--device", "cpu"]
    assert main(argv) == 0
    assert capsys.readouterr().out == f"{prompt}{expected}\n"
    assert main([*argv, "--dtype", "bf16"]) == 0
    assert capsys.readouterr().out.startswith(prompt)

    loaded = load_model(run, CPU)
    messages = [{"role": "user", "content": "안녕하세요"}]
    engine = build_engine(loaded, stop_ids=stop_ids(loaded.tokenizer))
    reply = engine.generate(prompt_ids(loaded.tokenizer, messages), SamplingConfig(max_new_tokens=12, temperature=0))
    monkeypatch.setattr("sys.stdin", io.StringIO("안녕하세요\n/exit\n"))
    assert main(["chat", str(run), "--max-new-tokens", "12", "--temperature", "0", "--device", "cpu"]) == 0
    assert f"봇> {reply}\n" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["llama3", "qwen2", "qwen3"])
def test_fused_and_int8_layers_honour_biases_norms_and_rope(name, imported, tmp_path, capsys):
    _, run = imported(name)
    plain = load_model(run, CPU).model
    x = torch.tensor([load_model(run, CPU).tokenizer.encode_prompt(PROMPT)])
    with torch.inference_mode():
        ref = plain(x)[0]
        fused = fuse_for_decoding(copy.deepcopy(plain))(x)[0]
        bf16 = fuse_for_decoding(copy.deepcopy(plain).to(torch.bfloat16))(x)[0].float()
    assert (fused - ref).abs().max() < 1e-4
    assert (bf16 - ref).abs().max() < 0.1 * ref.abs().max()

    out = tmp_path / "q8"
    assert main(["quantize", str(run), "--int8", "--out", str(out), "--no-eval"]) == 0
    capsys.readouterr()
    from krmini.infer.fast.quantize import quantize_model

    with torch.inference_mode():
        from_disk = load_model(out, CPU).model(x)[0]
        in_memory = quantize_model(copy.deepcopy(plain))(x)[0]
    assert torch.equal(from_disk, in_memory)  # biases and q/k norms survive the int8 checkpoint
    assert (from_disk - ref).abs().max() < 0.1 * ref.abs().max()
    assert main(["generate", str(out), "--prompt", "국회는", "--max-new-tokens", "6", "--device", "cpu"]) == 0


@pytest.mark.parametrize("name, exported_as", [("llama3", "LlamaForCausalLM"), ("qwen2", "Qwen2ForCausalLM"),
                                               ("qwen3", "Qwen3ForCausalLM"), ("mistral", "LlamaForCausalLM")])
def test_export_hf_of_an_imported_model_round_trips(name, exported_as, imported, tmp_path):
    hf_dir, run = imported(name)
    out = export_hf(load_model(run, CPU), tmp_path / "hf")
    original, original_tok = hf_pair(hf_dir)
    again, again_tok = hf_pair(out)
    assert type(again).__name__ == exported_as
    x = torch.tensor([original_tok(PROMPT)["input_ids"]])
    assert again_tok(PROMPT)["input_ids"] == x[0].tolist()
    with torch.no_grad():
        assert (again(x).logits - original(x).logits).abs().max() < 1e-4
    messages = CONVERSATIONS[0]
    assert (again_tok.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
            == original_tok.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])
    assert again.generation_config.eos_token_id == original.generation_config.eos_token_id


REFUSALS = [
    ("llama3", {"architectures": ["MixtralForCausalLM"]}, "architectures: ['MixtralForCausalLM'] is not supported"),
    ("mistral", {"sliding_window": 16}, "sliding_window: 16 is not supported"),
    ("qwen2", {"use_sliding_window": True}, "use_sliding_window: True is not supported"),
    ("qwen3", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}},
     "rope_parameters.rope_type: 'yarn' is not supported"),
    ("llama3", {"num_local_experts": 8}, "num_local_experts: 8 is not supported"),
    ("smollm2", {"hidden_act": "gelu"}, "hidden_act: 'gelu' is not supported"),
    ("qwen3", {"attention_bias": True}, "attention_bias: True is not supported"),
]


@pytest.mark.parametrize("name, change, message", REFUSALS, ids=[r[2].split(":")[0] for r in REFUSALS])
def test_unsupported_options_are_refused_in_one_line(name, change, message, imported, tmp_path, capsys):
    hf_dir, _ = imported(name)
    src = tmp_path / "src"
    shutil.copytree(hf_dir, src)
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    (src / "config.json").write_text(json.dumps({**config, **change}), encoding="utf-8")
    assert main(["import", "hf", str(src), str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "config.json" in err and err.count("\n") == 0, err
    assert not (tmp_path / "run").exists()


def test_a_window_as_long_as_the_context_is_full_attention(imported, tmp_path):
    hf_dir, _ = imported("mistral")
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    assert from_hf_config({**config, "sliding_window": 4096}) == from_hf_config(config)


def test_base_model_without_a_chat_template_is_told_to_generate(imported, tmp_path, capsys):
    hf_dir, _ = imported("smollm2")
    src = tmp_path / "base"
    shutil.copytree(hf_dir, src)
    config = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    del config["chat_template"]
    (src / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    run = import_hf(src, tmp_path / "run")
    assert main(["chat", str(run), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert "no chat template" in err and "krmini generate" in err and err.count("\n") == 0


def test_template_errors_are_one_line(imported, capsys, monkeypatch):
    """Mistral's template refuses roles that do not alternate; transformers raises, we say it in one line."""
    _, run = imported("mistral")
    tok = load_model(run, CPU).tokenizer
    from krmini.errors import KrminiError

    with pytest.raises(KrminiError, match="chat template: After the optional system message, conversation roles "
                                          "must alternate"):
        prompt_ids(tok, [{"role": "user", "content": "하나"}, {"role": "user", "content": "둘"}])


# Real checkpoints' config.json values (as published), for the translation alone: no weights needed.
PUBLISHED = {
    "Llama-3.2-1B": ({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
                      "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
                      "num_key_value_heads": 8, "head_dim": 64, "max_position_embeddings": 131072,
                      "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "vocab_size": 128256,
                      "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1,
                      "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                       "original_max_position_embeddings": 8192, "rope_type": "llama3"}}, 1.236e9),
    "SmolLM2-135M": ({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
                      "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                      "num_key_value_heads": 3, "max_position_embeddings": 8192, "rope_theta": 100000,
                      "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "vocab_size": 49152, "rope_scaling": None},
                     134.5e6),
    "Qwen2.5-0.5B": ({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
                      "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
                      "num_key_value_heads": 2, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
                      "rms_norm_eps": 1e-6, "sliding_window": 32768, "use_sliding_window": False,
                      "max_window_layers": 24, "tie_word_embeddings": True, "vocab_size": 151936}, 494.0e6),
    "Qwen3-0.6B": ({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 1024,
                    "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
                    "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960,
                    "rope_theta": 1000000, "rms_norm_eps": 1e-6, "sliding_window": None, "use_sliding_window": False,
                    "attention_bias": False, "tie_word_embeddings": True, "vocab_size": 151936}, 596.0e6),
    "Mistral-7B-v0.3": ({"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
                         "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                         "num_key_value_heads": 8, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
                         "rms_norm_eps": 1e-5, "sliding_window": None, "tie_word_embeddings": False,
                         "vocab_size": 32768}, 7.248e9),
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_configs_translate_to_their_parameter_counts(name):
    raw, params = PUBLISHED[name]
    config = from_hf_config(raw)
    assert config.qkv_bias == (raw["model_type"] == "qwen2") and config.qk_norm == (raw["model_type"] == "qwen3")
    assert config.head_dim == raw.get("head_dim", raw["hidden_size"] // raw["num_attention_heads"])
    assert (config.rope_scaling is not None) == bool(raw.get("rope_scaling"))
    assert abs(count_parameters(config)["total"] / params - 1) < 0.005
