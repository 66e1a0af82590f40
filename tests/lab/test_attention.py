"""Step 4: NumPy attention equals PyTorch's, and the heat-map labels Hangul or warns."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from krmini.lab import plotting
from krmini.lab.attention import (
    MultiHeadAttention,
    scaled_dot_product_attention,
    sentence_heatmap,
    sinusoidal_positions,
)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sdpa_matches_torch(causal, dtype):
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, 3, 9, 16)).astype(dtype) for _ in range(3))
    out, weights = scaled_dot_product_attention(q, k, v, causal=causal)
    ref = F.scaled_dot_product_attention(*map(torch.from_numpy, (q, k, v)), is_causal=causal).numpy()
    assert out.dtype == dtype
    assert np.abs(out - ref).max() < 1e-6
    assert np.allclose(weights.sum(-1), 1.0, atol=1e-6)
    if causal:
        assert (np.triu(weights[0, 0], k=1) == 0).all()


def test_boolean_mask_matches_torch():
    rng = np.random.default_rng(1)
    q, k, v = (rng.normal(size=(1, 2, 5, 8)) for _ in range(3))
    mask = rng.random((5, 5)) > 0.3
    mask[:, 0] = True  # every query keeps at least one key
    out, _ = scaled_dot_product_attention(q, k, v, mask=mask)
    ref = F.scaled_dot_product_attention(*map(torch.from_numpy, (q, k, v)), attn_mask=torch.from_numpy(mask))
    assert np.abs(out - ref.numpy()).max() < 1e-12


@pytest.mark.parametrize("causal", [False, True])
def test_multi_head_matches_torch_module(causal):
    d, h, t = 24, 4, 7
    mha = MultiHeadAttention(d, h, seed=3)
    x = np.random.default_rng(2).normal(size=(2, t, d))
    ours, our_w = mha(x, causal=causal)

    ref = torch.nn.MultiheadAttention(d, h, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.from_numpy(np.concatenate([mha.wq.T, mha.wk.T, mha.wv.T])))
        ref.in_proj_bias.copy_(torch.from_numpy(np.concatenate([mha.bq, mha.bk, mha.bv])))
        ref.out_proj.weight.copy_(torch.from_numpy(mha.wo.T))
        ref.out_proj.bias.copy_(torch.from_numpy(mha.bo))
    tx = torch.from_numpy(x)
    blocked = torch.triu(torch.ones(t, t, dtype=torch.bool), 1) if causal else None
    theirs, their_w = ref(tx, tx, tx, attn_mask=blocked, average_attn_weights=False)
    assert np.abs(ours - theirs.detach().numpy()).max() < 1e-12
    assert np.abs(our_w - their_w.detach().numpy()).max() < 1e-12


def test_sinusoidal_positions_formula_and_relative_shift():
    pe = sinusoidal_positions(50, 16)
    assert pe[3, 4] == pytest.approx(np.sin(3 / 10000 ** (4 / 16)))
    assert pe[3, 5] == pytest.approx(np.cos(3 / 10000 ** (4 / 16)))
    # PE(pos + k) is a fixed rotation of PE(pos) in every (sin, cos) pair: relative positions are linear.
    k, i = 7, 2
    w = 10000 ** (-2 * i / 16)
    rot = np.array([[np.cos(k * w), -np.sin(k * w)], [np.sin(k * w), np.cos(k * w)]])
    pairs = pe[:, 2 * i : 2 * i + 2]
    assert np.abs(pairs[:-k] @ rot - pairs[k:]).max() < 1e-12


def test_heatmap_renders_hangul_or_warns_and_uses_indices(tmp_path, monkeypatch):
    path = sentence_heatmap("한국어 문장", tmp_path / "a.png", n_heads=2, dim=8)
    assert path.stat().st_size > 1000
    monkeypatch.setattr(plotting, "korean_font", lambda: None)
    plotting.warn_no_korean_font.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert plotting.token_labels(list("한국")) == ["0", "1"]
        assert plotting.token_labels(list("어요")) == ["0", "1"]
    assert len(caught) == 1 and "Korean font" in str(caught[0].message)
    assert plotting.token_labels(list("ab ")) == ["a", "b", "_"]
