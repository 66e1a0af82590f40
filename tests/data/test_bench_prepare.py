"""`krmini bench prepare` on a small corpus: the figures and the stage profile add up."""

from __future__ import annotations

import pytest

from krmini.bench.prepare import run_benchmark
from tests.data.test_prepare_pipeline import corpus


def test_benchmark_reports_speed_and_a_profile_with_every_stage(tmp_path, tokenizer_dir):
    path, _ = corpus(tmp_path, n=3000)
    r = run_benchmark([str(path)], str(tokenizer_dir), workers=[1, 2], repeats=1, profile=True)
    assert [x["workers"] for x in r["runs"]] == [1, 2]
    assert all(x["file_mb_s"] > 0 and x["cpu_seconds"] > 0 for x in r["runs"])
    assert r["removed"]["duplicate"]["documents"] >= 1  # the planted exact duplicate
    profile = r["profile"]
    assert {"read (file, JSON)", "clean (NFC, whitespace)", "MinHash signatures", "other"} < set(profile)
    assert profile["tokenize"] > 0
    assert sum(profile.values()) == pytest.approx(r["profile_seconds"], abs=0.1)
