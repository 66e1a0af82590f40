"""KoBEST files, prompts and the command: read by header name, clear errors, results saved."""

from __future__ import annotations

import json

import pytest

from krmini.cli import main
from krmini.errors import KrminiError
from krmini.eval.kobest import (
    TASKS,
    choice_requests,
    few_shot_prompts,
    parse_tasks,
    read_examples,
    request_strings,
)
from krmini.tokenizer import KoTokenizer
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
    assert dev.choices == ("부정", "긍정")


def test_prompt_formats(tmp_path):
    write_tsv(tmp_path / "copa" / "dev.tsv", ["ID", "sentence", "question", "1", "2", "Answer"],
              [["1", "전쟁이 시작되었다.", "결과", "병사들이 집으로 돌아왔다.", "병사들이 전투에 파견되었다.", "2"]])
    write_tsv(tmp_path / "wic" / "dev.tsv",
              ["ID", "Target", "SENTENCE1", "Dictionary 1", "Link 1", "SENTENCE2", "Dictionary 2", "Link2", "ANSWER"],
              [["1", "수술", "[수술] 시일을 미룬다.", "3", "x", "[수술]에서 꽃가루가 나온다.", "1", "y", "FALSE"]])
    copa = read_examples(TASKS["copa"], tmp_path, "dev")[0]
    assert copa.prompt == "전쟁이 시작되었다.  그래서" and copa.label == 1
    assert copa.choices == ("병사들이 집으로 돌아왔다.", "병사들이 전투에 파견되었다.")
    wic = read_examples(TASKS["wic"], tmp_path, "dev")[0]
    assert wic.prompt == "문장1: [수술] 시일을 미룬다. 문장2: [수술]에서 꽃가루가 나온다. 두 문장에서 수술가 같은 뜻으로 쓰였나?"
    assert wic.label == 0
    prompts = few_shot_prompts([wic], [copa], 1, seed=0)
    assert prompts[0] == "전쟁이 시작되었다.  그래서 병사들이 전투에 파견되었다.\n\n" + wic.prompt


# lm-eval 0.4.13's (context, continuation) for the first dev example of each task and its first choice:
# pinned, so that a prompt cannot drift from the harness's silently (the integration test runs lm-eval itself).
FIRST_DEV_REQUEST = {
    "boolq": ("구한말, 통영 안뒤산 기슭 간창골에 김봉제 형제가 살았다. 김봉제는 관약국을 경영하며 부를 누렸는데, 선비적 성품을 "
              "지녔던 형과 반대로 막냇동생 김봉룡은 성질이 포악했다. 어느 날 봉룡은 아내였던 숙정을 사모하던 나그네를 "
              "살해하였고, 숙정은 누명을 벗으려고 비상을 먹고 자살한다. 질문: 봉룡은 숙정을 죽였는가? 답변:", "  아니오"),
    "copa": ("전쟁이 시작되었다.  그래서", " 병사들이 집으로 돌아왔다."),
    "hellaswag": ("문장: 모자를 쓴 투수가 타자에게 온 힘을 다해 공을 던진다. 공이 타자에게 빠른 속도로 다가온다. 타자가 공을 "
                  "배트로 친다. 배트에서 깡 소리가 난다. 공이 하늘 위로 날아간다.", " 외야수가 떨어지는 공을 글러브로 잡는다."),
    "sentineg": ("문장: 만족입니다 긍부정:", " 부정"),
    "wic": ("문장1: 백제는 의자왕의 방탕과 [실정]으로 패망했다고 보는 견해가 있다. 문장2: 지금 회사는 자금난으로 공장을 "
            "운영할 수 없는 [실정]이다. 두 문장에서 실정가 같은 뜻으로 쓰였나?", " 아니오"),
}


@pytest.mark.parametrize("name", list(TASKS))
def test_requests_are_lm_evals(name):
    example = read_examples(TASKS[name], shared_file("eval/kobest"), "dev")[0]
    assert request_strings(example.prompt, example.choices[0]) == FIRST_DEV_REQUEST[name]


def test_request_ids_split_the_whole_text_after_the_context(tiny_run):
    """The continuation's ids are the whole text's after the context's own, as lm-eval's HFLM splits
    them; our tokenizer adds no BOS (it has no post-processor), so neither do the requests."""
    tok = KoTokenizer.load(tiny_run / "tokenizer")
    example = read_examples(TASKS["boolq"], shared_file("eval/kobest"), "dev")[0]
    context, continuation = request_strings(example.prompt, "예")
    request = choice_requests(tok, [example], [example.prompt])[1]
    assert list(request.context) == tok.encode(context) and tok.bos_id not in request.context
    assert [*request.context, *request.continuation] == tok.encode(context + continuation)
    assert tok.decode(request.continuation) == "  예"


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
    assert record["average"]["f1"] == r["f1"] and [x["label"] for x in r["samples"]] == [1, 0, 1]
    assert all(len(x["loglik"]) == 2 and x["pick"] == max((0, 1), key=x["loglik"].__getitem__) for x in r["samples"])
    assert "| sentineg | 3 |" in capsys.readouterr().out
    assert main([*args, "--shots", "3"]) == 1  # more shots than train examples
    assert "only 2 examples" in capsys.readouterr().err
    assert main([*args, "--tasks", "boolq"]) == 1  # missing task file: one line, no traceback
    assert capsys.readouterr().err.startswith("krmini: error: ")
