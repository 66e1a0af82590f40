"""Non-finite and extreme sampling values: one line from every front door, never a NaN or a traceback."""

from __future__ import annotations

import math

import pytest
import torch

from krmini.cli import main
from krmini.errors import KrminiError
from krmini.infer.sampling import SamplingConfig, sample_next

BAD = [
    ("temperature", math.nan), ("temperature", math.inf), ("top_p", math.nan), ("top_p", -math.inf),
    ("repetition_penalty", math.inf), ("frequency_penalty", math.nan), ("presence_penalty", -math.inf),
    ("temperature", "0.7"), ("top_p", True), ("top_k", 2.5), ("max_new_tokens", True), ("n", 1.0),
    ("seed", 2**64), ("seed", -1), ("seed", False), ("seed", 1.5),
]


@pytest.mark.parametrize(("field", "value"), BAD)
def test_every_bad_value_is_one_line_naming_its_field(field, value):
    with pytest.raises(KrminiError, match=rf"^{field}: expected "):
        SamplingConfig(**{field: value}).validate()


def test_the_largest_seed_and_tiny_values_still_sample_the_most_likely_token():
    SamplingConfig(seed=2**64 - 1).validate()
    logits = torch.tensor([[0.5, 3.0, -1.0, 2.9]])
    for cfg in (SamplingConfig(top_p=1e-300, top_k=0), SamplingConfig(temperature=1e-300, top_k=0),
                SamplingConfig(temperature=5e-324, top_p=5e-324, top_k=0)):
        gen = torch.Generator().manual_seed(2**64 - 1)
        assert sample_next(logits, cfg, gen).tolist() == [1]


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--temperature", "nan", "temperature: expected a finite number, got nan"),
    ("--top-p", "inf", "top_p: expected a finite number, got inf"),
    ("--seed", "99999999999999999999999", "seed: expected an integer from 0 to 2^64-1, got 99999999999999999999999"),
    ("--repetition-penalty", "-inf", "repetition_penalty: expected a finite number, got -inf"),
])
def test_generate_refuses_before_printing_anything(tiny_run, capsys, flag, value, message):
    assert main(["generate", str(tiny_run), "--prompt", "대한민국은", f"{flag}={value}"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == f"krmini: error: {message}\n"


def test_a_tiny_top_p_generates(tiny_run, capsys):
    argv = ["generate", str(tiny_run), "--prompt", "대한민국은", "--top-p", "1e-300", "--max-new-tokens", "5"]
    assert main([*argv, "--seed", str(2**64 - 1)]) == 0
    assert capsys.readouterr().out.startswith("대한민국은")
