"""Data parallelism on 2 CPU processes (gloo): DDP (with AdamW or Muon) and FSDP2 match the single-process run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from krmini import runs
from krmini.data.loader import TokenWindows
from krmini.data.shards import load_split, read_manifest
from krmini.model import LlamaModel
from krmini.train import checkpoint as ckpt
from krmini.train.config import load_run_config
from krmini.train.evaluation import evaluate
from krmini.train.trainer import train
from tests.conftest import single_thread
from tests.train.microrun import eval_losses, micro_overrides, run_krmini, subprocess_env, train_losses

# Warmup past the end: the schedule depends on the step only, so the 2-process runs can stop at 20
# and be resumed by one process to 25. Two micro-batches per step exercise DDP's no_sync and
# FSDP's deferred reduce-scatter.
RUN = ["train.warmup_steps=1000", "train.lr=0.01", "train.grad_accum=2", "train.save_interval=10",
       "train.eval_interval=10"]


def _args(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return micro_overrides(data, out, *RUN, f"train.max_steps={steps}", *extra)


@pytest.fixture(scope="module")
def single(micro_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    with single_thread():  # as each rank runs
        train(load_run_config("tiny", _args(micro_data, out, 25)), progress=False)
    return out


def _assert_same_curve(run: Path, reference: Path, steps: range, tol: float = 1e-5) -> None:
    ours, ref = train_losses(run), train_losses(reference)
    for step in steps:
        assert abs(ours[step] - ref[step]) <= tol, f"step {step}: {ours[step]} vs {ref[step]}"


@pytest.mark.integration  # minutes of CPU in `make test`; `make test-integration` runs it
def test_ddp_two_processes_match_single_process(micro_data, single, tmp_path):
    out = tmp_path / "ddp"
    proc = run_krmini("train", "--nproc", "2", "--config", "tiny", *_args(micro_data, out, 20), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_curve(out, single, range(1, 21))
    assert abs(eval_losses(out)[20] - eval_losses(single)[20]) <= 1e-5
    assert runs.read_state(runs.resolve_checkpoint(out))["world_size"] == 2


MUON = ["train.optimizer=muon", "train.muon_lr=0.01"]


@pytest.fixture(scope="module")
def single_muon(micro_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single_muon") / "run"
    with single_thread():
        train(load_run_config("tiny", _args(micro_data, out, 20, *MUON)), progress=False)
    return out


@pytest.mark.integration  # minutes of CPU in `make test`; `make test-integration` runs it
def test_ddp_with_muon_matches_single_process(micro_data, single_muon, tmp_path):
    """Muon under DDP: each rank orthogonalises the same all-reduced whole matrices, as one process does."""
    out = tmp_path / "ddp_muon"
    proc = run_krmini("train", "--nproc", "2", "--config", "tiny", *_args(micro_data, out, 20, *MUON), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_curve(out, single_muon, range(1, 21))
    assert abs(eval_losses(out)[20] - eval_losses(single_muon)[20]) <= 1e-5
    assert runs.read_state(runs.resolve_checkpoint(out))["world_size"] == 2


@pytest.mark.integration  # minutes of CPU in `make test`; `make test-integration` runs it
def test_fsdp_checkpoint_reloads_and_resumes_in_one_process(micro_data, single, tmp_path):
    out = tmp_path / "fsdp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "krmini.train",
           "--config", "tiny", *_args(micro_data, out, 20, "train.strategy=fsdp")]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_curve(out, single, range(1, 21))

    # The sharded run's checkpoint is a plain full checkpoint: one process loads it and scores the
    # validation split exactly as the sharded ranks did.
    path = runs.resolve_checkpoint(out)
    state = runs.read_state(path)
    cfg = load_run_config("tiny", _args(micro_data, out, 20))
    model = LlamaModel(ckpt.checkpoint_model_config(path, state))
    ckpt.load_model_weights(model, path)
    split = read_manifest(micro_data)["splits"]["val"]
    val = TokenWindows(load_split(micro_data, "val"), cfg.train.seq_len, cfg.train.seed)
    result = evaluate(model, val, split["bytes"] / split["tokens"], cfg.train, torch.device("cpu"), "fp32")
    assert abs(result["val_loss"] - eval_losses(out)[20]) <= 1e-5
    assert abs(result["val_loss"] - eval_losses(single)[20]) <= 1e-5

    # …and continues training in one process, on the same samples the 2-process run would have used.
    train(load_run_config("tiny", _args(micro_data, out, 25, "train.strategy=fsdp")), resume=True, progress=False)
    _assert_same_curve(out, single, range(21, 26))


def test_batch_must_split_evenly_over_ranks():
    from krmini.errors import KrminiError
    from krmini.train.distributed import DistContext, local_slice

    assert local_slice(8, DistContext(rank=1, world_size=2)) == (4, 4)
    assert local_slice(8, DistContext()) == (0, 8)
    with pytest.raises(KrminiError, match="train.batch_size: 6 .* over 4 processes"):
        local_slice(6, DistContext(rank=0, world_size=4))
