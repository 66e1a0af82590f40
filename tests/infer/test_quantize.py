"""Weight-only int8: rounding error bound, disk size, perplexity, loading for generation, CLI."""

from __future__ import annotations

import shutil

import torch

from krmini.infer.engine import Engine
from krmini.infer.fast.quantize import Int8Linear, quantize_model, quantize_rows
from krmini.infer.load import load_model
from krmini.infer.sampling import SamplingConfig


def test_rows_round_within_half_a_step():
    w = torch.randn(16, 64) * torch.linspace(0.01, 3, 16)[:, None]
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and q.abs().max() == 127
    assert ((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-6).all()


def test_int8_linear_matches_dequantized_weights(small_model):
    layer = Int8Linear(64, 32)
    q, scale = quantize_rows(torch.randn(32, 64))
    layer.weight.copy_(q)
    layer.weight_scale.copy_(scale)
    x = torch.randn(2, 3, 64)
    torch.testing.assert_close(layer(x), x @ (q.float() * scale[:, None]).T, rtol=1e-4, atol=1e-4)


def test_quantized_logits_stay_close(small_model):
    import copy

    x = torch.randint(3, 300, (2, 20))
    with torch.inference_mode():
        ref = small_model(x)[0]
        got = quantize_model(copy.deepcopy(small_model))(x)[0]
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()


def test_quantize_cli_size_perplexity_and_generation(tiny_run, tmp_path, capsys):
    from krmini.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    out = tmp_path / "q8"
    assert main(["quantize", str(run), "--int8", "--out", str(out)]) == 0
    report = capsys.readouterr().out
    ratio = float(report.split("MB, ")[1].split("x smaller")[0])
    assert ratio > 3.5  # tied 2k vocab: int8 + per-row scales + fp32 norms
    delta = float(report.split("(")[-1].split("%")[0])
    assert abs(delta) < 2.0, report

    loaded = load_model(out, torch.device("cpu"), torch.bfloat16)
    assert isinstance(loaded.model.lm_head, Int8Linear)
    text = Engine(loaded.model, loaded.tokenizer).generate("대한민국은", SamplingConfig(max_new_tokens=8, temperature=0))
    assert text and "\ufffd" not in text
    assert main(["generate", str(out), "--prompt", "국회는", "--max-new-tokens", "4", "--dtype", "bf16"]) == 0


def test_corrupt_quantized_weights_are_reported(tiny_run, tmp_path, capsys):
    from krmini.cli import main

    out = tmp_path / "q8"
    assert main(["quantize", str(tiny_run), "--int8", "--out", str(out), "--no-eval"]) == 0
    with open(out / "model.safetensors", "r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00" * 16)
    assert main(["generate", str(out), "--prompt", "국회는"]) == 1
    assert "checksum mismatch" in capsys.readouterr().err
