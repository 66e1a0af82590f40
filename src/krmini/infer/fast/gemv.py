"""Our bf16 and int8 matrix-vector kernels for decoding (`gemv.cpp`), built on first use.

At batch 1 a decode step reads every weight once, so a model decodes as fast as its weights stream
from memory. oneDNN's packed bf16 kernel streamed the 135M model's matrices at 32-45 GB/s on this
project's 2-core x86-64 machine (AVX512-BF16, no AMX); a plain kernel that walks each weight row
start to end with four independent sums streamed them at 44-64 GB/s in the same runs. The int8
kernel does the same with int8 rows widened to fp32 (1.2x PyTorch's int8 kernel on that model).

They are compiled with PyTorch's C++ extension builder the first time a model is fused for
decoding (~7 s, then cached), and used only where they were measured: x86-64 CPUs with AVX512-BF16
(recent AMD and Intel server chips). Whether they run is a probe (`krmini.hardware`): built, then
checked on a tiny matrix, once per process. Elsewhere, or when there is no C++ compiler, decoding
keeps PyTorch's kernels. `KRMINI_GEMV=0` turns them off (`KRMINI_FAST=0` turns off every fast path).
"""

from __future__ import annotations

import os
import platform
import sys
import warnings
from pathlib import Path

import torch

from krmini import hardware

NAME = "krmini_gemv"
SOURCE = Path(__file__).with_name("gemv.cpp")
NEEDS = (("avx512f", "avx512bw", "avx512vl", "avx512_bf16"),)  # what the code is compiled for
COMPILE_FLAGS = ["-O3", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16"]
# x rows (a step's batch) up to which the kernels beat PyTorch's (oneDNN for bf16, `_weight_int8pack_mm`
# for int8); more rows (a prompt) go to PyTorch's
BF16_MAX_ROWS = 8
INT8_MAX_ROWS = 2


def _build() -> None:
    """Compile (once per PyTorch version, under the extension builder's root) and load the operators."""
    from torch.utils import cpp_extension

    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise RuntimeError("the kernels are x86-64 code")
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
    finally:
        os.environ["PATH"] = path
    torch.library.register_fake("krmini::gemv_bf16")(lambda x, w: x.new_empty(x.shape[0], w.shape[0]))
    torch.library.register_fake("krmini::gemv_int8")(lambda x, w, scale: x.new_empty(x.shape[0], w.shape[0]))


def _build_and_check() -> bool:
    """The probe: build, then both operators on a tiny matrix against a float matmul."""
    _build()
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 40, generator=gen), torch.randn(9, 40, generator=gen)
    bf16 = gemv_bf16(x.bfloat16(), w.bfloat16()).float()
    q = torch.randint(-127, 128, (9, 40), generator=gen, dtype=torch.int8)
    scale = torch.rand(9, generator=gen) + 0.5
    int8 = gemv_int8(x, q, scale)
    return bool(torch.allclose(bf16, x.bfloat16().float() @ w.bfloat16().float().T, rtol=2**-7, atol=1e-2)
                and torch.allclose(int8, (x @ q.float().T) * scale, rtol=1e-4, atol=1e-3))


def kernel_available() -> bool:
    """Whether our kernels run here: built, loaded and checked once per process. Where the build fails
    (no C++ compiler, say) one line says so; on a CPU without AVX512-BF16 nothing is attempted."""
    if os.environ.get("KRMINI_GEMV", "1") == "0":
        return False
    fresh = "krmini-kernels" not in hardware.VERDICTS
    verdict = hardware.probe("krmini-kernels", _build_and_check, NEEDS)
    # say so once where the build was tried and failed (not where the CPU or a switch ruled it out)
    if fresh and not verdict.ok and hardware.fast_paths_enabled() and hardware.cpu().meets(NEEDS):
        warnings.warn(f"the decoding kernels could not be built ({verdict.reason}); decoding uses PyTorch's "
                      "kernels", stacklevel=2)
    return verdict.ok


def gemv_bf16(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (M, K) @ weight (N, K)ᵀ in bf16 through the kernel (call `kernel_available()` first)."""
    return torch.ops.krmini.gemv_bf16(x, weight)


def gemv_int8(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(x (M, K) @ weight (N, K)ᵀ) · scale (N,) for int8 weights, in x's dtype (call `kernel_available()` first)."""
    return torch.ops.krmini.gemv_int8(x, weight, scale)
