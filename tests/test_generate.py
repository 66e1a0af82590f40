"""Sampling rules, cached decoding, streaming without broken characters, prompt limits."""

from __future__ import annotations

import pytest
import torch

from krmini.errors import KrminiError
from krmini.infer.generate import SamplingConfig, TextStream, generate_ids, sample_next, stream_text
from krmini.infer.load import load_model


@pytest.fixture(scope="module")
def loaded(tiny_run):
    return load_model(tiny_run, torch.device("cpu"))


def test_greedy_is_argmax_and_temperature_zero_means_greedy():
    logits = torch.tensor([[0.1, 3.0, 0.2], [2.0, 0.0, 1.0]])
    assert sample_next(logits, SamplingConfig(temperature=0), None).tolist() == [1, 0]
    assert sample_next(logits, SamplingConfig(temperature=-1), None).tolist() == [1, 0]


def test_top_k_and_top_p_restrict_the_candidates():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    top2 = {int(sample_next(logits, SamplingConfig(temperature=1, top_k=2), g)) for _ in range(300)}
    assert top2 == {0, 1}
    nucleus = {int(sample_next(logits, SamplingConfig(temperature=1, top_k=0, top_p=0.7), g)) for _ in range(300)}
    assert nucleus == {0, 1}  # 0.5 < 0.7 ≤ 0.5 + 0.3
    first_only = {int(sample_next(logits, SamplingConfig(temperature=1, top_k=0, top_p=0.4), g)) for _ in range(50)}
    assert first_only == {0}


def test_cached_generation_equals_full_recomputation(loaded):
    model, tok = loaded.model, loaded.tokenizer
    prompt = [tok.bos_id, *tok.encode("대한민국은 민주공화국이다")]
    cached = list(generate_ids(model, prompt, SamplingConfig(max_new_tokens=24, temperature=0)))
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(24):
            seq.append(int(model(torch.tensor([seq]))[0][0, -1].argmax()))
    stop = seq.index(tok.eos_id, len(prompt)) if tok.eos_id in seq[len(prompt):] else len(seq)
    assert cached == seq[len(prompt) : stop]
    assert len(cached) > 0


def test_seeded_sampling_is_reproducible(loaded):
    cfg = SamplingConfig(max_new_tokens=20, temperature=1.0, seed=7)
    a = stream_text(loaded.model, loaded.tokenizer, "국회는", cfg)
    b = stream_text(loaded.model, loaded.tokenizer, "국회는", cfg)
    assert "".join(a) == "".join(b)


def test_stream_never_splits_a_hangul_syllable(loaded):
    tok = loaded.tokenizer
    rare = "뷁"  # not in a 2k vocabulary: three byte tokens
    ids = tok.encode(rare)
    assert len(ids) == 3
    stream = TextStream(tok)
    pieces = [stream.push(i) for i in ids]
    assert pieces == ["", "", "뷁"]
    assert "\ufffd" not in "".join(pieces)


def test_prompt_limits(loaded):
    model, tok = loaded.model, loaded.tokenizer
    context = model.config.max_position_embeddings
    with pytest.raises(KrminiError, match=rf"prompt: {context} tokens, but the model's context is {context}"):
        list(generate_ids(model, [5] * context, SamplingConfig()))
    with pytest.raises(KrminiError, match="prompt: empty"):
        list(stream_text(model, tok, "", SamplingConfig()))
    with pytest.raises(KrminiError, match=r"top_p: expected a value in \(0, 1\]"):
        list(generate_ids(model, [1, 5], SamplingConfig(top_p=0)))
    # max_new_tokens beyond the context is capped so prompt + output fits
    out = list(generate_ids(model, [1] + [5] * (context - 4), SamplingConfig(max_new_tokens=100, temperature=0)))
    assert len(out) <= 4
