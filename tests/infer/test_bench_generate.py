"""The generate benchmark on a micro model: every figure is there and consistent."""

from __future__ import annotations

import pytest

from krmini.bench.generate import format_table, placeholder_vocab, run_benchmark
from krmini.infer.fast.gemv import kernel_available


def test_benchmark_reports_ours_and_hf(small_model):
    pytest.importorskip("transformers")
    r = run_benchmark(small_model, "micro", threads=1, new_tokens=4, prompt_tokens=512, repeats=3, with_hf=True,
                      bandwidth_mb=16, compiled=())
    # with our bf16 kernel, the same bf16 model also runs on oneDNN, to show the kernel's gain
    onednn = {"ours-bf16-onednn"} if kernel_available() else set()
    assert set(r["results"]) == {"ours-fp32", "hf-fp32", "ours-bf16", "hf-bf16", "ours-int8"} | onednn
    # the micro model's int8 weights sit in cache, so its int8 rows keep PyTorch's kernel (fused.INT8_KERNEL_MIN_BYTES)
    assert r["our_kernels"] == (["ours-bf16"] if onednn else [])
    assert f"our matmul kernels in: {'ours-bf16' if onednn else 'none (PyTorch kernels throughout)'}" in format_table(r)
    if onednn:
        assert r["ours_over"]["ours-bf16 / ours-bf16-onednn"]["decode_b1_tok_s"] == pytest.approx(
            r["results"]["ours-bf16"]["decode_b1_tok_s"] / r["results"]["ours-bf16-onednn"]["decode_b1_tok_s"])
    # the bandwidth is measured in every repeat, like the engines, and the bound uses its median
    assert len(r["bandwidth_runs_gb_s"]) == 3 and all(len(row["decode_b1_runs"]) == 3 for row in r["results"].values())
    assert r["bandwidth_gb_s"] == pytest.approx(sorted(r["bandwidth_runs_gb_s"])[1], abs=0.06)
    assert r["prefill_tokens"] == 47  # capped by the context of 48
    res = r["results"]
    for row in res.values():
        assert row["prefill_tok_s"] > 0 and row["decode_b1_tok_s"] > 0 and row["decode_b8_tok_s"] > 0
        assert row["bound_tok_s"] == pytest.approx(r["bandwidth_gb_s"] * 1e9 / (row["read_mb"] * 1e6))
        # untied: a token reads one row of the 300 × 64 embedding, not the table
        embedding_mb = 300 * 64 * {"fp32": 4, "bf16": 2, "int8": 1}[row["dtype"]] / 1e6
        assert row["read_mb"] == pytest.approx(row["weights_mb"] - embedding_mb, abs=0.002)
    assert res["ours-bf16"]["weights_mb"] == pytest.approx(res["ours-fp32"]["weights_mb"] / 2, rel=0.01)
    assert res["ours-int8"]["disk_mb"] < res["ours-fp32"]["disk_mb"] / 3.5
    assert r["ours_over"]["ours-bf16 / hf-bf16"]["decode_b1_tok_s"] == pytest.approx(
        res["ours-bf16"]["decode_b1_tok_s"] / res["hf-bf16"]["decode_b1_tok_s"])
    assert "ours-bf16 / hf-bf16: prefill" in format_table(r)


def test_benchmark_adds_our_rows_with_the_decode_step_compiled(small_model, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setattr("krmini.infer.fast.compiled.CPU_GEMM", {})  # no micro-GEMM autotuning: minutes on 2 cores
    r = run_benchmark(small_model, "micro", threads=1, new_tokens=4, prompt_tokens=512, repeats=1, with_hf=True,
                      bandwidth_mb=16, compiled=("bf16",))
    res = r["results"]
    assert "ours-fp32-compile" not in res and "ours-int8-compile" not in res
    plain, compiled = res["ours-bf16"], res["ours-bf16-compile"]
    assert plain["compile_s"] is None and compiled["compile_s"] > 0  # compiled before timing, reported apart
    assert compiled["weights_mb"] == plain["weights_mb"] and compiled["decode_b8_tok_s"] > 0
    assert r["ours_over"]["ours-bf16-compile / hf-bf16"]["decode_b1_tok_s"] == pytest.approx(
        res["ours-bf16-compile"]["decode_b1_tok_s"] / res["hf-bf16"]["decode_b1_tok_s"])
    table = format_table(r)
    assert "ours-bf16-compile / hf-bf16: prefill" in table and "compile time (batch 1 and 8" in table


@pytest.mark.llama_cpp
def test_benchmark_runs_llama_cpp_on_the_gguf_export(small_model):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (compiles llama.cpp: pip install 'krmini[gguf]')")
    r = run_benchmark(small_model, "micro", threads=1, new_tokens=4, prompt_tokens=512, repeats=1, with_hf=False,
                      gguf_vocab=placeholder_vocab(small_model.config.vocab_size), bandwidth_mb=16, compiled=())
    res = r["results"]
    assert {"llama.cpp-fp32", "llama.cpp-bf16", "llama.cpp-int8"} <= set(res)
    assert res["llama.cpp-bf16"]["decode_b8_tok_s"] is None and res["llama.cpp-bf16"]["decode_b1_tok_s"] > 0
    # the GGUF's tensor bytes: bf16 matrices are half of f32, q8_0 (34 bytes per 32 weights) about a quarter
    assert res["llama.cpp-bf16"]["weights_mb"] < 0.6 * res["llama.cpp-fp32"]["weights_mb"]
    assert res["llama.cpp-int8"]["weights_mb"] < res["llama.cpp-bf16"]["weights_mb"]
    assert r["ours_over"]["ours-int8 / llama.cpp-int8"]["decode_b1_tok_s"] == pytest.approx(
        res["ours-int8"]["decode_b1_tok_s"] / res["llama.cpp-int8"]["decode_b1_tok_s"])
    assert "decode b8" not in format_table(r).split("ours-bf16 / llama.cpp-bf16:")[1].splitlines()[0]
