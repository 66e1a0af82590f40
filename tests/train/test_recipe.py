"""The training-recipe switches on the optimizer side: Muon beside AdamW, its momentum ramp, the WSD schedule."""

from __future__ import annotations

import pytest
import torch

from krmini.errors import KrminiError
from krmini.model import LlamaModel, ModelConfig
from krmini.train.config import TrainConfig, load_run_config
from krmini.train.optim import build_optimizers, lr_at, lr_factor, muon_momentum_at, set_step
from krmini.train.trainer import train
from tests.train.microrun import micro_overrides, train_losses


def _model(**kw) -> LlamaModel:
    torch.manual_seed(0)
    return LlamaModel(ModelConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, **kw))


def test_defaults_are_adamw_and_cosine():
    t = TrainConfig()
    assert (t.optimizer, t.schedule, t.muon_lr, t.muon_momentum, t.muon_momentum_warmup_steps,
            t.muon_weight_decay, t.decay_fraction) == ("adamw", "cosine", 0.02, 0.95, 0, 0.0, 0.2)
    [adamw] = build_optimizers(_model(), t)
    assert isinstance(adamw, torch.optim.AdamW)


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = _model(qk_norm=True, qkv_bias=True)
    muon, adamw = build_optimizers(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.05))
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    name = {id(p): n for n, p in model.named_parameters()}
    in_muon = sorted(name[id(p)] for g in muon.param_groups for p in g["params"])
    blocks = [f"model.layers.{i}.{m}.weight" for i in range(2)
              for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    assert in_muon == sorted(blocks)
    decay, no_decay = ([name[id(p)] for p in g["params"]] for g in adamw.param_groups)
    assert sorted(decay) == ["lm_head.weight", "model.embed_tokens.weight"]
    assert all(n.endswith(("norm.weight", "bias")) for n in no_decay) and len(no_decay) == 2 * (4 + 3) + 1
    assert len(in_muon) + len(decay) + len(no_decay) == len(list(model.parameters()))
    g = muon.param_groups[0]
    assert (g["lr"], g["base_lr"], g["nesterov"], g["adjust_lr_fn"], g["weight_decay"]) == (0.05, 0.05, True,
                                                                                           "original", 0.0)
    assert [g["base_lr"] for g in adamw.param_groups] == [1e-3, 1e-3]


def test_muon_step_is_an_orthogonalised_update():
    """Every singular value of the step is about lr (Newton–Schulz leaves them in ~[0.5, 1.5]× lr,
    not exactly 1), where the gradient's spread widely; a tall matrix's step is scaled by sqrt(rows / cols)."""
    model = _model(mlp_act="relu2")
    muon, _ = build_optimizers(model, TrainConfig(optimizer="muon", muon_lr=0.01))
    q = model.model.layers[0].self_attn.q_proj.weight  # 64 × 64
    up = model.model.layers[0].mlp.up_proj.weight  # 128 × 64
    before = {"q": q.detach().clone(), "up": up.detach().clone()}
    torch.manual_seed(1)
    for p in (p for g in muon.param_groups for p in g["params"]):
        p.grad = torch.randn_like(p)
    grad_sv = torch.linalg.svdvals(q.grad)
    muon.step()
    for key, w, scale in (("q", q, 1.0), ("up", up, 2 ** 0.5)):
        sv = torch.linalg.svdvals((before[key] - w.detach()) / (0.01 * scale))
        assert len(sv) == 64 and sv.min() > 0.4 and sv.max() < 1.6, (key, sv.min(), sv.max())
        assert 0.7 < sv.mean() < 1.3
    assert grad_sv.max() / grad_sv.min() > 20  # the raw gradient was far from orthogonal


def test_schedule_scales_every_group_and_ramps_muon_momentum():
    cfg = TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02, warmup_steps=10, max_steps=100,
                      muon_momentum_warmup_steps=10)
    optimizers = build_optimizers(_model(), cfg)
    assert set_step(optimizers, 4, cfg) == pytest.approx(lr_at(4, cfg)) == pytest.approx(5e-4)
    for opt in optimizers:
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(g["base_lr"] * 0.5)
    assert optimizers[0].param_groups[0]["momentum"] == pytest.approx(0.85 + 0.4 * 0.10)
    assert [muon_momentum_at(s, cfg) for s in (0, 5, 10, 50)] == pytest.approx([0.85, 0.90, 0.95, 0.95])
    assert muon_momentum_at(0, TrainConfig()) == 0.95  # no ramp by default


def test_wsd_values():
    cfg = TrainConfig(schedule="wsd", lr=2.0, warmup_steps=10, max_steps=100, decay_fraction=0.2, min_lr_ratio=0.1)
    # warmup (step + 1) / 10, constant to step 80, then linear from 1 to 0.1 at step 100
    want = {0: 0.1, 4: 0.5, 9: 1.0, 10: 1.0, 50: 1.0, 79: 1.0, 80: 1.0, 90: 0.55, 99: 0.145, 100: 0.1, 120: 0.1}
    for step, factor in want.items():
        assert lr_factor(step, cfg) == pytest.approx(factor), step
        assert lr_at(step, cfg) == pytest.approx(2.0 * factor)
    # a warmup reaching into the decay window: the smaller ramp wins
    overlap = TrainConfig(schedule="wsd", warmup_steps=50, max_steps=50, decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_factor(45, overlap) == pytest.approx(0.5) and lr_factor(20, overlap) == pytest.approx(21 / 50)
    # fewer steps than one decay step still decays
    assert lr_factor(0, TrainConfig(schedule="wsd", warmup_steps=0, max_steps=1, min_lr_ratio=0.0)) == 1.0


@pytest.mark.parametrize(("override", "message"), [
    ("train.optimizer=sgd", r"train.optimizer: expected one of adamw, muon, got 'sgd'"),
    ("train.schedule=linear", r"train.schedule: expected one of cosine, wsd, got 'linear'"),
    ("train.decay_fraction=0", r"train.decay_fraction: expected a value in \(0, 1\], got 0"),
    ("train.muon_lr=0", r"train.muon_lr: expected a positive number"),
    ("train.muon_momentum=1", r"train.muon_momentum: expected a value in \[0, 1\)"),
    ("train.muon_momentum_warmup_steps=-1", r"train.muon_momentum_warmup_steps: expected >= 0"),
    ("train.muon_weight_decay=-0.1", r"train.muon_weight_decay: expected >= 0"),
])
def test_bad_values_name_the_field(override, message):
    with pytest.raises(KrminiError, match=message):
        load_run_config("tiny", [override])


def test_muon_is_refused_where_it_would_not_see_whole_matrices():
    with pytest.raises(KrminiError, match="train.optimizer: muon .* fsdp shards them; use train.strategy=ddp"):
        load_run_config("tiny", ["train.optimizer=muon", "train.strategy=fsdp"])
    with pytest.raises(KrminiError, match="train.optimizer=muon is for full training .* train.optimizer=adamw"):
        load_run_config("tiny", ["train.optimizer=muon", "lora.r=8"])
    assert load_run_config("tiny", ["train.optimizer=adamw", "lora.r=8"]).lora.r == 8


def test_tiny_run_with_every_switch_learns(micro_data, tmp_path):
    out = tmp_path / "run"
    cfg = load_run_config("tiny", micro_overrides(
        micro_data, out, "train.max_steps=12", "train.eval_interval=12", "train.save_interval=12",
        "train.warmup_steps=2", "train.lr=0.01", "train.optimizer=muon", "train.muon_momentum_warmup_steps=6",
        "train.schedule=wsd", "model.zero_init_proj=true", "model.logit_softcap=15", "model.mlp_act=relu2",
        "model.qk_norm=true"))
    last = train(cfg, progress=False)
    losses = train_losses(out)
    assert losses[12] < losses[1] - 1.0, losses
    assert last["lr"] == pytest.approx(0.01 * (0.1 + 0.9 * 1 / 2))  # wsd: step 11 of 12, decaying over round(2.4) steps
    # resuming with another optimizer than the checkpoint's is one clear line
    resumed = load_run_config("tiny", micro_overrides(micro_data, out, "train.max_steps=14", "model.zero_init_proj=true",
                                                      "model.logit_softcap=15", "model.mlp_act=relu2",
                                                      "model.qk_norm=true"))
    with pytest.raises(KrminiError, match="trained with train.optimizer=muon; resume with the same optimizer"):
        train(resumed, resume=True, progress=False)
