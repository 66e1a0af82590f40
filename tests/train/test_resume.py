"""Exact resume: a run killed at any moment (even between two checkpoint files) continues bit for bit."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from krmini import runs
from krmini.errors import KrminiError
from krmini.train.config import load_run_config
from krmini.train.trainer import train
from tests.conftest import single_thread
from tests.train.microrun import krmini_cmd, micro_overrides, subprocess_env, train_losses

# Warmup longer than any run here: the learning rate then depends only on the step, not on
# max_steps, so a run can be resumed with a different stopping point and still be compared.
SCHEDULE = ["train.warmup_steps=1000", "train.lr=0.01", "train.save_interval=5", "train.keep_checkpoints=3",
            "train.eval_interval=1000"]
REFERENCE_STEPS = 60
# Every training-recipe switch at once, Muon's state and the momentum ramp included. WSD depends on
# max_steps, so its runs all stop at the same step.
RECIPE = ["train.optimizer=muon", "train.muon_momentum_warmup_steps=10", "train.schedule=wsd", "train.warmup_steps=3",
          "train.decay_fraction=0.5", "model.zero_init_proj=true", "model.logit_softcap=30", "model.mlp_act=relu2",
          "model.qk_norm=true"]
RECIPE_STEPS = 20


def _cfg(data: Path, out: Path, steps: int, *extra: str):
    return load_run_config("tiny", micro_overrides(data, out, *SCHEDULE, f"train.max_steps={steps}", *extra))


@pytest.fixture(scope="module")
def reference(micro_data, tmp_path_factory) -> Path:
    """The uninterrupted run, on one thread like every run it is compared with: module fixtures are
    built before the per-test `one_thread` fixture applies, and a matmul split over two threads can
    round differently in the last bit."""
    out = tmp_path_factory.mktemp("reference") / "run"
    with single_thread():
        train(_cfg(micro_data, out, REFERENCE_STEPS), progress=False)
    return out


@pytest.fixture(scope="module")
def recipe_reference(micro_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("recipe_reference") / "run"
    with single_thread():
        train(_cfg(micro_data, out, RECIPE_STEPS, *RECIPE), progress=False)
    return out


def _cli_args(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "--config", "tiny", *micro_overrides(data, out, *SCHEDULE, f"train.max_steps={steps}", *extra)]


def _resume_and_compare(data: Path, out: Path, reference: Path, from_step: int, to_step: int, *extra: str) -> None:
    train(_cfg(data, out, to_step, *extra), resume=True, progress=False)
    resumed, uninterrupted = train_losses(out), train_losses(reference)
    assert sorted(resumed) == list(range(1, to_step + 1))  # no step lost, none logged twice
    for step in range(from_step + 1, to_step + 1):
        assert resumed[step] == uninterrupted[step], f"step {step} differs after resuming"


def _kill_between_files_and_resume(data: Path, out: Path, reference: Path, kill: int, steps: int, *extra: str) -> None:
    """Killed while writing checkpoint `kill` (weights written, optimizer state not), resumed from the one before."""
    proc = subprocess.run(krmini_cmd(*_cli_args(data, out, steps, *extra)), capture_output=True, text=True,
                          timeout=120, env=subprocess_env(KRMINI_TEST_KILL_IN_CHECKPOINT=str(kill)))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    partial = out / "checkpoints" / f"{runs.step_name(kill)}.tmp"
    assert (partial / runs.MODEL_FILE).is_file() and not (partial / runs.OPTIM_FILE).exists()
    assert (out / "checkpoints" / "latest").read_text() == runs.step_name(kill - 5)
    _resume_and_compare(data, out, reference, kill - 5, steps, *extra)


def test_killed_between_checkpoint_files_resumes_exactly(micro_data, reference, tmp_path):
    _kill_between_files_and_resume(micro_data, tmp_path / "run", reference, 15, 30)


def test_killed_muon_run_with_every_recipe_switch_resumes_exactly(micro_data, recipe_reference, tmp_path):
    _kill_between_files_and_resume(micro_data, tmp_path / "run", recipe_reference, 10, RECIPE_STEPS, *RECIPE)
    path, _ = runs.last_good_checkpoint(tmp_path / "run" / "checkpoints")
    meta = json.loads((path / runs.STATE_FILE).read_text(encoding="utf-8"))
    from safetensors.torch import load_file

    tensors = load_file(path / runs.OPTIM_FILE)
    muon_group = meta["optimizer"]["param_groups"][0]
    assert muon_group["momentum"] == pytest.approx(0.95) and muon_group["base_lr"] == 0.02
    assert all(f"state.{i}.momentum_buffer" in tensors for i in muon_group["params"])
    losses = train_losses(tmp_path / "run")
    assert losses[RECIPE_STEPS] < losses[1] - 1.0  # and the recipe learns


def test_sigkill_mid_run_resumes_exactly(micro_data, reference, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(krmini_cmd(*_cli_args(micro_data, out, 100_000)), env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "step_00000010").is_dir():
            assert proc.poll() is None and time.monotonic() < deadline, "training did not reach step 10"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    path, state = runs.last_good_checkpoint(out / "checkpoints")
    assert 10 <= state["step"] <= REFERENCE_STEPS - 5, "the killed run ran too far to compare"
    logged = max(train_losses(out))
    assert logged >= state["step"]  # it was killed after its last checkpoint, mid-run
    _resume_and_compare(micro_data, out, reference, state["step"], state["step"] + 5)


def test_corrupt_checkpoint_falls_back_to_last_good(micro_data, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    newest = out / "checkpoints" / f"step_{REFERENCE_STEPS:08d}"
    weights = newest / runs.MODEL_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern in the middle of the weights
    weights.write_bytes(bytes(data))
    good = out / "checkpoints" / f"step_{REFERENCE_STEPS - 5:08d}"
    with pytest.raises(KrminiError, match=f"corrupt or truncated.*last good checkpoint: {good}"):
        runs.read_state(newest)
    with pytest.warns(UserWarning, match=f"{weights}: corrupt") as caught:
        _resume_and_compare(micro_data, out, reference, REFERENCE_STEPS - 5, REFERENCE_STEPS)
    assert any(f"last good checkpoint {good}" in str(w.message) for w in caught)


def test_every_checkpoint_damaged_stops_with_a_clear_message(micro_data, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for path in runs.complete_checkpoints(out / "checkpoints"):
        (path / runs.STATE_FILE).write_text("{not json", encoding="utf-8")
    with pytest.warns(UserWarning), pytest.raises(KrminiError, match="every checkpoint is damaged"):
        train(_cfg(micro_data, out, REFERENCE_STEPS + 5), resume=True, progress=False)


def test_resume_restores_optimizer_rng_and_step(micro_data, reference):
    path, state = runs.last_good_checkpoint(reference / "checkpoints")
    assert state["step"] == REFERENCE_STEPS and state["world_size"] == 1
    meta = json.loads((path / runs.STATE_FILE).read_text(encoding="utf-8"))
    assert meta["optimizer"]["param_groups"][0]["params"] == list(range(len(meta["optimizer"]["param_groups"][0]["params"])))
    from safetensors.torch import load_file

    tensors = load_file(path / runs.OPTIM_FILE)
    assert "rng.cpu" in tensors and any(k.endswith(".exp_avg_sq") for k in tensors)
    assert float(tensors["state.0.step"]) == REFERENCE_STEPS
