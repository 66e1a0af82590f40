"""The fast decoding paths honour the model's recipe switches: soft-capped logits and the ReLU² MLP."""

from __future__ import annotations

import copy

import pytest
import torch

from krmini.infer.engine import DecodeBatch
from krmini.infer.fast.compiled import CompiledDecoder
from krmini.infer.fast.fused import FusedMLP, fuse_for_decoding
from krmini.infer.fast.quantize import quantize_model
from krmini.infer.sampling import SamplingConfig
from krmini.model import LlamaModel, ModelConfig

CAP = 3.0
IDS = torch.tensor([[5, 17, 42, 7, 99, 3, 250, 11]])
PROMPTS = [[5, 17, 42], [7, 99, 3, 250, 11, 8, 9], [31]]  # a left-padded batch of different lengths


@pytest.fixture(scope="module")
def recipe_model() -> LlamaModel:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaModel(ModelConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=48,
                                       logit_softcap=CAP, mlp_act="relu2", qk_norm=True)).eval()
        with torch.no_grad():
            model.lm_head.weight.mul_(20)  # logits well past the cap, so capping changes them
        return model


def _tokens(model, decoder=None):
    batch = DecodeBatch(model, PROMPTS, [SamplingConfig(max_new_tokens=10, temperature=0)] * len(PROMPTS),
                        decoder=decoder)
    out, seen = [[] for _ in PROMPTS], []
    while batch.running:
        seen.append(batch.logits.abs().max().item())
        for row, tid, _ in batch.step():
            out[row].append(tid)
    return out, max(seen)


def _no_cache_tokens(model, prompt, n=10):
    seq = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0][0, -1].argmax()))
    return seq[len(prompt):]


def test_engine_decodes_the_no_cache_tokens_with_capped_logits(recipe_model):
    tokens, largest = _tokens(recipe_model)
    assert largest <= CAP
    assert tokens == [_no_cache_tokens(recipe_model, p) for p in PROMPTS]


def test_fused_relu2_model_computes_what_the_reference_computes(recipe_model):
    fused = fuse_for_decoding(copy.deepcopy(recipe_model))
    assert not any(isinstance(m, FusedMLP) for m in fused.modules())  # nothing to fuse without a gate
    with torch.inference_mode():
        want, got = recipe_model(IDS)[0], fused(IDS)[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got.abs().max() <= CAP
    assert _tokens(fused) == _tokens(recipe_model)


def test_int8_relu2_model_decodes_with_capped_logits(recipe_model):
    model = fuse_for_decoding(quantize_model(copy.deepcopy(recipe_model)))
    tokens, largest = _tokens(model)
    assert largest <= CAP and all(len(t) == 10 for t in tokens)


def test_decode_step_of_the_compiled_decoder_applies_the_cap(recipe_model):
    decoder = CompiledDecoder(recipe_model)
    decoder._step = decoder._eager  # the step Inductor would compile, run as is (compiling costs minutes here)
    assert _tokens(recipe_model, decoder) == _tokens(recipe_model)
