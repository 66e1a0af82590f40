"""Every fast path is probed, and where one is missing the plain path runs: no traceback on any CPU.

A machine with AVX-512 still runs these: `simulated_avx2` makes the process see an AVX2-only CPU
(the 2019 AMD EPYC on which bf16 packing raised), and `KRMINI_FAST=0` forces the plain path.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from krmini import hardware
from krmini.device import pick_dtype, pick_precision
from krmini.infer.engine import DecodeBatch
from krmini.infer.fast import accelerate, kernel_plan
from krmini.infer.fast.fused import FusedAttention, GemvLinear, PackedLinear, packing_available
from krmini.infer.sampling import SamplingConfig

PROMPTS = [[5, 17, 42], [7, 99, 3, 250, 11, 8, 9]]


def _tokens(model, decoder=None):
    batch = DecodeBatch(model, PROMPTS, [SamplingConfig(max_new_tokens=10, temperature=0)] * 2, decoder=decoder)
    out = [[] for _ in PROMPTS]
    while batch.running:
        for row, tid, _ in batch.step():
            out[row].append(tid)
    return out


def test_an_avx2_cpu_gets_plain_bf16_layers_and_the_same_tokens(small_model, simulated_avx2):
    reference = copy.deepcopy(small_model).to(torch.bfloat16)
    model, decoder = accelerate(copy.deepcopy(reference))
    assert decoder is None
    assert not packing_available(torch.bfloat16)
    assert "lacks avx512bw+avx512vl+avx512dq or avx_ne_convert" in hardware.VERDICTS["onednn-pack-bf16"].reason
    assert not any(isinstance(m, (PackedLinear, GemvLinear)) for m in model.modules())
    assert sum(isinstance(m, FusedAttention) for m in model.modules()) == small_model.config.num_hidden_layers
    assert _tokens(model) == _tokens(reference)
    plan = kernel_plan()
    assert plan["bf16"]["decode"] == plan["bf16"]["prefill"] == "PyTorch F.linear, bf16 emulated (no native bf16)"
    assert plan["bf16"]["train"].startswith("fp32")


def test_bf16_on_a_cpu_without_native_bf16(simulated_avx2, capsys):
    cpu = torch.device("cpu")
    with pytest.warns(UserWarning, match=r"train.precision=bf16: this CPU has no native bf16 .*training in fp32"):
        assert pick_precision("bf16", cpu) == "fp32"
    assert pick_precision("auto", cpu) == "fp32"
    assert pick_dtype("auto", cpu) == torch.float32
    for _ in range(2):  # bf16 still runs for generation; the notice comes once per process
        assert pick_dtype("bf16", cpu) == torch.bfloat16
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no native bf16, so bf16 runs emulated" in err


def test_fast_paths_off_leaves_the_plain_model(small_model, monkeypatch, capsys):
    monkeypatch.setenv(hardware.FAST_ENV, "0")
    monkeypatch.setattr(hardware, "VERDICTS", {})
    monkeypatch.setattr(hardware, "_SAID", set())
    model = copy.deepcopy(small_model).to(torch.bfloat16)
    same, decoder = accelerate(model, compile=True)
    assert same is model and decoder is None
    assert not any(isinstance(m, (FusedAttention, PackedLinear, GemvLinear)) for m in model.modules())
    assert sum(type(m) is nn.Linear for m in model.modules()) == 7 * small_model.config.num_hidden_layers + 1
    assert not packing_available(torch.float32) and hardware.VERDICTS["onednn-pack-fp32"].reason == "off (KRMINI_FAST=0)"
    assert capsys.readouterr().err.count("\n") == 1  # the one line saying --compile is ignored


def test_a_failing_probe_is_tried_once_and_says_why(monkeypatch):
    monkeypatch.setattr(hardware, "VERDICTS", {})
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx_ne_convert\nmore")

    for _ in range(3):
        verdict = hardware.probe("test-broken", broken)
    assert calls == [1] and not verdict.ok
    assert verdict.reason == "mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx_ne_convert"
    assert hardware.probe("test-wrong", lambda: False).reason == "gave wrong results"
    assert hardware.probe("test-fine", lambda: True).ok


def test_cpuinfo_is_read_for_x86_and_arm(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse4_2 avx avx2 fma\n\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse4_2 avx avx2 fma\n")
    model, flags = hardware._linux_cpu("x86_64", info)
    cpu = hardware.CPU(model, "x86_64", frozenset(flags))
    assert model == "AMD EPYC 7B12" and cpu.has("avx2", "fma")
    info.write_text("processor\t: 0\ncpu family\t: 6\nmodel\t\t: 207\nmodel name\t: Intel(R) Xeon(R) Processor\n"
                    "stepping\t: 2\nflags\t\t: avx2 avx512f avx512bw avx512vl avx512dq amx_bf16\n")
    assert hardware._linux_cpu("x86_64", info)[0] == "Intel(R) Xeon(R) Processor (family 6 model 207 stepping 2)" and not cpu.has("avx512f") and not cpu.native_bf16
    info.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes bf16 i8mm\nCPU part\t: 0xd4f\n")
    model, flags = hardware._linux_cpu("aarch64", info)
    arm = hardware.CPU(model, "aarch64", frozenset(flags))
    assert arm.has("neon", "bf16") and arm.native_bf16 and not arm.x86
    assert hardware._linux_cpu("x86_64", tmp_path / "missing")[1] == set()
    sapphire = hardware.CPU("Xeon", "x86_64", frozenset({"avx512f", "avx512bw", "avx512vl", "amx_bf16"}))
    assert sapphire.native_bf16


def test_generate_in_bf16_on_a_simulated_avx2_cpu_prints_text_and_one_line(tiny_run):
    """The command that printed a traceback on the AMD EPYC without AVX-512."""
    env = {**os.environ, hardware.SIMULATE_ENV: "avx2", "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run([sys.executable, "-m", "krmini", "generate", str(tiny_run), "--prompt", "대한민국은",
                           "--dtype", "bf16", "--max-new-tokens", "8", "--temperature", "0"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("대한민국은") and len(done.stdout.strip()) > len("대한민국은")
    assert "Traceback" not in done.stderr and "<|" not in done.stdout
    assert done.stderr.strip().count("\n") == 0 and "bf16 runs emulated" in done.stderr
