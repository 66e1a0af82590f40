"""GGUF export of imported open models (`open_models.py`: small random checkpoints of each family with a
tokenizer trained on Korean text): the file says what llama.cpp needs (architecture, head_dim, biases,
q/k norms, Llama 3's RoPE factors, the byte-level vocabulary with its merges and pre-tokenizer type, stop
ids, chat template), and where llama-cpp-python is installed, llama.cpp tokenises a Korean prompt to the
checkpoint tokenizer's ids and greedy-generates our engine's tokens.

The fp32 round trip of every family runs in `make test` (tiny models; skipped without llama-cpp-python) and
must match all 32 tokens; the f16 (first 16 tokens) and q8_0 (first 4) round trips are `integration`.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tokenizers import Tokenizer

from krmini.cli import main
from krmini.errors import KrminiError
from krmini.export.gguf import export_gguf, rope_factors
from krmini.export.gguf_vocab import gguf_vocab
from krmini.infer.generate import SamplingConfig, generate_ids
from krmini.infer.load import load_model
from krmini.model.llama import rope_cache
from krmini.tokenizer import KoTokenizer
from tests.export.open_models import FAMILIES

gguf = pytest.importorskip("gguf", reason="gguf not installed (pip install 'krmini[gguf]')")

NAMES = [f.name for f in FAMILIES]
CPU = torch.device("cpu")
PROMPT = "대한민국은 민주공화국이다. 모든 국민은 법 앞에 평등하다."
EXPECTED = {  # family: (architecture, tokenizer model, pre-tokenizer type, add_bos)
    "llama3": ("llama", "gpt2", "llama-bpe", True), "smollm2": ("llama", "gpt2", "gpt-2", False),
    "qwen2": ("qwen2", "gpt2", "qwen2", False), "qwen3": ("qwen3", "gpt2", "qwen2", False),
    "mistral": ("llama", "llama", None, True),
}


def _fields(path):
    fields = gguf.GGUFReader(path).fields

    def value(key):
        f = fields.get(key)
        if f is None:
            return None
        part = f.parts[f.data[0]]
        return bytes(part).decode() if f.types[0] == gguf.GGUFValueType.STRING else part[0]

    return value


@pytest.mark.parametrize("name", NAMES)
def test_metadata_and_tensors(imported, tmp_path, name):
    loaded = load_model(imported(name)[1], CPU)
    c = loaded.model.config
    path = export_gguf(loaded, tmp_path / "m.gguf", "f16")
    value = _fields(path)
    arch, model, pre, add_bos = EXPECTED[name]
    assert value("general.architecture") == arch and value("tokenizer.ggml.model") == model
    assert value("tokenizer.ggml.pre") == pre and bool(value("tokenizer.ggml.add_bos_token")) == add_bos
    assert value(f"{arch}.attention.key_length") == value(f"{arch}.rope.dimension_count") == c.head_dim
    assert value(f"{arch}.attention.head_count_kv") == c.num_key_value_heads
    assert value(f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(c.rms_norm_eps)
    assert value("tokenizer.chat_template") == loaded.tokenizer.chat_template
    assert value("tokenizer.ggml.eos_token_id") == loaded.tokenizer.eos_id
    stops = {value("tokenizer.ggml.eos_token_id"), value("tokenizer.ggml.eot_token_id")} - {None}
    assert stops == set(loaded.tokenizer.stop_ids) | {loaded.tokenizer.eos_id}
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    assert ("output.weight" in tensors) == (not c.tie_word_embeddings)
    assert ("blk.1.attn_k.bias" in tensors) == (name == "qwen2")
    assert ("blk.1.attn_q_norm.weight" in tensors) == (name == "qwen3")
    assert ("rope_freqs.weight" in tensors) == (name == "llama3")
    assert tensors["token_embd.weight"].shape[1] == c.vocab_size  # Qwen's padded rows included
    assert len(gguf.GGUFReader(path).fields["tokenizer.ggml.tokens"].data) == c.vocab_size


def test_llama3_rope_factors_give_our_frequencies(imported):
    """llama.cpp divides each base frequency by rope_freqs; that must land on our scaled frequencies."""
    model = load_model(imported("llama3")[1], CPU).model
    c = model.config
    base = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float64) / c.head_dim))
    cos, sin = rope_cache(c)
    half = c.head_dim // 2
    ours = torch.atan2(sin[1, :half].double(), cos[1, :half].double())  # position 1: the angle is the frequency
    factors = rope_factors(model).double()
    assert torch.allclose(base / factors, ours, rtol=1e-5, atol=0)
    assert factors.min() == 1.0 and factors.max() == pytest.approx(c.rope_scaling.factor)  # short kept, long / 8


def _with_pre_tokenizer(tokenizer: KoTokenizer, pre: dict | None) -> KoTokenizer:
    spec = json.loads(tokenizer.tok.to_str())
    spec["pre_tokenizer"] = pre
    return KoTokenizer(Tokenizer.from_str(json.dumps(spec)), tokenizer.foreign)


def test_unknown_pre_tokenizer_is_refused_in_one_line(imported):
    tok = load_model(imported("qwen2")[1], CPU).tokenizer
    other = _with_pre_tokenizer(tok, {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\p{N}{1,2}| ?\p{L}+"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]})
    with pytest.raises(KrminiError, match=r"^run/tokenizer: pre_tokenizer: Split \+ ByteLevel matches none of llama"):
        gguf_vocab(other, 1024, "run/tokenizer")
    digits = _with_pre_tokenizer(tok, {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]})
    assert gguf_vocab(digits, 1024).pre == "smollm"  # SmolLM2's own pipeline


def _modelfile(imported, tmp_path, name):
    run = imported(name)[1]
    assert main(["export", "gguf", str(run), str(tmp_path / "m.gguf"), "--type", "q8_0", "--modelfile"]) == 0
    return (tmp_path / "m.Modelfile").read_text(encoding="utf-8")


def test_modelfile_chatml_for_qwen2(imported, tmp_path):
    text = _modelfile(imported, tmp_path, "qwen2")
    assert text.startswith("FROM ./m.gguf\n") and (tmp_path / "m.gguf").read_bytes()[:4] == b"GGUF"
    assert ('TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
            '<|im_start|>assistant\n"""') in text
    assert text.count("PARAMETER stop") == 2
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|endoftext|>"' in text


def test_modelfile_header_format_for_llama3(imported, tmp_path, capsys):
    text = _modelfile(imported, tmp_path, "llama3")
    assert "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}" in text
    assert text.rstrip().endswith('PARAMETER stop "<|end_of_text|>"') and 'PARAMETER stop "<|eot_id|>"' in text
    assert "<|begin_of_text|>" not in text  # llama.cpp adds the BOS (add_bos_token)
    capsys.readouterr()
    # the Modelfile exists now: refused before the export, as the GGUF is
    assert main(["export", "gguf", str(imported("llama3")[1]), str(tmp_path / "m.gguf"), "--modelfile"]) == 1
    assert "m.Modelfile: already exists" in capsys.readouterr().err


def test_modelfile_for_our_model(tiny_run, tmp_path):
    assert main(["export", "gguf", str(tiny_run), str(tmp_path), "--type", "q8_0", "--modelfile"]) == 0
    text = (tmp_path / f"{tiny_run.name}-q8_0.Modelfile").read_text(encoding="utf-8")
    assert text.splitlines()[:2] == [f"FROM ./{tiny_run.name}-q8_0.gguf",
                                     'TEMPLATE """{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}<|end|>'
                                     '{{ end }}<|assistant|>"""']
    assert 'PARAMETER stop "<|end|>"' in text and 'PARAMETER stop "<|eos|>"' in text


def _round_trip(imported, tmp_path, name, kind, agree):
    """llama.cpp's greedy tokens from the GGUF equal ours on the first `agree` of 32 (at f16 ours runs with
    its matrices rounded to f16 as the file stores them; llama.cpp also rounds activations, so a near tie
    may go the other way later)."""
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python not installed (compiles llama.cpp: pip install 'krmini[gguf]')")
    loaded = load_model(imported(name)[1], CPU)
    path = export_gguf(loaded, tmp_path / f"{name}-{kind}.gguf", kind)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=loaded.model.config.max_position_embeddings, n_threads=1,
                          verbose=False)
    prompt = loaded.tokenizer.encode_prompt(PROMPT)
    assert llm.tokenize(PROMPT.encode("utf-8"), add_bos=True) == prompt
    model = copy.deepcopy(loaded.model)
    if kind == "f16":
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.copy_(p.half().float())
    ours = list(generate_ids(model, prompt, SamplingConfig(max_new_tokens=32, temperature=0)))
    theirs = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
        theirs.append(token)
        if len(theirs) == 32:
            break
    assert len(ours) == 32 and theirs[:agree] == ours[:agree]


@pytest.mark.llama_cpp
@pytest.mark.parametrize("name", NAMES)
def test_llama_cpp_tokenises_and_generates_as_we_do(imported, tmp_path, name):
    _round_trip(imported, tmp_path, name, "f32", 32)


@pytest.mark.llama_cpp
@pytest.mark.integration
@pytest.mark.parametrize(("kind", "agree"), [("f16", 16), ("q8_0", 4)])
@pytest.mark.parametrize("name", ["llama3", "qwen2"])
def test_llama_cpp_round_trip_at_lower_precision(imported, tmp_path, name, kind, agree):
    _round_trip(imported, tmp_path, name, kind, agree)
