"""Pre-packed bf16 weights: the same logits and tokens as `nn.Linear`, and no effect where they do not apply."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from krmini.infer.engine import DecodeBatch
from krmini.infer.packed import PackedLinear, can_pack, pack_for_decoding
from krmini.infer.sampling import SamplingConfig

pytestmark = pytest.mark.skipif(not can_pack(nn.Linear(2, 2).to(torch.bfloat16)),
                                reason="this PyTorch build has no oneDNN (mkldnn) CPU kernels")


def _tokens(model, prompts):
    batch = DecodeBatch(model, prompts, [SamplingConfig(max_new_tokens=12, temperature=0)] * len(prompts))
    out = [[] for _ in prompts]
    while batch.running:
        for row, tid, _ in batch.step():
            out[row].append(tid)
    return out


def test_packed_bf16_matches_unpacked_bit_for_bit(small_model):
    plain = copy.deepcopy(small_model).to(torch.bfloat16)
    packed = pack_for_decoding(copy.deepcopy(plain))
    layers = [m for m in packed.modules() if isinstance(m, PackedLinear)]
    assert len(layers) == 7 * small_model.config.num_hidden_layers + 1  # q k v o gate up down per block + head
    assert not any(type(m) is nn.Linear for m in packed.modules())
    ids = torch.tensor([[5, 17, 42, 7, 99, 3, 250, 11]])
    with torch.inference_mode():
        assert torch.equal(plain(ids)[0], packed(ids)[0])
    prompts = [[5, 17, 42], [7, 99, 3, 250, 11, 8, 9], [31]]  # left-padded batch of different lengths
    assert _tokens(packed, prompts) == _tokens(plain, prompts)


def test_fp32_and_training_copies_are_left_alone(small_model):
    fp32 = copy.deepcopy(small_model)
    assert pack_for_decoding(fp32) is fp32
    assert sum(type(m) is nn.Linear for m in fp32.modules()) == 7 * small_model.config.num_hidden_layers + 1
    assert "lm_head.weight" in fp32.state_dict()
