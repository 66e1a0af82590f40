"""Helpers shared by the training tests: the micro model, run commands, reading metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

MICRO_MODEL = ["model.vocab_size=1024", "model.hidden_size=32", "model.intermediate_size=64",
               "model.num_hidden_layers=2", "model.num_attention_heads=4", "model.num_key_value_heads=2",
               "model.max_position_embeddings=64"]


def micro_overrides(data: Path, out: Path, *extra: str) -> list[str]:
    """A run that logs every step (so loss curves compare step by step) on the CPU, in fp32 (exact
    comparisons; `auto` would pick bf16 on a CPU with native bf16 and fp32 elsewhere)."""
    return [*MICRO_MODEL, f"train.data_dir={data}", f"train.out_dir={out}", "train.seq_len=32",
            "train.batch_size=4", "train.log_interval=1", "train.eval_tokens=512", "train.device=cpu",
            "train.precision=fp32",
            "train.tensorboard=false", "train.peak_tflops=1", *extra]


def train_losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def eval_losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return {r["step"]: r["val_loss"] for r in records if r["kind"] == "eval"}


def subprocess_env(**extra: str) -> dict[str, str]:
    """One thread per process (bit-equal to the in-process runs), the source tree importable."""
    src = str(Path(__file__).resolve().parents[2] / "src")
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}


def krmini_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "krmini", *args]


def run_krmini(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(krmini_cmd(*args), env=subprocess_env(**env), capture_output=True, text=True,
                          timeout=timeout, check=False)
