"""LoRA: parameter share, zero-init, merge = adapter outputs, adapter-only save/load."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from krmini.errors import KrminiError
from krmini.model import LlamaModel
from krmini.train.config import load_run_config
from krmini.train.lora import (
    ADAPTER_CONFIG,
    ADAPTER_FILE,
    LoraConfig,
    LoRALinear,
    apply_lora,
    load_adapter,
    merge_lora,
    parameter_counts,
    parse_lora_spec,
    save_adapter,
)

SPEC = "r=16,alpha=32,targets=q,k,v,o,gate,up,down"


def test_parse_spec():
    cfg = parse_lora_spec(SPEC)
    assert (cfg.r, cfg.alpha, cfg.targets) == (16, 32.0, ["q", "k", "v", "o", "gate", "up", "down"])
    assert parse_lora_spec("r=4,targets=q,v,dropout=0.1") == LoraConfig(r=4, targets=["q", "v"], dropout=0.1)
    for bad, match in (("r=0", "r: expected a positive"), ("rank=4", "unknown key 'rank'"),
                       ("targets=q,x", "targets"), ("r=four", "four"), ("q", "not key=value")):
        with pytest.raises(KrminiError, match=match):
            parse_lora_spec(bad)


def _model(preset: str, device="cpu") -> LlamaModel:
    with torch.device(device):
        torch.manual_seed(0)
        return LlamaModel(load_run_config(preset).model)


@pytest.mark.parametrize(("preset", "expected_pct"), [("tiny", 8.42), ("small", 2.046), ("medium", 1.895), ("large", 1.333)])
def test_trainable_share(preset, expected_pct):
    model = _model(preset, "meta" if preset != "tiny" else "cpu")  # big presets: shapes only, no memory
    trainable, total = apply_lora(model, parse_lora_spec(SPEC))
    assert 100 * trainable / total == pytest.approx(expected_pct, abs=0.001)
    assert all(p.requires_grad == (".lora_" in n) for n, p in model.named_parameters())


def test_small_preset_attention_only_is_well_under_two_percent():
    trainable, total = apply_lora(_model("small", "meta"), parse_lora_spec("r=16,alpha=32,targets=q,k,v,o"))
    assert 100 * trainable / total == pytest.approx(0.721, abs=0.001)


def test_fresh_adapter_is_identity_and_merge_equals_adapter(tmp_path):
    model = _model("tiny")
    x = torch.randint(0, model.config.vocab_size, (2, 24))
    base_logits = model(x)[0].detach()
    apply_lora(model, parse_lora_spec(SPEC))
    assert torch.equal(model(x)[0], base_logits)  # B = 0 at the start
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(std=0.02)
    lora_logits = model(x)[0].detach()
    assert (lora_logits - base_logits).abs().max() > 1e-2
    # only the adapters get gradients
    model(x, x)[1].backward()
    assert all((p.grad is not None) == (".lora_" in n) for n, p in model.named_parameters())

    save_adapter(model.state_dict(), parse_lora_spec(SPEC), tmp_path / "adapter", base="tiny")
    saved = load_file(tmp_path / "adapter" / ADAPTER_FILE)
    assert saved and all(".lora_" in k for k in saved)  # adapters alone, no base weights
    assert json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())["r"] == 16
    assert sum(t.numel() for t in saved.values()) == parameter_counts(model)[0]

    reloaded = load_adapter(_model("tiny"), tmp_path / "adapter")  # same seed → same base weights
    assert torch.allclose(reloaded(x)[0], lora_logits, atol=1e-6)
    merged = merge_lora(reloaded)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert not any(".lora_" in k for k in merged.state_dict())
    assert torch.allclose(merged(x)[0], lora_logits, atol=1e-5)


def test_adapter_must_fit_the_base(tmp_path):
    model = _model("tiny")
    apply_lora(model, parse_lora_spec("r=4,targets=q"))
    save_adapter(model.state_dict(), parse_lora_spec("r=8,targets=q"), tmp_path / "a")  # config lies about r
    with pytest.raises(KrminiError, match="shape"):
        load_adapter(_model("tiny"), tmp_path / "a")
    with pytest.raises(KrminiError, match="not found"):
        load_adapter(_model("tiny"), tmp_path / "missing")
