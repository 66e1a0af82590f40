"""Step 5: our encoder/decoder layers equal PyTorch's, and the model learns to reverse sequences."""

import pytest
import torch
from torch import nn

from krmini.lab.transformer import (
    DecoderLayer,
    EncoderLayer,
    MultiHeadAttention,
    TransformerConfig,
    train_reversal,
)


def copy_attention(ours: MultiHeadAttention, theirs: nn.MultiheadAttention) -> None:
    w_q, w_k, w_v = theirs.in_proj_weight.chunk(3)
    b_q, b_k, b_v = theirs.in_proj_bias.chunk(3)
    for lin, w, b in ((ours.q, w_q, b_q), (ours.k, w_k, b_k), (ours.v, w_v, b_v)):
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    ours.out.weight.copy_(theirs.out_proj.weight)
    ours.out.bias.copy_(theirs.out_proj.bias)


def copy_common(ours, theirs, norms) -> None:
    ours.ff[0].load_state_dict(theirs.linear1.state_dict())
    ours.ff[3].load_state_dict(theirs.linear2.state_dict())
    for i, res in enumerate(norms, start=1):
        res.norm.load_state_dict(getattr(theirs, f"norm{i}").state_dict())


@pytest.mark.parametrize("pre_norm", [False, True])
@torch.no_grad()
def test_layers_equal_torch_reference(pre_norm):
    torch.manual_seed(0)
    cfg = TransformerConfig(d_model=32, n_heads=4, d_ff=64, pre_norm=pre_norm)
    kw = dict(dim_feedforward=64, dropout=0.0, batch_first=True, norm_first=pre_norm, dtype=torch.float64)
    x, memory = torch.randn(2, 7, 32, dtype=torch.float64), torch.randn(2, 5, 32, dtype=torch.float64)

    enc, ref_enc = EncoderLayer(cfg).double().eval(), nn.TransformerEncoderLayer(32, 4, **kw).eval()
    copy_attention(enc.attn, ref_enc.self_attn)
    copy_common(enc, ref_enc, (enc.res1, enc.res2))
    assert (enc(x) - ref_enc(x)).abs().max() < 1e-12

    dec, ref_dec = DecoderLayer(cfg).double().eval(), nn.TransformerDecoderLayer(32, 4, **kw).eval()
    copy_attention(dec.self_attn, ref_dec.self_attn)
    copy_attention(dec.cross_attn, ref_dec.multihead_attn)
    copy_common(dec, ref_dec, (dec.res1, dec.res2, dec.res3))
    causal = nn.Transformer.generate_square_subsequent_mask(7, dtype=torch.float64)
    assert (dec(x, memory) - ref_dec(x, memory, tgt_mask=causal, tgt_is_causal=True)).abs().max() < 1e-12


@pytest.mark.parametrize("pre_norm", [False, True])
def test_learns_sequence_reversal(pre_norm):
    _, result = train_reversal(TransformerConfig(pre_norm=pre_norm), steps=250, lr=1e-3)
    assert result.token_accuracy >= 0.99, result.token_accuracy
    assert result.losses[-1] < 0.05 < 2.0 < result.losses[0]
