"""The speed layers, beside the plain engine: they change how a step is computed, never what.

    fused.py     q/k/v and gate/up as one matmul each; weights packed for oneDNN where it helps
    gemv.py      our bf16 and int8 matrix-vector kernels (C++, `gemv.cpp`) for decoding
    quantize.py  weight-only int8 layers and their checkpoint format
    compiled.py  the decode step under `torch.compile`

Each layer is chosen by a probe (`krmini.hardware.probe`), run once per process, so that a CPU that
lacks a path gets the plain PyTorch one instead of an error. `accelerate` is the one way in: the
engine (`krmini.infer.engine`) knows nothing of these modules, and `build_engine` plugs them in.
`kernel_plan` names, per dtype, what each stage runs here; `krmini doctor` prints it.
"""

from __future__ import annotations

import torch

from krmini import hardware
from krmini.infer.fast.compiled import CompiledDecoder, compile_available
from krmini.infer.fast.fused import fuse_for_decoding, packing_available
from krmini.infer.fast.gemv import kernel_available
from krmini.infer.fast.quantize import int8pack_available
from krmini.model import LlamaModel

__all__ = ["CompiledDecoder", "accelerate", "kernel_plan"]


def accelerate(model: LlamaModel, compile: bool = False) -> tuple[LlamaModel, CompiledDecoder | None]:
    """Rebuild an eval-mode model for generation (in place) and, with `compile`, its compiled step.

    With `KRMINI_FAST=0` nothing changes and the plain model decodes eagerly.
    """
    if not hardware.fast_paths_enabled():
        if compile:
            hardware.say_once("fast-off", f"--compile: ignored ({hardware.FAST_ENV}=0 turns every fast path off)")
        return model, None
    model = fuse_for_decoding(model)
    if not compile:
        return model, None
    if not compile_available():
        reason = hardware.VERDICTS["torch-compile"].reason
        hardware.say_once("compile-unavailable", f"--compile: torch.compile does not work here ({reason}); "
                          "decoding without it")
        return model, None
    return model, CompiledDecoder(model)


def kernel_plan(probe_compile: bool = False) -> dict[str, dict[str, str]]:
    """What runs each stage's matmuls on this CPU, per dtype (running the probes it needs).

    Mirrors the choices of `fuse_for_decoding` and `krmini.device.pick_precision`, from the same
    probes. `probe_compile` also tries `torch.compile` (a few seconds).
    """
    from krmini.device import cpu_bf16_is_fast

    fast = hardware.fast_paths_enabled()
    ours = kernel_available()
    pack_bf16, pack_fp32 = packing_available(torch.bfloat16), packing_available(torch.float32)
    int8pack = int8pack_available()
    bf16_train = "bf16 autocast (oneDNN)" if cpu_bf16_is_fast() else "fp32 (bf16 falls back: no native bf16)"
    emulated = "PyTorch F.linear, bf16 emulated (no native bf16)"
    plan = {
        "fp32": {"prefill": "oneDNN packed (large matrices), MKL" if pack_fp32 else "PyTorch F.linear (MKL/BLAS)",
                 "decode": "oneDNN packed (large matrices), MKL" if pack_fp32 else "PyTorch F.linear (MKL/BLAS)",
                 "train": "PyTorch F.linear (MKL/BLAS)"},
        "bf16": {"prefill": "oneDNN packed" if pack_bf16 and not ours else ("oneDNN (F.linear)" if pack_bf16 else emulated),
                 "decode": "ours (krmini_gemv, AVX512-BF16)" if ours else ("oneDNN packed" if pack_bf16 else emulated),
                 "train": bf16_train},
        "int8": {"prefill": "torch._weight_int8pack_mm" if int8pack else "dequantized F.linear",
                 "decode": ("ours (krmini_gemv int8) for models of >= 32 MB of int8 weights, else " if ours else "")
                 + ("torch._weight_int8pack_mm" if int8pack else "dequantized F.linear"),
                 "train": "(not trained)"},
    }
    if not fast:
        plan["bf16"]["decode"] = plan["bf16"]["prefill"] = "PyTorch F.linear (KRMINI_FAST=0)"
    if probe_compile:
        ok = compile_available()
        plan["compiled decode"] = {"all": "torch.compile (Inductor, C++ wrapper)" if ok else
                                   f"eager ({hardware.VERDICTS['torch-compile'].reason})"}
    return plan
