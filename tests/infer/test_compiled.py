"""The compiled decode step: the eager engine's tokens, from a fixed-size cache with a tensor write slot."""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo.config
import torch._inductor.config

from krmini import hardware
from krmini.infer.engine import DecodeBatch
from krmini.infer.fast import compiled as compiled_module
from krmini.infer.fast.compiled import CompiledDecoder, SlotCache, cache_length
from krmini.infer.fast.fused import fuse_for_decoding
from krmini.infer.fast.gemv import kernel_available
from krmini.infer.fast.quantize import quantize_model
from krmini.infer.sampling import SamplingConfig
from krmini.model.llama import attention

PROMPTS = [[5, 17, 42], [7, 99, 3, 250, 11, 8, 9], [31]]  # a left-padded batch of different lengths


def _run(model, prompts, decoder=None, new_tokens=12):
    batch = DecodeBatch(model, prompts, [SamplingConfig(max_new_tokens=new_tokens, temperature=0)] * len(prompts),
                        decoder=decoder)
    out = [[] for _ in prompts]
    while batch.running:
        for row, tid, _ in batch.step():
            out[row].append(tid)
    return out, batch


@pytest.fixture(scope="module")
def compiled(small_model):
    """One compiled decoder shared by the tests of graphs and caches, without the micro-GEMM autotuning
    (minutes on 2 cores; `test_autotuned_step_gives_the_eager_tokens` covers it)."""
    model = fuse_for_decoding(copy.deepcopy(small_model))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compiled_module, "CPU_GEMM", {})
        return model, CompiledDecoder(model)


def test_cache_length_rounds_up_to_a_bucket_within_the_context():
    assert cache_length(1, 2048) == 256 and cache_length(256, 2048) == 256 and cache_length(257, 2048) == 512
    assert cache_length(1900, 2048) == 2048 and cache_length(30, 48) == 48


def test_compiled_decoding_gives_the_eager_tokens(compiled):
    model, decoder = compiled
    want, _ = _run(model, [PROMPTS[1]])
    got, batch = _run(model, [PROMPTS[1]], decoder)
    assert got == want and len(got[0]) == 12
    assert decoder._step is not decoder._eager  # it really ran compiled (a failed compile falls back)
    # the cache is the bucketed size (here the whole 48-token context) and holds prompt + new tokens
    assert batch.cache.max_len == 48 and batch.cache.length == 7 + 11
    assert torch._inductor.config.freezing is False  # frozen weights only inside the decoder's own graph


@pytest.mark.integration  # minutes of CPU in `make test`; `make test-integration` runs it
def test_autotuned_step_gives_the_eager_tokens(small_model):
    model = fuse_for_decoding(copy.deepcopy(small_model))
    decoder = CompiledDecoder(model)
    assert _run(model, [PROMPTS[0]], decoder, new_tokens=3)[0] == _run(model, [PROMPTS[0]], new_tokens=3)[0]
    assert decoder._step is not decoder._eager


def test_compiled_decoding_of_a_padded_batch_matches_rows_run_alone(compiled, small_model):
    model, decoder = compiled
    got, _ = _run(model, PROMPTS, decoder)
    assert got == [_run(small_model, [p])[0][0] for p in PROMPTS]


def test_a_new_generation_length_reuses_the_compiled_graph(compiled):
    """The per-step positions keep their strides whatever the length, so Dynamo's guards still pass."""
    model, decoder = compiled
    for prompts in (PROMPTS, [PROMPTS[0]]):  # after a batch, Dynamo's graph is dynamic in the batch size
        _run(model, prompts, decoder, new_tokens=3)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for prompts in (PROMPTS, [PROMPTS[0]]):
        _run(model, prompts, decoder, new_tokens=20)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


@pytest.mark.skipif(not kernel_available(), reason="our kernels need x86-64 with AVX512-BF16 and a C++ compiler")
@pytest.mark.parametrize("kind", ["bf16", "int8"])
def test_compiled_decoding_calls_our_kernels_and_gives_the_eager_tokens(small_model, kind, monkeypatch):
    monkeypatch.setattr("krmini.infer.fast.fused.INT8_KERNEL_MIN_BYTES", 0)  # the int8 kernel for a model this small too
    model = copy.deepcopy(small_model)
    model = (quantize_model(model) if kind == "int8" else model).to(torch.bfloat16)
    model = fuse_for_decoding(model)
    decoder = CompiledDecoder(model)
    want, _ = _run(model, [PROMPTS[1]])
    _run(model, [PROMPTS[1]], decoder, new_tokens=2)  # compile outside the profile
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        got, _ = _run(model, [PROMPTS[1]], decoder)
    assert got == want and decoder._step is not decoder._eager
    calls = sum(e.count for e in prof.key_averages() if e.key == f"krmini::gemv_{kind}")
    matmuls = {"bf16": 4, "int8": 7}[kind] * small_model.config.num_hidden_layers + 1  # int8 layers are not fused
    assert calls >= 11 * matmuls  # every matmul of the 11 compiled steps


def test_slot_attention_equals_sdpa_over_the_written_slots():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 1, 8, generator=gen)  # 6 query heads over 2 key/value heads
    k, v = torch.randn(2, 2, 16, 8, generator=gen), torch.randn(2, 2, 16, 8, generator=gen)
    mask = torch.zeros(2, 1, 1, 16, dtype=torch.bool)
    mask[0, ..., 3:10] = True  # a left-padded row
    mask[1, ..., :10] = True
    got = SlotCache([k], [v], torch.tensor([9])).attend(q, k, v, mask)
    assert torch.allclose(got, attention(q, k, v, mask), atol=1e-6)


def test_large_bf16_models_skip_the_micro_gemm_autotuning(small_model, monkeypatch):
    monkeypatch.setattr(compiled_module, "BF16_AUTOTUNE_MAX_BYTES", 0)
    bf16 = copy.deepcopy(small_model).to(torch.bfloat16)
    assert compiled_module._streams_bf16_weights(fuse_for_decoding(copy.deepcopy(bf16)))
    assert not compiled_module._streams_bf16_weights(copy.deepcopy(small_model))  # fp32
    assert not compiled_module._streams_bf16_weights(quantize_model(copy.deepcopy(small_model)).to(torch.bfloat16))
    monkeypatch.setattr(compiled_module, "BF16_AUTOTUNE_MAX_BYTES", 64 << 20)
    assert not compiled_module._streams_bf16_weights(bf16)


@pytest.mark.integration  # minutes of CPU in `make test`; `make test-integration` runs it
def test_several_decoders_in_one_process_do_not_exhaust_dynamos_recompile_limit(small_model, monkeypatch):
    """Every model is a new graph of one function; Dynamo's per-function limit (8 by default, 1 here)
    must not turn the second decoder into an error."""
    monkeypatch.setattr("krmini.infer.fast.compiled.CPU_GEMM", {})  # skip the autotuning: this is about graphs
    with torch._dynamo.config.patch(recompile_limit=1):  # (the config module does not survive monkeypatch)
        for _ in range(2):  # two models: two graphs
            model = fuse_for_decoding(copy.deepcopy(small_model))
            assert _run(model, [PROMPTS[0]], CompiledDecoder(model), new_tokens=3)[0] == _run(
                model, [PROMPTS[0]], new_tokens=3)[0]


def test_a_failed_compile_falls_back_to_the_eager_step_with_one_line(small_model, monkeypatch, capsys):
    monkeypatch.setattr(hardware, "_SAID", set())
    monkeypatch.setattr("krmini.infer.fast.compiled.CPU_GEMM", {"cpp.cxx": ("/nonexistent/c++",)})  # no C++ compiler
    model = fuse_for_decoding(copy.deepcopy(small_model))
    decoder = CompiledDecoder(model)
    assert _run(model, [PROMPTS[0]], decoder, new_tokens=3)[0] == _run(model, [PROMPTS[0]], new_tokens=3)[0]
    assert _run(model, [PROMPTS[0]], decoder, new_tokens=3)[0] == _run(model, [PROMPTS[0]], new_tokens=3)[0]
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("--compile: torch.compile could not compile the decode step (") and "decoding without it" in err
