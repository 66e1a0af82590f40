"""`krmini plan` and `krmini train --budget`: the depth dial, budgets, the choice of depth by the fit,
the batch rule, and plans that fit their budget."""

from __future__ import annotations

import json
import math

import pytest
import torch

from krmini.errors import KrminiError
from krmini.model import ModelConfig
from krmini.train.config import load_run_config
from krmini.train.flops import matmul_parameters, training_flops_per_token
from krmini.train.plan import (
    Budget,
    ScalingFit,
    batch_for,
    best_depth,
    load_fits,
    make_plan,
    model_for_depth,
    parse_budget,
    plan_overrides,
)

CPU = torch.device("cpu")
FIT = ScalingFit(E=1.0, A=30.0, alpha=0.3, B=40.0, beta=0.3, n_range=[10**6, 10**7], d_range=[10**5, 10**7])


def test_parse_budget():
    assert parse_budget("30m") == Budget(seconds=1800)
    assert parse_budget("2h") == Budget(seconds=7200)
    assert parse_budget("1.5m") == Budget(seconds=90)
    assert parse_budget("1e17") == Budget(flops=1e17)
    for bad in ("", "30", "0m", "-1e17", "nan", "3d", "abc"):
        with pytest.raises(KrminiError, match="--budget"):
            parse_budget(bad)


def test_depth_4_is_the_chat_demo_model():
    demo = load_run_config("chat-demo").model
    four = model_for_depth(4, demo)
    assert four == demo  # the dial reproduces the shape we measured
    eight, sixteen = model_for_depth(8, demo), model_for_depth(16, demo)
    assert (eight.hidden_size, eight.num_attention_heads, eight.num_key_value_heads) == (512, 16, 8)
    assert (sixteen.hidden_size, sixteen.head_dim, sixteen.intermediate_size) == (1024, 64, 2816)
    assert sixteen.vocab_size == demo.vocab_size and sixteen.max_position_embeddings == 256


def test_a_bigger_budget_buys_a_deeper_model_at_20_tokens_per_parameter():
    base = ModelConfig(vocab_size=8000, max_position_embeddings=256)
    depths = [best_depth(c, base, 256) for c in (1e13, 1e15, 1e17, 1e19)]
    assert depths == sorted(depths) and depths[0] < depths[-1]
    def ratio(k, c):
        m = model_for_depth(k, base)
        return c / training_flops_per_token(m, 256) / matmul_parameters(m)
    for c in (1e15, 1e17):  # the chosen depth's tokens per parameter is the nearest to 20
        d = best_depth(c, base, 256)
        assert all(abs(math.log(ratio(d, c) / 20)) <= abs(math.log(ratio(k, c) / 20)) for k in range(1, 33))
    with pytest.raises(KrminiError, match="too small"):
        best_depth(1e9, base, 256)


def test_batch_rule_keeps_2000_steps_within_bounds():
    assert batch_for(1e6, 256, CPU) == (16, 1)  # short run: the smallest batch, 16 sequences
    micro, accum = batch_for(2000 * 64 * 256, 256, CPU)
    assert (micro, accum) == (16, 4)  # 64 sequences, 16 per micro-batch on a CPU
    micro, accum = batch_for(1e12, 2048, torch.device("cuda"))
    assert micro * accum * 2048 == 2**19  # capped at 2^19 tokens per step


def test_flops_plan_fits_the_budget_and_loads_as_a_config():
    run = load_run_config("chat-demo")
    fits = {"heldout_bpb": FIT, "val_bpb": FIT}
    plan = make_plan(Budget(flops=3e14), run, fits, CPU, "fp32")
    tokens_per_step = plan.batch_size * plan.grad_accum * plan.seq_len
    assert plan.tokens == plan.steps * tokens_per_step
    assert plan.flops <= 3e14 < plan.flops + tokens_per_step * plan.flops_per_token
    assert math.isclose(plan.lr, 2e-3 * math.sqrt(256 / plan.model.hidden_size))
    cfg = load_run_config("chat-demo", plan_overrides(plan))
    assert cfg.model == plan.model and cfg.train.max_steps == plan.steps
    assert (cfg.train.optimizer, cfg.train.schedule) == ("muon", "wsd")
    assert cfg.train.warmup_steps == round(0.05 * plan.steps)


def test_time_plan_measures_this_machine():
    run = load_run_config("chat-demo", ["model.vocab_size=512", "train.seq_len=64", "train.precision=fp32"])
    fits = {"heldout_bpb": FIT, "val_bpb": FIT}
    said = []
    plan = make_plan(Budget(seconds=20), run, fits, CPU, "fp32", say=said.append)
    assert said and "timed depth" in said[0]
    assert plan.step_s > 0 and plan.seconds <= 20 < plan.seconds + plan.step_s


def test_the_shipped_fit_loads_and_predicts_less_with_more():
    fits = load_fits()
    f = fits["heldout_bpb"]
    n, d = f.n_range[0], f.d_range[0]
    assert f.predict(n * 2, d) <= f.predict(n, d) and f.predict(n, d * 2) < f.predict(n, d)  # A may be 0
    assert 0 < f.rmse < 0.1 and set(fits) == {"heldout_bpb", "val_bpb"}


def test_train_with_a_budget_trains_the_plan_and_keeps_it(micro_data, tmp_path, capsys, monkeypatch):
    from krmini.cli import main
    from tests.hostile.walk import one_error_line, run_cli

    out = tmp_path / "planned"
    small = ["model.vocab_size=512", "model.max_position_embeddings=64", "train.seq_len=32", "train.precision=fp32",
             "train.eval_tokens=512", "train.tensorboard=false", "train.log_interval=10"]
    assert main(["train", "--config", "chat-demo", "--budget", "2e10", "--data", str(micro_data), "--out", str(out),
                 "--device", "cpu", *small]) == 0
    said = capsys.readouterr().out
    assert "plan for 2e+10 FLOPs: depth" in said
    kept = load_run_config(str(out / "plan.yaml"))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert max(r["step"] for r in metrics) == kept.train.max_steps
    assert kept.train.optimizer == "muon" and kept.model.vocab_size == 512
    tokens = kept.train.max_steps * kept.train.batch_size * kept.train.grad_accum * 32
    assert tokens * training_flops_per_token(kept.model, 32) <= 2e10
    for extra, what in ((["--resume"], "not with --resume"), (["--nproc", "2"], "plans one device")):
        code, _, err = run_cli(["train", "--config", "chat-demo", "--budget", "2e10", "--data", str(micro_data),
                                "--out", str(tmp_path / "x"), *extra, *small], capsys, monkeypatch)
        assert what in one_error_line(code, err)
