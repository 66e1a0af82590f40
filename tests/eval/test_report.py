"""`krmini report`: one page with config, data, curves, saved eval results and generations."""

from __future__ import annotations

import shutil

from krmini.cli import main
from krmini.eval.results import write_json


def test_report_page(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    write_json(run / "eval" / "ppl-held.json", {
        "kind": "ppl", "data": ["held.jsonl"], "documents": 3, "tokens": 1000, "loss": 4.5, "perplexity": 90.0,
        "bits_per_byte": 1.875})
    write_json(run / "eval" / "kobest-dev-0shot.json", {
        "kind": "kobest", "split": "dev", "shots": 0, "limit": None,
        "average": {"acc": 0.55, "acc_norm": 0.5, "f1": 0.525},
        "tasks": {"copa": {"examples": 500, "acc": 0.55, "acc_norm": 0.5, "f1": 0.525}}})
    out = tmp_path / "page"
    assert main(["report", str(run), "--out", str(out), "--max-new-tokens", "8", "--device", "cpu"]) == 0
    page = (out / "report.md").read_text(encoding="utf-8")
    for heading in ("## 설정 / Config", "## 데이터 / Data", "## 학습 곡선 / Training curves", "## 평가 / Evaluation",
                    "## 생성 예시 / Sample generations"):
        assert heading in page
    assert "| held.jsonl | 3 | 1,000 | 4.5000 | 90.00 | 1.8750 |" in page
    assert "| copa | 500 | 0.525 | 0.550 | 0.500 |" in page and "| **mean** | | **0.525** |" in page
    assert "- **대한민국은**" in page and "| train |" in page
    assert (out / "report_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_report_refuses_a_non_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    assert "not a run directory" in capsys.readouterr().err
