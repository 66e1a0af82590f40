"""The generate benchmark on a micro model: every figure is there and consistent."""

from __future__ import annotations

import pytest

from krmini.bench.generate import format_table, run_benchmark


def test_benchmark_reports_ours_and_hf(small_model):
    pytest.importorskip("transformers")
    r = run_benchmark(small_model, "micro", threads=1, new_tokens=4, prompt_tokens=512, repeats=1, with_hf=True,
                      bandwidth_mb=16)
    assert set(r["results"]) == {"ours-fp32", "hf-fp32", "ours-bf16", "hf-bf16", "ours-int8"}
    assert r["prefill_tokens"] == 47  # capped by the context of 48
    res = r["results"]
    for row in res.values():
        assert row["prefill_tok_s"] > 0 and row["decode_b1_tok_s"] > 0 and row["decode_b8_tok_s"] > 0
        assert row["bound_tok_s"] == pytest.approx(r["bandwidth_gb_s"] * 1e9 / (row["weights_mb"] * 1e6))
    assert res["ours-bf16"]["weights_mb"] == pytest.approx(res["ours-fp32"]["weights_mb"] / 2, rel=0.01)
    assert res["ours-int8"]["disk_mb"] < res["ours-fp32"]["disk_mb"] / 3.5
    assert r["ours_over_hf"]["bf16"]["decode_b1_tok_s"] == pytest.approx(
        res["ours-bf16"]["decode_b1_tok_s"] / res["hf-bf16"]["decode_b1_tok_s"])
    assert "ours / HF (bf16)" in format_table(r)
