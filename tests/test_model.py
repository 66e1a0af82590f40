"""The decoder's defining properties, each checked directly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from krmini.model import KVCache, LlamaModel, ModelConfig
from krmini.model.info import count_parameters
from krmini.model.llama import apply_rope, rope_cache
from krmini.train.config import load_run_config


def small_config(**kw) -> ModelConfig:
    base = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64)
    return ModelConfig(**{**base, **kw})


def test_shapes_and_loss_at_init():
    torch.manual_seed(0)
    model = LlamaModel(small_config())
    x = torch.randint(0, 300, (3, 17))
    logits, loss = model(x, x)
    assert logits.shape == (3, 17, 300)
    # at initialisation the prediction is near uniform: loss ≈ ln(vocab)
    assert abs(loss.item() - math.log(300)) < 0.1


def test_causal_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = LlamaModel(small_config()).eval()
    x = torch.randint(0, 300, (1, 20))
    y = x.clone()
    y[0, 12:] = torch.randint(0, 300, (8,))
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(y)
    assert torch.equal(a[0, :12], b[0, :12])
    assert not torch.allclose(a[0, 12:], b[0, 12:])


def test_kv_cache_matches_full_recompute():
    torch.manual_seed(0)
    model = LlamaModel(small_config()).eval()
    x = torch.randint(0, 300, (2, 24))
    with torch.no_grad():
        full, _ = model(x)
        cache = KVCache.empty(model.config, 2, 64, torch.device("cpu"), torch.float32)
        parts = [model(x[:, :10], cache=cache)[0]]  # prefill
        parts += [model(x[:, i : i + 1], cache=cache)[0] for i in range(10, 16)]  # one token at a time
        parts.append(model(x[:, 16:], cache=cache)[0])  # a chunk after a cached prefix
    assert cache.length == 24
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    cfg = small_config()
    cos, sin = rope_cache(cfg)
    torch.manual_seed(0)
    q, k = torch.randn(cfg.head_dim), torch.randn(cfg.head_dim)

    def score(m: int, n: int) -> float:
        qm = apply_rope(q.view(1, 1, 1, -1), cos[m : m + 1].unsqueeze(0), sin[m : m + 1].unsqueeze(0))
        kn = apply_rope(k.view(1, 1, 1, -1), cos[n : n + 1].unsqueeze(0), sin[n : n + 1].unsqueeze(0))
        return float((qm * kn).sum())

    assert score(5, 2) == pytest.approx(score(40, 37), abs=1e-4)
    assert score(5, 2) == pytest.approx(score(3, 0), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)


def reference_attention(attn, x, cos, sin):
    """Plain multi-head attention written out: softmax(QKᵀ/√d + causal) V."""
    B, T, _ = x.shape
    h, d = attn.n_heads, attn.head_dim
    q = attn.q_proj(x).view(B, T, h, d).transpose(1, 2)
    k = attn.k_proj(x).view(B, T, -1, d).transpose(1, 2)
    v = attn.v_proj(x).view(B, T, -1, d).transpose(1, 2)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return attn.o_proj((F.softmax(scores, -1) @ v).transpose(1, 2).reshape(B, T, -1))


def test_gqa_with_all_kv_heads_is_plain_multi_head_attention():
    torch.manual_seed(0)
    model = LlamaModel(small_config(num_key_value_heads=4))
    attn = model.model.layers[0].self_attn
    x = torch.randn(2, 9, 64)
    cos, sin = model.rope_cos[:9].unsqueeze(0), model.rope_sin[:9].unsqueeze(0)
    ours = attn(x, cos, sin, None, 0, None)
    torch.testing.assert_close(ours, reference_attention(attn, x, cos, sin), atol=1e-5, rtol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_heads():
    torch.manual_seed(0)
    gqa = LlamaModel(small_config(num_key_value_heads=2)).eval()
    mha = LlamaModel(small_config(num_key_value_heads=4)).eval()
    sd = gqa.state_dict()
    d = gqa.config.head_dim
    for i in range(gqa.config.num_hidden_layers):
        for name in ("k_proj", "v_proj"):
            key = f"model.layers.{i}.self_attn.{name}.weight"
            sd[key] = sd[key].view(2, d, -1).repeat_interleave(2, dim=0).reshape(4 * d, -1)
    mha.load_state_dict(sd)
    x = torch.randint(0, 300, (2, 15))
    with torch.no_grad():
        torch.testing.assert_close(gqa(x)[0], mha(x)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset,target", [("small", 134e6), ("medium", 468e6), ("large", 1.0e9)])
def test_preset_parameter_counts(preset, target):
    cfg = load_run_config(preset).model
    counted = count_parameters(cfg)["total"]
    assert abs(counted - target) / target < 0.03
    with torch.device("meta"):
        model = LlamaModel(cfg)
    assert model.num_parameters() == counted


def test_tied_embeddings_share_one_tensor():
    model = LlamaModel(small_config(tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.num_parameters() == count_parameters(model.config)["total"]


def test_logits_equal_transformers_llama():
    pytest.importorskip("transformers")
    from krmini.export.hf import to_hf_model

    torch.manual_seed(0)
    model = LlamaModel(small_config()).eval()
    hf = to_hf_model(model)
    x = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], hf(x).logits, atol=1e-5, rtol=1e-5)


def test_rope_tables_stay_fp32_in_bf16_model():
    model = LlamaModel(small_config()).to(torch.bfloat16)
    assert model.rope_cos.dtype == torch.float32
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
