"""`krmini doctor`: the facts a bug report needs, from probes that ran, on a real and a simulated CPU."""

from __future__ import annotations

import json

from krmini import hardware
from krmini.cli import main


def test_doctor_reports_this_machine(capsys):
    assert main(["doctor", "--no-compile"]) == 0
    out = capsys.readouterr().out
    for field in ("cpu ", "flags ", "native bf16", "memory ", "torch ", "c++ ", "probes ", "kernels "):
        assert f"\n{field}" in out, field
    for dtype in ("fp32", "bf16", "int8"):
        for stage in ("prefill", "decode", "train"):
            assert f"  {dtype:<16} {stage:<8} " in out
    assert "onednn-pack-fp32: " in out and "krmini-kernels: " in out


def test_doctor_on_a_simulated_avx2_cpu(simulated_avx2, capsys):
    assert main(["doctor", "--json", "--no-compile"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["flags"]["avx2"] and not r["flags"]["avx512f"] and not r["flags"]["avx512_bf16"]
    assert "neon" not in r["flags"] and r["native_bf16"] is False and r["bf16_is_fast"] is False
    assert r["probes"]["krmini-kernels"].startswith("no: the CPU lacks")
    assert r["probes"]["onednn-pack-bf16"].startswith("no: the CPU lacks")
    assert r["kernels"]["bf16"]["decode"] == "PyTorch F.linear, bf16 emulated (no native bf16)"
    assert r["kernels"]["bf16"]["train"].startswith("fp32")
    assert r["switches"][hardware.SIMULATE_ENV] == "avx2"
