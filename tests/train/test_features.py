"""Precision, gradient checkpointing, compile, optimizer choice, logs and MFU."""

from __future__ import annotations

import copy
import os
import shutil
import warnings

import pytest
import torch

from krmini.config import apply_overrides, from_dict
from krmini.device import cpu_bf16_is_fast, pick_precision
from krmini.model import LlamaModel, ModelConfig
from krmini.train.config import TrainConfig, load_run_config
from krmini.train.flops import matmul_parameters, measure_matmul_peak, training_flops_per_token
from krmini.train.optim import build_optimizer
from krmini.train.trainer import train
from tests.train.microrun import MICRO_MODEL, micro_overrides, train_losses


def _micro_model() -> LlamaModel:
    data: dict = {}
    apply_overrides(data, [o.removeprefix("model.") for o in MICRO_MODEL])
    torch.manual_seed(0)
    return LlamaModel(from_dict(ModelConfig, data, "model"))


def _grads(model: LlamaModel, x: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad()
    _, loss = model(x, x)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


def test_grad_checkpointing_gives_the_same_gradients():
    model = _micro_model().train()
    x = torch.randint(0, 1024, (2, 32))
    loss_plain, grads_plain = _grads(model, x)
    model.grad_checkpointing = True
    loss_ckpt, grads_ckpt = _grads(model, x)
    assert loss_ckpt == loss_plain
    for a, b in zip(grads_plain, grads_ckpt, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


@pytest.mark.skipif(not cpu_bf16_is_fast(), reason="this CPU has no native bf16 (test_fallbacks covers that case)")
def test_precision_on_a_cpu_with_native_bf16():
    cpu = torch.device("cpu")
    with pytest.warns(UserWarning, match="fp16 autocast is not supported.*using bf16"):
        assert pick_precision("fp16", cpu) == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pick_precision("bf16", cpu) == "bf16"
        assert pick_precision("auto", cpu) == "bf16"  # 3.3x fp32's tokens/s where bf16 is native


def test_bf16_without_native_bf16_trains_exactly_as_fp32(micro_data, tmp_path, simulated_avx2):
    losses = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(load_run_config("tiny", micro_overrides(micro_data, out, "train.max_steps=4", "train.eval_interval=4",
                                                          "train.save_interval=4", f"train.precision={precision}")),
                  progress=False)
        losses[precision] = train_losses(out)
        said = [str(w.message) for w in caught if "native bf16" in str(w.message)]
        assert len(said) == (precision == "bf16")
    assert losses["bf16"] == losses["fp32"]


@pytest.mark.skipif(not cpu_bf16_is_fast(), reason="this CPU has no native bf16: bf16 trains in fp32 here")
def test_bf16_training_tracks_fp32(micro_data, tmp_path):
    runs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        train(load_run_config("tiny", micro_overrides(micro_data, out, "train.max_steps=8", "train.eval_interval=8",
                                                      "train.save_interval=8", f"train.precision={precision}")),
              progress=False)
        runs[precision] = train_losses(out)
    assert runs["bf16"] != runs["fp32"]  # autocast really ran the matmuls in bf16
    for step in runs["fp32"]:
        assert abs(runs["bf16"][step] - runs["fp32"][step]) < 0.05


def test_optimizer_is_fused_where_a_kernel_exists_and_computes_adamw(monkeypatch):
    model = _micro_model()
    fused = build_optimizer(model, TrainConfig())
    assert fused.defaults["fused"] is True  # PyTorch has a fused CPU kernel
    reference = copy.deepcopy(model)
    foreach = torch.optim.AdamW(reference.parameters(), lr=TrainConfig().lr, betas=(0.9, 0.95), weight_decay=0.0,
                                foreach=True)
    for group in fused.param_groups:
        group["weight_decay"] = 0.0
    for _ in range(3):
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            p.grad = torch.full_like(p, 0.01)
            q.grad = torch.full_like(q, 0.01)
        fused.step()
        foreach.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)

    real = torch.optim.AdamW

    def no_fused_kernel(*args, fused=None, **kwargs):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be on a supported device")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused_kernel)
    fallback = build_optimizer(_micro_model(), TrainConfig())
    assert fallback.defaults["foreach"] is True and not fallback.defaults["fused"]


def test_flops_count_matches_hand_count():
    c = ModelConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    per_layer = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128  # q, o; k, v (2 KV heads of 16); gate, up, down
    assert matmul_parameters(c) == 2 * per_layer + 1000 * 64  # + the (tied) LM head, not the lookup
    assert training_flops_per_token(c, 128) == 6 * matmul_parameters(c) + 12 * 2 * 128 * 64
    assert measure_matmul_peak(torch.device("cpu"), "fp32", size=256, seconds=0.05) > 1e8


def test_logs_tensorboard_plots_and_mfu(micro_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(load_run_config("tiny", micro_overrides(micro_data, out, "train.max_steps=6", "train.eval_interval=3",
                                                  "train.save_interval=6", "train.tensorboard=true")),
          progress=False)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/tokens_per_s", "train/mfu", "eval/val_bpb"} <= tags
    losses = train_losses(out)
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([losses[s] for s in sorted(losses)])
    assert [e.step for e in events.Scalars("eval/val_loss")] == [3, 6]
    png = (out / "training.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    # peak_tflops=1 in these runs: MFU = tokens/s × FLOPs per token / 1e12
    import json

    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-2]
    expected = last["tokens_per_s"] * training_flops_per_token(_micro_model().config, 32) / 1e12
    assert last["mfu"] == pytest.approx(expected)


def test_wandb_offline_run(micro_data, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    train(load_run_config("tiny", micro_overrides(micro_data, out, "train.max_steps=2", "train.eval_interval=2",
                                                  "train.save_interval=2", "train.wandb=true")), progress=False)
    run_id = (out / "wandb_id").read_text().strip()
    assert list((out / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("KRMINI_COMPILE_TESTS"),
                    reason="compiling takes minutes on 2 cores; set KRMINI_COMPILE_TESTS=1 to run")
def test_compiled_training_matches_eager(micro_data, tmp_path):
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    runs = {}
    for compiled in (False, True):
        out = tmp_path / str(compiled)
        train(load_run_config("tiny", micro_overrides(micro_data, out, "train.max_steps=3", "train.eval_interval=3",
                                                      "train.save_interval=3", f"train.compile={compiled}")),
              progress=False)
        runs[compiled] = out
    eager, compiled = train_losses(runs[False]), train_losses(runs[True])
    for step in eager:
        assert abs(eager[step] - compiled[step]) < 1e-4
    import json

    records = [json.loads(line) for line in (runs[True] / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records if "compile_s" in r] == ["compile"]
