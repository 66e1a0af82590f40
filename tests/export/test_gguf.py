"""GGUF export: the file holds what llama.cpp reads, RoPE and tokenizer conventions are converted
right (checked in pure Python), and llama.cpp itself reproduces our greedy tokens where installed."""

from __future__ import annotations

import heapq

import pytest
import torch

from krmini.cli import main
from krmini.export.gguf import export_gguf, interleave_rope_rows
from krmini.export.gguf_vocab import spm_vocab
from krmini.infer.generate import SamplingConfig, generate_ids
from krmini.infer.load import load_model
from krmini.model import ModelConfig
from krmini.model.llama import apply_rope, rope_cache
from krmini.tokenizer import KoTokenizer
from krmini.tokenizer.tokenizer import PRETOKENIZERS

gguf = pytest.importorskip("gguf", reason="gguf not installed (pip install 'krmini[gguf]')")

PROMPT = "대한민국은 민주공화국이다. 모든 국민은"
TEXTS = [PROMPT, "국회는 2024년 12월 3일에 회의를 열었다.\n제1조 ① 헌법", "ㅋㅋㅋ 정말 재밌어요!! 😀 쀏"]


@pytest.fixture(scope="module")
def loaded(tiny_run):
    return load_model(tiny_run, torch.device("cpu"))


def test_interleaved_rope_on_permuted_rows_gives_the_same_scores():
    """llama.cpp rotates adjacent pairs; after the row permutation its q·k equals ours."""
    cfg = ModelConfig(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    d, T = cfg.head_dim, 7
    torch.manual_seed(0)
    wq, wk, x = torch.randn(2 * d, 32), torch.randn(d, 32), torch.randn(T, 32)
    cos, sin = rope_cache(cfg)
    q_ours = apply_rope((x @ wq.T).view(1, T, 2, d).transpose(1, 2), cos[None, :T], sin[None, :T])
    k_ours = apply_rope((x @ wk.T).view(1, T, 1, d).transpose(1, 2), cos[None, :T], sin[None, :T])

    def rope_adjacent(v):  # v: (H, T, d); pairs (2i, 2i+1) rotated by position * theta_i
        pos = torch.arange(T, dtype=torch.float32)[:, None]
        theta = 1.0 / cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
        c, s = torch.cos(pos * theta), torch.sin(pos * theta)
        a, b = v[..., 0::2], v[..., 1::2]
        return torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2)

    q_cpp = rope_adjacent((x @ interleave_rope_rows(wq, 2).T).view(T, 2, d).transpose(0, 1))
    k_cpp = rope_adjacent((x @ interleave_rope_rows(wk, 1).T).view(T, 1, d).transpose(0, 1))
    assert torch.allclose(q_ours[0] @ k_ours[0].transpose(-1, -2), q_cpp @ k_cpp.transpose(-1, -2), atol=1e-4)


def spm_tokenize(text: str, tokens: list[str], scores: list[float]) -> list[int]:
    """llama.cpp's "llama" tokenizer, as it works: merge the best-scoring adjacent pair, then bytes."""
    index = {t: i for i, t in enumerate(tokens)}
    symbols = list(text.replace(" ", "▁"))
    alive = [True] * len(symbols)
    nxt, prv = list(range(1, len(symbols) + 1)), list(range(-1, len(symbols) - 1))
    heap: list = []

    def push(left: int) -> None:
        if left < 0 or nxt[left] >= len(symbols):
            return
        joined = symbols[left] + symbols[nxt[left]]
        if joined in index:
            heapq.heappush(heap, (-scores[index[joined]], left, joined))

    for i in range(len(symbols) - 1):
        push(i)
    while heap:
        _, left, joined = heapq.heappop(heap)
        right = nxt[left]
        if not alive[left] or right >= len(symbols) or symbols[left] + symbols[right] != joined:
            continue
        symbols[left], alive[right] = joined, False
        nxt[left] = nxt[right]
        if nxt[left] < len(symbols):
            prv[nxt[left]] = left
        push(prv[left])
        push(left)
    out = []
    for i, s in enumerate(symbols):
        if alive[i]:
            out += [index[s]] if s in index else [index[f"<0x{b:02X}>"] for b in s.encode("utf-8")]
    return out


def test_vocab_scores_reproduce_our_bpe(loaded):
    vocab = spm_vocab(loaded.tokenizer, loaded.model.config.vocab_size)
    tokens, scores, types = vocab.tokens, vocab.scores, vocab.types
    assert (vocab.bos_id, vocab.eos_id, vocab.pad_id) == (1, 2, 0)
    assert len(tokens) == len(scores) == len(types) == loaded.model.config.vocab_size
    assert types[loaded.tokenizer.bos_id] == gguf.TokenType.CONTROL and types[tokens.index("<0xEA>")] == gguf.TokenType.BYTE
    for text in TEXTS:
        assert spm_tokenize(text, tokens, scores) == loaded.tokenizer.encode(text), text


@pytest.mark.parametrize("rule", list(PRETOKENIZERS))
def test_llama_cpps_tokenizer_reproduces_every_pretokenization_rule(rule):
    """llama.cpp's "llama" tokenizer knows no pre-tokenizer: it gives our ids because no learned token
    spans a cut of any rule (a space, a digit, a punctuation mark, a Hangul/other boundary)."""
    from krmini.data.prepare import sample_texts
    from krmini.demo import konlpy_corpus

    texts = [t[:1500] for t in sample_texts(konlpy_corpus(), "text", 400_000)]
    tokenizer = KoTokenizer.train(texts, vocab_size=3000, show_progress=False, pretokenizer=rule)
    vocab = spm_vocab(tokenizer, tokenizer.vocab_size)
    mixed = ["GPU가 2024년에 나왔다. \"좋다!\" 했다... OK? AI는 ㅋㅋ", "제3조(정의) ① 'AI'란 인공지능을 말한다."]
    for text in TEXTS + mixed + texts[:40]:
        assert spm_tokenize(text, vocab.tokens, vocab.scores) == tokenizer.encode(text), text[:60]


def test_gguf_metadata_and_tensors(loaded, tmp_path):
    path = export_gguf(loaded, tmp_path / "m.gguf", "f16")
    reader = gguf.GGUFReader(path)
    fields = reader.fields
    c = loaded.model.config

    def scalar(key):
        return fields[key].parts[fields[key].data[0]][0]

    assert bytes(fields["general.architecture"].parts[-1]).decode() == "llama"
    assert bytes(fields["tokenizer.ggml.model"].parts[-1]).decode() == "llama"
    assert scalar("llama.block_count") == c.num_hidden_layers
    assert scalar("llama.attention.head_count_kv") == c.num_key_value_heads
    assert scalar("tokenizer.ggml.bos_token_id") == loaded.tokenizer.bos_id
    assert not scalar("tokenizer.ggml.add_space_prefix")
    names = {t.name: t for t in reader.tensors}
    assert len(names) == 2 + 9 * c.num_hidden_layers + (0 if c.tie_word_embeddings else 1)
    assert names["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert names["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_bf16_keeps_the_bits_of_a_bf16_model(loaded, tmp_path):
    path = export_gguf(loaded, tmp_path / "m.gguf", "bf16")
    tensor = {t.name: t for t in gguf.GGUFReader(path).tensors}["blk.0.ffn_down.weight"]
    assert tensor.tensor_type == gguf.GGMLQuantizationType.BF16
    expected = loaded.model.model.layers[0].mlp.down_proj.weight.detach().to(torch.bfloat16)
    stored = torch.from_numpy(tensor.data.copy()).view(torch.bfloat16).reshape(expected.shape)
    assert torch.equal(stored, expected)


def test_refuses_existing_file(tiny_run, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep")
    assert main(["export", "gguf", str(tiny_run), str(out)]) == 1
    assert "--force" in capsys.readouterr().err and out.read_bytes() == b"keep"
    assert main(["export", "gguf", str(tiny_run), str(out), "--type", "q8_0", "--force"]) == 0
    assert out.read_bytes()[:4] == b"GGUF"


def test_a_directory_target_gets_the_file_inside_it(tiny_run, tmp_path, capsys):
    out = tmp_path / "models"
    out.mkdir()
    (out / "other.txt").write_text("keep", encoding="utf-8")
    inside = out / f"{tiny_run.name}-q8_0.gguf"
    assert main(["export", "gguf", str(tiny_run), str(out), "--type", "q8_0"]) == 0
    assert f"→ {inside} (" in capsys.readouterr().out and inside.read_bytes()[:4] == b"GGUF"
    assert sorted(p.name for p in out.iterdir()) == sorted(["other.txt", inside.name])
    assert main(["export", "gguf", str(tiny_run), str(out), "--type", "q8_0"]) == 1  # the file exists now
    assert capsys.readouterr().err == f"krmini: error: {inside}: already exists; choose another path or pass --force to replace it\n"
    assert main(["export", "gguf", str(tiny_run), str(out), "--type", "q8_0", "--force"]) == 0
    assert (out / "other.txt").read_text(encoding="utf-8") == "keep" and inside.read_bytes()[:4] == b"GGUF"
    assert main(["export", "gguf", str(tiny_run), str(tiny_run), "--force"]) == 1  # inside the run it reads
    assert "lies inside the input" in capsys.readouterr().err and not (tiny_run / f"{tiny_run.name}-f16.gguf").exists()


@pytest.mark.llama_cpp
@pytest.mark.parametrize("kind", ["f32", "f16", "bf16"])
def test_llama_cpp_reproduces_our_greedy_tokens(loaded, tmp_path, kind):
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python not installed (compiles llama.cpp: pip install 'krmini[gguf]')")
    path = export_gguf(loaded, tmp_path / f"m-{kind}.gguf", kind)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=loaded.model.config.max_position_embeddings,
                          n_threads=1, verbose=False)
    prompt = [loaded.tokenizer.bos_id, *loaded.tokenizer.encode(PROMPT)]
    assert llm.tokenize(PROMPT.encode("utf-8"), add_bos=True) == prompt
    ours = list(generate_ids(loaded.model, prompt, SamplingConfig(max_new_tokens=32, temperature=0)))
    theirs = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
        theirs.append(token)
        if len(theirs) == len(ours):
            break
    assert theirs == ours
