"""KoBEST files, prompts and the command: read by header name, clear errors, results saved."""

from __future__ import annotations

import json

import pytest

from krmini.cli import main
from krmini.errors import KrminiError
from krmini.eval.kobest import TASKS, few_shot_prompts, parse_tasks, read_examples
from tests.conftest import shared_file


def write_tsv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n", encoding="utf-8")


def test_columns_are_read_by_header_name(tmp_path):
    write_tsv(tmp_path / "sentineg" / "train.tsv", ["ID", "Text", "Label"], [["1", "별로네요", "0"]])
    write_tsv(tmp_path / "sentineg" / "dev.tsv", ["ID", "Label", "Text"], [["1", "1", "만족입니다"]])
    train = read_examples(TASKS["sentineg"], tmp_path, "train")[0]
    dev = read_examples(TASKS["sentineg"], tmp_path, "dev")[0]
    assert (train.prompt, train.label) == ("문장: 별로네요 긍부정:", 0)
    assert (dev.prompt, dev.label) == ("문장: 만족입니다 긍부정:", 1)
    assert dev.choices == (" 부정", " 긍정")


def test_prompt_formats(tmp_path):
    write_tsv(tmp_path / "copa" / "dev.tsv", ["ID", "sentence", "question", "1", "2", "Answer"],
              [["1", "전쟁이 시작되었다.", "결과", "병사들이 집으로 돌아왔다.", "병사들이 전투에 파견되었다.", "2"]])
    write_tsv(tmp_path / "wic" / "dev.tsv",
              ["ID", "Target", "SENTENCE1", "Dictionary 1", "Link 1", "SENTENCE2", "Dictionary 2", "Link2", "ANSWER"],
              [["1", "수술", "[수술] 시일을 미룬다.", "3", "x", "[수술]에서 꽃가루가 나온다.", "1", "y", "FALSE"]])
    copa = read_examples(TASKS["copa"], tmp_path, "dev")[0]
    assert copa.prompt == "전쟁이 시작되었다. 그래서" and copa.label == 1
    assert copa.choices == (" 병사들이 집으로 돌아왔다.", " 병사들이 전투에 파견되었다.")
    wic = read_examples(TASKS["wic"], tmp_path, "dev")[0]
    assert wic.prompt == "문장1: 수술 시일을 미룬다. 문장2: 수술에서 꽃가루가 나온다. 두 문장에서 수술가 같은 뜻으로 쓰였나?"
    assert wic.label == 0
    prompts = few_shot_prompts([wic], [copa], 1, seed=0)
    assert prompts[0] == "전쟁이 시작되었다. 그래서 병사들이 전투에 파견되었다.\n\n" + wic.prompt


def test_bad_files_name_the_problem(tmp_path):
    with pytest.raises(KrminiError, match=r"boolq/dev.tsv: KoBEST boolq dev file not found"):
        read_examples(TASKS["boolq"], tmp_path, "dev")
    write_tsv(tmp_path / "boolq" / "dev.tsv", ["ID", "Text", "Answer"], [["1", "본문", "True"]])
    with pytest.raises(KrminiError, match="no column 'Question'"):
        read_examples(TASKS["boolq"], tmp_path, "dev")
    write_tsv(tmp_path / "copa" / "dev.tsv", ["ID", "sentence", "question", "1", "2", "Answer"],
              [["1", "문장", "결과", "가", "나", "3"]])
    with pytest.raises(KrminiError, match=r"copa/dev.tsv:2: Answer: expected one of \[1, 2\]"):
        read_examples(TASKS["copa"], tmp_path, "dev")
    with pytest.raises(KrminiError, match="unknown task 'mnli'"):
        parse_tasks("boolq,mnli")


def test_shared_dev_sets_read_completely():
    root = shared_file("eval/kobest")
    counts = {name: len(read_examples(task, root, "dev")) for name, task in TASKS.items()}
    assert counts == {"boolq": 700, "copa": 500, "hellaswag": 500, "sentineg": 400, "wic": 610}
    assert read_examples(TASKS["sentineg"], root, "dev")[0].prompt == "문장: 만족입니다 긍부정:"


def test_command_scores_and_saves(tiny_run, tmp_path, capsys):
    data = tmp_path / "kobest"
    write_tsv(data / "sentineg" / "dev.tsv", ["ID", "Label", "Text"],
              [["1", "1", "좋아요"], ["2", "0", "별로예요"], ["3", "1", "최고"]])
    write_tsv(data / "sentineg" / "train.tsv", ["ID", "Text", "Label"], [["1", "싫어요", "0"], ["2", "좋다", "1"]])
    out = tmp_path / "k.json"
    args = ["eval", "kobest", str(tiny_run), "--tasks", "sentineg", "--data-dir", str(data), "--out", str(out)]
    assert main([*args, "--shots", "2"]) == 0
    record = json.loads(out.read_text(encoding="utf-8"))
    r = record["tasks"]["sentineg"]
    assert r["examples"] == 3 and r["acc"] in (0, 1 / 3, 2 / 3, 1)
    assert record["centred_mean"] == pytest.approx((r["acc"] - 0.5) / 0.5)
    assert "| sentineg | 3 |" in capsys.readouterr().out
    assert main([*args, "--shots", "3"]) == 1  # more shots than train examples
    assert "only 2 examples" in capsys.readouterr().err
    assert main([*args, "--tasks", "boolq"]) == 1  # missing task file: one line, no traceback
    assert capsys.readouterr().err.startswith("krmini: error: ")
