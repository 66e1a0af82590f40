"""What this machine can do: CPU facts, and fast paths tried once per process before they are used.

A fast path (a packed oneDNN weight, our C++ kernels, bf16 arithmetic, a compiled step) is never
assumed from the CPU's name or from a previous machine. Each is a *probe*: the operation itself,
run once on a tiny tensor, its verdict cached for the process. Where it fails the caller takes the
plain PyTorch path, and the user sees at most one line saying so. The same verdicts feed
`krmini doctor`, so a bug report shows what actually ran.

Two switches, for users and for the tests:

* `KRMINI_FAST=0` turns every fast path off: the plain PyTorch path runs everywhere.
* `KRMINI_SIMULATE_CPU=avx2` makes this process see an x86-64 CPU with AVX2 and no AVX-512,
  AVX512-BF16 or AMX (as a 2019 AMD EPYC): the probes fail where they would fail on such a CPU, so
  a machine that has AVX-512 still exercises the fallbacks.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

FAST_ENV = "KRMINI_FAST"
SIMULATE_ENV = "KRMINI_SIMULATE_CPU"
# The flags a bug report needs, in the order `krmini doctor` prints them.
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16",
                  "avx_ne_convert", "amx_tile", "amx_bf16", "amx_int8", "neon", "bf16", "i8mm")
# What an AVX2-only x86-64 CPU reports (AMD EPYC family 23 model 1, the machine the fallbacks are for).
AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"})
# oneDNN's bf16 path (weight packing, bf16 autocast matmuls) needs AVX-512 (BW, VL, DQ) or
# AVX-NE-CONVERT on x86; on an AVX2-only CPU the packing call raises ("bf16 path needs the cpu support …").
ONEDNN_BF16 = (("avx512bw", "avx512vl", "avx512dq"), ("avx_ne_convert",))
SIMULATIONS = {"avx2": ("simulated x86-64 CPU with AVX2, no AVX-512 (KRMINI_SIMULATE_CPU=avx2)", AVX2_ONLY)}


@dataclass(frozen=True)
class CPU:
    model: str
    arch: str  # x86_64, arm64, …
    flags: frozenset[str]
    simulated: bool = False

    @property
    def x86(self) -> bool:
        return self.arch in ("x86_64", "amd64")

    def has(self, *flags: str) -> bool:
        return self.flags.issuperset(flags)

    def meets(self, needs: tuple[tuple[str, ...], ...]) -> bool:
        """Whether one of the flag groups in `needs` is all there (always true off x86, where the
        operation itself is the only test)."""
        return not self.x86 or not needs or any(self.has(*group) for group in needs)

    @property
    def native_bf16(self) -> bool:
        """bf16 dot products in hardware (AVX512-BF16, AMX, AVX-NE-CONVERT; Arm's BF16 extension)."""
        if self.x86:
            return bool(self.flags & {"avx512_bf16", "amx_bf16", "avx_ne_convert"})
        return "bf16" in self.flags


def _linux_cpu(arch: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return platform.processor() or arch, set()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    model = fields.get("model name") or fields.get("Model") or fields.get("CPU part") or arch
    if "cpu family" in fields and "model" in fields:  # a VM often hides the name ("Intel(R) Xeon(R) Processor")
        model += f" (family {fields['cpu family']} model {fields['model']} stepping {fields.get('stepping', '?')})"
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    if "asimd" in flags:  # Linux on Arm calls NEON "asimd"
        flags.add("neon")
    return model, flags


def _mac_cpu(arch: str) -> tuple[str, set[str]]:
    def sysctl(name: str) -> str:
        try:
            return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    model = sysctl("machdep.cpu.brand_string") or arch
    if arch == "arm64":  # every Apple-silicon chip has NEON; BF16 and I8MM arrived with the M2
        flags = {"neon"} | {f for f, key in (("bf16", "FEAT_BF16"), ("i8mm", "FEAT_I8MM"))
                            if sysctl(f"hw.optional.arm.{key}") == "1"}
    else:
        flags = {f.lower().replace(".", "_") for f in (sysctl("machdep.cpu.features") + " "
                                                        + sysctl("machdep.cpu.leaf7_features")).split()}
    return model, flags


@functools.cache
def cpu() -> CPU:
    """This process's CPU (or the simulated one, see the module docstring)."""
    arch = platform.machine().lower()
    simulated = os.environ.get(SIMULATE_ENV, "")
    if simulated:
        if simulated not in SIMULATIONS:
            from krmini.errors import KrminiError

            raise KrminiError(f"{SIMULATE_ENV}: expected one of {', '.join(SIMULATIONS)}, got {simulated!r}")
        model, flags = SIMULATIONS[simulated]
        return CPU(model, "x86_64", flags, simulated=True)
    model, flags = _mac_cpu(arch) if sys.platform == "darwin" else _linux_cpu(arch)
    return CPU(model, arch, frozenset(flags))


def fast_paths_enabled() -> bool:
    return os.environ.get(FAST_ENV, "1") != "0"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""  # why not, in a few words


VERDICTS: dict[str, Verdict] = {}  # every probe run in this process, for `krmini doctor`


def probe(name: str, run: Callable[[], object], needs: tuple[tuple[str, ...], ...] = ()) -> Verdict:
    """Run `run()` once per process (it raises, or returns False, where the path cannot run); cached.

    `needs` lists the x86 CPU flags the path requires, as alternatives (one group is enough):
    checked first, so that a simulated CPU without them fails as the real one would (on a real CPU
    the operation itself is the test).
    """
    if name in VERDICTS:
        return VERDICTS[name]
    if not fast_paths_enabled():
        verdict = Verdict(False, f"off ({FAST_ENV}=0)")
    elif not cpu().meets(needs):
        verdict = Verdict(False, "the CPU lacks " + " or ".join("+".join(g) for g in needs))
    else:
        try:
            result = run()
            verdict = Verdict(result is not False, "" if result is not False else "gave wrong results")
        except Exception as exc:  # any failure of the operation means: take the plain path
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            verdict = Verdict(False, text[:160])
    VERDICTS[name] = verdict
    return verdict


_SAID: set[str] = set()


def say_once(key: str, line: str) -> None:
    """Print one line to stderr the first time `key` is seen in this process (a fallback notice)."""
    if key not in _SAID:
        _SAID.add(key)
        print(line, file=sys.stderr, flush=True)
