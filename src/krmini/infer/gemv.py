"""Our bf16 and int8 matrix-vector kernels for decoding (`gemv.cpp`), built on first use.

At batch 1 a decode step reads every weight once, so a model decodes as fast as its weights stream
from memory. oneDNN's packed bf16 kernel streamed the 135M model's matrices at 32-45 GB/s on this
project's 2-core x86-64 machine (AVX512-BF16, no AMX); a plain kernel that walks each weight row
start to end with four independent sums streamed them at 44-64 GB/s in the same runs. The int8
kernel does the same with int8 rows widened to fp32 (1.2x PyTorch's int8 kernel on that model).

They are compiled with PyTorch's C++ extension builder the first time a model is fused for
decoding (~7 s, then cached), and used only where they were measured: x86-64 CPUs with AVX512-BF16
(recent AMD and Intel server chips). Elsewhere, or when there is no C++ compiler, decoding keeps
oneDNN and PyTorch's int8 kernel. `KRMINI_GEMV=0` turns them off.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
import warnings
from pathlib import Path

import torch

NAME = "krmini_gemv"
SOURCE = Path(__file__).with_name("gemv.cpp")
CPU_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"}
COMPILE_FLAGS = ["-O3", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16"]
# x rows (a step's batch) up to which the kernels beat PyTorch's (oneDNN for bf16, `_weight_int8pack_mm`
# for int8); more rows (a prompt) go to PyTorch's
BF16_MAX_ROWS = 8
INT8_MAX_ROWS = 2


def cpu_supports_kernel(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this is an x86-64 CPU with the AVX-512 extensions the kernel is compiled for."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return set(flags) >= CPU_FLAGS


@functools.cache
def kernel_available() -> bool:
    """Build and load the kernel once per process; False (with one warning if the build failed) where
    it cannot run."""
    if os.environ.get("KRMINI_GEMV", "1") == "0" or not cpu_supports_kernel():
        return False
    from torch.utils import cpp_extension

    # one build per PyTorch version (the extension builder itself only notices changed sources), under
    # the builder's own root (TORCH_EXTENSIONS_DIR or its default)
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    build_dir = Path(root) / f"krmini-gemv-torch{torch.__version__}"
    if not any(build_dir.glob(f"{NAME}*.so")):
        print(f"building the decoding kernels once, ~10 s ({build_dir})", file=sys.stderr, flush=True)
    build_dir.mkdir(parents=True, exist_ok=True)
    path = os.environ.get("PATH", "")
    try:
        import ninja  # PyTorch's extension builder runs the `ninja` program, which this package ships

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + path
        cpp_extension.load(NAME, [str(SOURCE)], extra_cflags=COMPILE_FLAGS, extra_ldflags=["-fopenmp"],
                           build_directory=str(build_dir), is_python_module=False, verbose=False)
    except (ImportError, OSError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        warnings.warn(f"the decoding kernels could not be built ({reason}); decoding uses PyTorch's kernels", stacklevel=2)
        return False
    finally:
        os.environ["PATH"] = path
    torch.library.register_fake("krmini::gemv_bf16")(lambda x, w: x.new_empty(x.shape[0], w.shape[0]))
    torch.library.register_fake("krmini::gemv_int8")(lambda x, w, scale: x.new_empty(x.shape[0], w.shape[0]))
    return True


def gemv_bf16(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (M, K) @ weight (N, K)ᵀ in bf16 through the kernel (call `kernel_available()` first)."""
    return torch.ops.krmini.gemv_bf16(x, weight)


def gemv_int8(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(x (M, K) @ weight (N, K)ᵀ) · scale (N,) for int8 weights, in x's dtype (call `kernel_available()` first)."""
    return torch.ops.krmini.gemv_int8(x, weight, scale)
