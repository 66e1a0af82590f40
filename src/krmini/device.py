"""Device and precision selection, shared by training and inference.

bf16 on a CPU is a speed choice that only pays where the CPU multiplies bf16 in hardware. Measured
on this project's 2-core x86-64 machines (`docs/training.md`, `docs/inference.md`):

* with AVX512-BF16, bf16 trained the 135M model at 3.3× fp32's tokens/s and decoded it 2× faster;
* on an AVX2-only CPU PyTorch runs bf16 matmuls emulated: training steps were ~35× slower than
  fp32, prompts ~4.5× slower, and batch-1 decoding 0.9× fp32's speed (8.6M model, 2 threads).

So `train.precision=bf16` on a CPU without native bf16 trains in fp32 (one line says so), `auto`
picks bf16 only where it is native, and `--dtype bf16` for generation still runs (half the memory,
decoding at 0.9× fp32's speed) with one line naming the cost.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from krmini import hardware
from krmini.errors import KrminiError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(name: str = "auto") -> torch.device:
    """`auto` → cuda, then mps, then cpu; anything else is checked for availability."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise KrminiError(f"device: unknown device {name!r}; expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KrminiError("device: cuda requested but no CUDA GPU is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise KrminiError("device: mps requested but Apple MPS is not available")
    return device


def _bf16_autocast_runs() -> bool:
    """The probe: a tiny linear layer forward and backward under CPU bf16 autocast."""
    layer = torch.nn.Linear(16, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(torch.randn(4, 16))
    out.float().sum().backward()
    return out.dtype == torch.bfloat16 and bool(torch.isfinite(layer.weight.grad).all())


def cpu_bf16_is_fast() -> bool:
    """Whether this CPU multiplies bf16 natively and PyTorch's bf16 autocast runs on it (probed once)."""
    if not hardware.cpu().native_bf16:
        return False
    return hardware.probe("cpu-bf16-autocast", _bf16_autocast_runs, hardware.ONEDNN_BF16).ok


NO_NATIVE_BF16 = "this CPU has no native bf16 (emulated bf16 trained ~35x slower than fp32)"


def pick_precision(name: str, device: torch.device) -> str:
    """Resolve `auto` to the fastest precision the device runs, and fall back (one warning) where the
    device cannot run the request or would run it far slower."""
    if name not in PRECISIONS:
        raise KrminiError(f"precision: expected one of {', '.join(PRECISIONS)}, got {name!r}")
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "mps":
            return "bf16"
        return "bf16" if cpu_bf16_is_fast() else "fp32"
    if name == "fp16" and device.type == "cpu":
        name = "bf16"
        warnings.warn("fp16 autocast is not supported for training on CPU; using bf16", stacklevel=2)
    if name == "bf16" and device.type == "cpu" and not cpu_bf16_is_fast():
        warnings.warn(f"train.precision=bf16: {NO_NATIVE_BF16}; training in fp32", stacklevel=2)
        return "fp32"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        warnings.warn("this GPU has no bf16; using fp16 with a gradient scaler", stacklevel=2)
        return "fp16"
    return name


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype to generate in, from `--dtype` (fp32, bf16 or auto: the fastest where it is native)."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if device.type == "cpu" and cpu_bf16_is_fast() else torch.float32
    if name not in DTYPES or name == "fp16":
        raise KrminiError(f"--dtype: expected fp32, bf16 or auto, got {name!r}")
    if name == "bf16" and device.type == "cpu" and not hardware.cpu().native_bf16:
        hardware.say_once("bf16-emulated", "--dtype bf16: this CPU has no native bf16, so bf16 runs emulated "
                          "(half the memory; decoding 0.9x and prompts ~4.5x slower than fp32); "
                          "--dtype fp32 is faster here")
    return DTYPES[name]


def autocast(device: torch.device, precision: str):
    """Mixed-precision context: matmuls in bf16/fp16, master weights stay fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])
