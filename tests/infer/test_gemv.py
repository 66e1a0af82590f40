"""Our decoding kernels (bf16, int8): a float matmul's result, for any shape; built only where they can run."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from krmini import hardware
from krmini.infer.fast import fused as fused_module
from krmini.infer.fast import gemv
from krmini.infer.fast import quantize as quantize_module
from krmini.infer.fast.fused import GemvLinear, fuse_for_decoding
from krmini.infer.fast.quantize import Int8Linear, quantize_model, quantize_rows

needs_kernel = pytest.mark.skipif(not gemv.kernel_available(),
                                  reason="our bf16 kernel needs x86-64 with AVX512-BF16 and a C++ compiler")


@needs_kernel
@pytest.mark.parametrize("rows,out_features,in_features", [
    (1, 1280, 768),  # a decode step's qkv of the small preset: whole 128-value chunks
    (1, 7, 100),  # a row shorter than one chunk of four registers, ending in a partial register
    (1, 33, 2432 + 32 + 17),  # 19 chunks of four registers, one whole register, then a partial one
    (2, 33, 769),
    (4, 64, 32),
    (5, 100, 96),  # four rows of x together, then one
    (8, 17, 2432),  # batch 8: two passes of four rows
])
def test_kernel_equals_a_float_matmul_rounded_to_bf16(rows, out_features, in_features):
    gen = torch.Generator().manual_seed(rows * out_features + in_features)
    x = torch.randn(rows, in_features, generator=gen).bfloat16()
    w = torch.randn(out_features, in_features, generator=gen).bfloat16()
    want = x.float() @ w.float().T
    got = gemv.gemv_bf16(x, w)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, out_features)
    # only the order of the fp32 sums differs, so the results are within bf16's rounding (2^-9 relative)
    torch.testing.assert_close(got.float(), want, rtol=2**-8, atol=1e-4)


@needs_kernel
def test_gemv_linear_runs_the_kernel_for_a_few_rows_and_onednn_for_many(monkeypatch):
    weight = torch.randn(48, 64).bfloat16()
    layer = GemvLinear(weight)
    calls = []
    monkeypatch.setattr(fused_module, "gemv_bf16", lambda x, w: calls.append(x.shape[0]) or gemv.gemv_bf16(x, w))
    for shape in [(1, 1, 64), (2, 4, 64), (3, 7, 64)]:  # (batch, tokens, features): 1, 8, 21 rows
        x = torch.randn(shape).bfloat16()
        torch.testing.assert_close(layer(x).float(), F.linear(x, weight).float(), rtol=2**-8, atol=1e-3)
    assert calls == [1, 8]  # 21 rows (a prompt) went to oneDNN


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows,out_features,in_features", [
    (1, 768, 768),  # whole chunks of four registers (64 weights)
    (1, 9, 100),  # a chunk, two whole registers, then a partial one
    (2, 33, 2432 + 16 + 5),
    (5, 40, 64),  # four rows of x together, then one
])
def test_int8_kernel_equals_a_float_matmul_of_the_dequantized_weights(dtype, rows, out_features, in_features):
    gen = torch.Generator().manual_seed(rows * out_features + in_features)
    q, scale = quantize_rows(torch.randn(out_features, in_features, generator=gen))
    x, scale = torch.randn(rows, in_features, generator=gen).to(dtype), scale.to(dtype)  # a bf16 model's scales are bf16
    want = x.float() @ (q.float() * scale.float()[:, None]).T
    got = gemv.gemv_int8(x, q, scale)
    assert got.dtype == dtype and got.shape == (rows, out_features)
    tolerance = 2**-8 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(got.float(), want, rtol=tolerance, atol=1e-4, check_dtype=False)
    with pytest.raises(RuntimeError, match="expected one CPU scale per row, in x's dtype"):
        gemv.gemv_int8(x, q, scale.double())


@needs_kernel
def test_int8_layers_run_the_kernel_for_one_or_two_rows_once_fused(small_model, monkeypatch):
    model = quantize_model(copy.deepcopy(small_model)).to(torch.bfloat16)
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert not any(m.own_kernel for m in layers)  # training, evaluation and export keep PyTorch's kernel
    assert not any(m.own_kernel for m in fuse_for_decoding(copy.deepcopy(model), own_kernel=False).modules()
                   if isinstance(m, Int8Linear))
    fused = fuse_for_decoding(copy.deepcopy(model))
    assert not any(m.own_kernel for m in fused.modules() if isinstance(m, Int8Linear))  # 0.1 MB sits in cache
    monkeypatch.setattr(fused_module, "INT8_KERNEL_MIN_BYTES", 0)
    fuse_for_decoding(model)
    table = model.model.embed_tokens.head  # untied: looked up a row at a time, never multiplied
    assert all(m.own_kernel for m in layers if m is not table) and not table.own_kernel
    calls = []
    monkeypatch.setattr(quantize_module, "gemv_int8", lambda x, w, s: calls.append(x.shape[0]) or gemv.gemv_int8(x, w, s))
    head = model.lm_head
    for shape in [(1, 1, 64), (2, 1, 64), (1, 3, 64)]:  # 1, 2 and 3 rows
        x = torch.randn(shape).bfloat16()
        want = x.float() @ (head.weight.float() * head.weight_scale.float()[:, None]).T
        torch.testing.assert_close(head(x).float(), want, rtol=2**-7, atol=1e-3)
    assert calls == [1, 2]  # three rows went to torch._weight_int8pack_mm


def test_an_fp32_model_never_builds_the_kernels(small_model, monkeypatch):
    monkeypatch.setattr(fused_module, "kernel_available", lambda: pytest.fail("fp32 decoding asked for our kernels"))
    monkeypatch.setattr(fused_module, "INT8_KERNEL_MIN_BYTES", 0)
    fuse_for_decoding(copy.deepcopy(small_model))  # `krmini demo` generates in fp32: no build, no message


def test_kernel_is_tried_only_on_cpus_with_avx512_bf16(monkeypatch):
    monkeypatch.setattr(hardware, "VERDICTS", {})
    monkeypatch.setenv(hardware.SIMULATE_ENV, "avx2")
    hardware.cpu.cache_clear()
    monkeypatch.setattr(gemv, "_build", lambda: pytest.fail("the kernels were built for an AVX2-only CPU"))
    try:
        assert gemv.kernel_available() is False
        assert "lacks avx512f+avx512bw+avx512vl+avx512_bf16" in hardware.VERDICTS["krmini-kernels"].reason
    finally:
        hardware.cpu.cache_clear()


def test_a_failed_build_warns_and_decoding_keeps_pytorchs_kernels(monkeypatch, tmp_path, capsys):
    from torch.utils import cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension 'krmini_gemv': c++: not found")

    monkeypatch.setattr(hardware, "VERDICTS", {})
    monkeypatch.setattr(hardware, "cpu", lambda: hardware.CPU("test", "x86_64", frozenset(gemv.NEEDS[0])))
    monkeypatch.setattr(gemv.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    path = gemv.os.environ["PATH"]
    with pytest.warns(UserWarning, match=r"^the decoding kernels could not be built \(Error building extension "
                                         r"'krmini_gemv': c\+\+: not found\); decoding uses PyTorch's kernels$"):
        assert gemv.kernel_available() is False
    assert gemv.os.environ["PATH"] == path  # the builder's PATH change does not outlive the build
    # a first build says so (it takes seconds), in a directory of its own for this PyTorch version
    assert capsys.readouterr().err == (f"building the decoding kernels once, ~10 s "
                                       f"({tmp_path / f'krmini-gemv-torch{torch.__version__}'})\n")
    assert gemv.kernel_available() is False  # the verdict is cached: one build attempt, one warning
    monkeypatch.setattr(hardware, "VERDICTS", {})
    monkeypatch.setenv("KRMINI_GEMV", "0")  # the user's switch: no build attempted, no warning
    assert gemv.kernel_available() is False and not hardware.VERDICTS
