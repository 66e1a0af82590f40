"""`krmini doctor`: what a bug report needs, in one screen.

The machine (CPU model and the flags that decide our fast paths, cores, memory, GPUs), the PyTorch
build, whether our C++ kernels build here, and which kernel each dtype uses for prefill, decode and
training. Every "yes" is a probe that ran in this process (`krmini.hardware`), not a guess from
the CPU's name: the same verdicts the commands act on.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from krmini import __version__, hardware
from krmini.device import cpu_bf16_is_fast
from krmini.infer.fast import kernel_plan


def _memory() -> str:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return "unknown"
    text = f"{total / 2**30:.1f} GiB"
    try:
        meminfo = Path("/proc/meminfo").read_text()
        available = next(int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemAvailable"))
        text += f" ({available / 2**20:.1f} GiB available)"
    except (OSError, StopIteration, ValueError):
        pass
    return text


def _compiler() -> str:
    name = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not name:
        return "none found (our kernels and torch.compile on CPU need one)"
    try:
        first = subprocess.run([name, "--version"], capture_output=True, text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return f"{name} (does not run)"
    return f"{name}: {first[0] if first else '?'}"


def _gpus() -> list[str]:
    out = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append(f"cuda:{i} {p.name}, compute {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
                       f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
    if torch.backends.mps.is_available():
        out.append("mps (Apple GPU)")
    return out or ["none (CUDA: no device; MPS: not available)"]


def report(probe_compile: bool = True) -> dict:
    cpu = hardware.cpu()
    plan = kernel_plan(probe_compile)  # runs the probes, so the verdicts below are filled in
    return {
        "krmini": __version__,
        "python": f"{platform.python_version()} ({platform.platform()})",
        "cpu": f"{cpu.model} ({cpu.arch}), {os.cpu_count()} cores",
        "flags": {f: f in cpu.flags for f in hardware.REPORTED_FLAGS
                  if cpu.x86 != (f in ("neon", "bf16", "i8mm"))},
        "native_bf16": cpu.native_bf16,
        "bf16_is_fast": cpu_bf16_is_fast(),
        "memory": _memory(),
        "gpus": _gpus(),
        "torch": {"version": torch.__version__, "cuda": torch.version.cuda, "aten_cpu_capability":
                  torch.backends.cpu.get_cpu_capability(), "mkl": torch.backends.mkl.is_available(),
                  "onednn": torch.backends.mkldnn.is_available(), "openmp": torch.backends.openmp.is_available(),
                  "threads": torch.get_num_threads()},
        "compiler": _compiler(),
        "probes": {name: ("ok" if v.ok else f"no: {v.reason}") for name, v in sorted(hardware.VERDICTS.items())},
        "kernels": plan,
        "switches": {k: os.environ[k] for k in (hardware.FAST_ENV, hardware.SIMULATE_ENV, "KRMINI_GEMV",
                                                 "TORCH_EXTENSIONS_DIR", "OMP_NUM_THREADS") if k in os.environ},
    }


def format_report(r: dict) -> str:
    flags = r["flags"]
    lines = [
        f"krmini {r['krmini']} doctor — paste this into a bug report",
        f"python       {r['python']}",
        f"cpu          {r['cpu']}",
        "flags        " + " ".join(f for f, on in flags.items() if on)
        + ("  (missing: " + " ".join(f for f, on in flags.items() if not on) + ")" if not all(flags.values()) else ""),
        f"native bf16  {'yes' if r['native_bf16'] else 'no'} (bf16 {'used' if r['bf16_is_fast'] else 'not used'} "
        "by precision/dtype auto)",
        f"memory       {r['memory']}",
        *[f"gpu          {g}" for g in r["gpus"]],
        "torch        {version} (CUDA {cuda}; ATen CPU kernels {aten_cpu_capability}; MKL {mkl}; oneDNN {onednn}; "
        "OpenMP {openmp}; {threads} threads)".format(**{k: ("yes" if v is True else "no" if v is False else v)
                                                       for k, v in r["torch"].items()}),
        f"c++          {r['compiler']}",
        "probes       " + "\n             ".join(f"{name}: {verdict}" for name, verdict in r["probes"].items()),
        "kernels      (what runs the matmuls on this machine's CPU)",
    ]
    for dtype, stages in r["kernels"].items():
        for stage, kernel in stages.items():
            lines.append(f"  {dtype:<16} {stage:<8} {kernel}")
    if r["switches"]:
        lines.append("switches     " + " ".join(f"{k}={v}" for k, v in r["switches"].items()))
    return "\n".join(lines)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "doctor", help="환경 점검 / what this machine runs, for bug reports",
        description="Print the CPU and its flags, memory, GPUs, the PyTorch build, whether our C++ kernels "
        "build here, and which kernel each dtype uses for prefill, decode and training (every answer is a "
        "probe run now). Paste the output into a bug report.",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile probe (a few seconds)")
    p.set_defaults(func=run)


def run(args) -> int:
    r = report(probe_compile=not args.no_compile)
    sys.stdout.write((json.dumps(r, ensure_ascii=False, indent=2) if args.json else format_report(r)) + "\n")
    return 0
