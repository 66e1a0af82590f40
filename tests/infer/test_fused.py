"""Fused decoding layers: the reference model's logits and tokens, with fewer and packed matmuls."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from krmini.infer.engine import DecodeBatch
from krmini.infer.fast import fused as fused_module
from krmini.infer.fast.fused import (
    FusedAttention,
    FusedMLP,
    GemvLinear,
    PackedLinear,
    can_pack,
    fuse_for_decoding,
    packing_available,
)
from krmini.infer.fast.gemv import kernel_available
from krmini.infer.fast.quantize import quantize_model
from krmini.infer.sampling import SamplingConfig

IDS = torch.tensor([[5, 17, 42, 7, 99, 3, 250, 11]])
PROMPTS = [[5, 17, 42], [7, 99, 3, 250, 11, 8, 9], [31]]  # a left-padded batch of different lengths


def _tokens(model, prompts=PROMPTS):
    batch = DecodeBatch(model, prompts, [SamplingConfig(max_new_tokens=12, temperature=0)] * len(prompts))
    out = [[] for _ in prompts]
    while batch.running:
        for row, tid, _ in batch.step():
            out[row].append(tid)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_model_computes_what_the_reference_computes(small_model, dtype):
    reference = copy.deepcopy(small_model).to(dtype)
    fused = fuse_for_decoding(copy.deepcopy(reference))
    layers = small_model.config.num_hidden_layers
    assert sum(isinstance(m, FusedAttention) for m in fused.modules()) == layers
    assert sum(isinstance(m, FusedMLP) for m in fused.modules()) == layers
    with torch.inference_mode():
        want, got = reference(IDS)[0], fused(IDS)[0]
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2  # a stacked matmul may sum in another order
    torch.testing.assert_close(got.float(), want.float(), atol=tolerance, rtol=tolerance)
    assert _tokens(fused) == _tokens(reference)
    batch = DecodeBatch(fused, PROMPTS, [SamplingConfig(max_new_tokens=2)] * len(PROMPTS))
    assert batch.cache.k[0].dtype == torch.float32  # a bf16 model's cache is fp32 on CPU (faster attention)


@pytest.mark.skipif(not kernel_available(), reason="our bf16 kernel needs x86-64 with AVX512-BF16 and a C++ compiler")
def test_bf16_matmuls_run_our_kernel_where_it_is_available(small_model):
    fused = fuse_for_decoding(copy.deepcopy(small_model).to(torch.bfloat16))
    assert sum(isinstance(m, GemvLinear) for m in fused.modules()) == 4 * small_model.config.num_hidden_layers + 1
    assert not any(isinstance(m, (PackedLinear, nn.Linear)) for m in fused.modules())


@pytest.mark.skipif(not packing_available(torch.bfloat16),
                    reason="oneDNN does not pack bf16 weights here (it needs AVX-512 or AVX-NE-CONVERT; probed)")
def test_bf16_weights_are_packed_and_small_fp32_ones_are_not(small_model, monkeypatch):
    monkeypatch.setattr(fused_module, "kernel_available", lambda: False)  # a CPU without AVX512-BF16
    packed = fuse_for_decoding(copy.deepcopy(small_model).to(torch.bfloat16))
    assert sum(isinstance(m, PackedLinear) for m in packed.modules()) == 4 * small_model.config.num_hidden_layers + 1
    assert not any(type(m) is nn.Linear for m in packed.modules())
    plain = fuse_for_decoding(copy.deepcopy(small_model))  # fp32 matrices this small stay with MKL
    assert not any(isinstance(m, PackedLinear) for m in plain.modules())
    assert can_pack(torch.zeros(32000, 192)) and not can_pack(torch.zeros(1024, 192))


def test_int8_layers_are_left_alone(small_model):
    q = quantize_model(copy.deepcopy(small_model))
    before = _tokens(q)
    fused = fuse_for_decoding(q)
    assert not any(isinstance(m, (FusedAttention, FusedMLP, PackedLinear)) for m in fused.modules())
    assert _tokens(fused) == before
