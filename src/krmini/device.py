"""Device and precision selection, shared by training and inference."""

from __future__ import annotations

import contextlib
import warnings

import torch

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


def pick_precision(name: str, device: torch.device) -> str:
    """Resolve `auto` and fall back (with a warning) where the device cannot run the request."""
    if name not in PRECISIONS:
        raise KrminiError(f"precision: expected one of {', '.join(PRECISIONS)}, got {name!r}")
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device.type == "mps" else "fp32"
    if name == "fp16" and device.type == "cpu":
        warnings.warn("fp16 autocast is not supported for training on CPU; using bf16", stacklevel=2)
        return "bf16"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        warnings.warn("this GPU has no bf16; using fp16 with a gradient scaler", stacklevel=2)
        return "fp16"
    return name


def autocast(device: torch.device, precision: str):
    """Mixed-precision context: matmuls in bf16/fp16, master weights stay fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])
