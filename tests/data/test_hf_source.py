"""`--source hf:NAME[:CONFIG]` on local datasets only (offline): plain JSONL files in a directory,
and a directory written by `save_to_disk`."""

from __future__ import annotations

import json
import random

import pytest

from krmini.cli import main
from krmini.data.shards import read_manifest

from .test_prepare_pipeline import korean_doc

datasets = pytest.importorskip("datasets", reason="the optional 'datasets' extra is not installed")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def records(n: int) -> list[dict]:
    rng = random.Random(3)
    return [{"id": i, "title": f"문서 {i}", "text": korean_doc(rng, 4)} for i in range(n)]


def test_local_jsonl_dataset_directory(tmp_path, tokenizer_dir):
    data = tmp_path / "wiki_ko"
    data.mkdir()
    rows = records(120)
    (data / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["prepare", "--source", f"hf:{data}", "--tokenizer", str(tokenizer_dir), "--out", str(out),
                 "--val-fraction", "0.2", "--workers", "1"]) == 0
    m = read_manifest(out)
    assert m["documents"]["read"] == m["documents"]["kept"] == 120
    assert m["sources"][f"hf:{data}"]["written"]["bytes"] == sum(len(r["text"].encode()) for r in rows)


def test_save_to_disk_directory_and_missing_field(tmp_path, tokenizer_dir, capsys):
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(records(80)).save_to_disk(str(saved))
    out = tmp_path / "out"
    assert main(["prepare", "--source", f"hf:{saved}", "--tokenizer", str(tokenizer_dir), "--out", str(out),
                 "--val-fraction", "0.2", "--workers", "1"]) == 0
    assert read_manifest(out)["documents"]["kept"] == 80
    capsys.readouterr()
    assert main(["prepare", "--source", f"hf:{saved}", "--text-field", "body", "--tokenizer", str(tokenizer_dir),
                 "--out", str(out), "--strict"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"krmini: error: hf:{saved}[train] record 1: expected a string field 'body'")


def test_unknown_dataset_is_one_line(tmp_path, tokenizer_dir, capsys):
    missing = tmp_path / "no_such_dataset"
    assert main(["prepare", "--source", f"hf:{missing}", "--tokenizer", str(tokenizer_dir), "--out",
                 str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"krmini: error: hf:{missing}: cannot read split 'train' (")
