"""`krmini model-info`'s training-memory estimate against the measured peak RSS of real steps."""

from __future__ import annotations

import subprocess
import sys

import pytest

from krmini.model.info import estimate_memory
from krmini.train.config import load_run_config
from tests.train.microrun import subprocess_env

# Peak RSS of two fp32 steps of the preset's optimizers (AdamW, or Muon + AdamW) minus the RSS before the model exists, in a fresh process. The peak is
# VmHWM, which belongs to this address space alone: ru_maxrss would inherit the (larger) peak of the
# pytest process that forked us, because Linux carries it across exec.
MEASURE = """
import resource, sys, torch
from krmini.model import LlamaModel
from krmini.train.config import load_run_config
from krmini.train.optim import build_optimizers, optimizer_step
cfg = load_run_config(sys.argv[1])
x = torch.randint(0, cfg.model.vocab_size, (int(sys.argv[2]), int(sys.argv[3])))
base = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
model = LlamaModel(cfg.model)
opts = build_optimizers(model, cfg.train)
scaler = torch.amp.GradScaler("cpu", enabled=False)
for _ in range(2):
    _, loss = model(x, x)
    loss.backward()
    optimizer_step(model, opts, scaler, 1.0)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(int(hwm.split()[1]) * 1024 - base)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
# tiny trains with AdamW, small with Muon + AdamW (its preset)
@pytest.mark.parametrize(("preset", "batch", "seq_len"), [("tiny", 16, 128), ("small", 1, 128)])
def test_estimate_within_25_percent_of_measured_peak(preset, batch, seq_len):
    proc = subprocess.run([sys.executable, "-c", MEASURE, preset, str(batch), str(seq_len)], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = int(proc.stdout.split()[-1])
    cfg = load_run_config(preset)
    estimate = estimate_memory(cfg.model, batch, seq_len, "fp32", cfg.train.optimizer).training
    assert 0.75 <= measured / estimate <= 1.25, f"measured {measured / 2**20:.0f} MiB, estimated {estimate / 2**20:.0f} MiB"
