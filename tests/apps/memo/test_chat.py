"""`krmini chat RUN --memo DB`: the REPL's /memo QUESTION, grounded in the notes, run through the CLI."""

from __future__ import annotations

import builtins

import pytest

from krmini.chat import cli as chat_cli
from krmini.cli import main
from tests.apps.memo.conftest import open_index, reindex

GREEDY = ["--temperature", "0", "--top-k", "0", "--max-new-tokens", "12", "--device", "cpu"]


@pytest.fixture
def memo_db(notes_dir, tmp_path):
    store, kinds = open_index(tmp_path / "m.db", [notes_dir])
    reindex(store, kinds)
    store.close()
    return tmp_path / "m.db"


def _run(argv: list[str], lines: list[str], monkeypatch) -> list:
    """Run `krmini chat …` with these lines typed; the sessions its REPL ran."""
    typed, sessions = iter(lines), []
    real = chat_cli.repl

    def prompt(_text=""):
        try:
            return next(typed)
        except StopIteration:
            raise EOFError from None

    def recording(session, out=None):
        sessions.append(session)
        real(session, out)
    monkeypatch.setattr(builtins, "input", prompt)
    monkeypatch.setattr(chat_cli, "repl", recording)
    assert main(argv) == 0
    return sessions


def test_memo_turn_in_a_real_repl_run(chat_run, memo_db, capsys, monkeypatch):
    sessions = _run(["chat", str(chat_run), "--memo", str(memo_db), "--memo-k", "2", *GREEDY],
                    ["/help", "/memo 신제품 출시는 언제로 미뤘어?", "/memo 양자역학 초전도체", "고마워"], monkeypatch)
    out = capsys.readouterr().out
    assert "/memo QUESTION" in out.splitlines()[1]  # the help line names it
    assert "(mode: lexical (bigram); 1 sources)\n봇> " in out
    assert "출처 / sources:\n[1] notes/회의/3월.md:10 — 3월 > 3월 회의 > 일정" in out
    assert "답하지 않습니다" in out  # the second question: no source, no model turn
    history = sessions[0].history
    assert [m["role"] for m in history] == ["user", "assistant"] * 2  # the /memo turn and the plain one
    assert history[0]["content"].startswith("자료:\n\n[1] notes/회의/3월.md:10") and history[2]["content"] == "고마워"
    assert sessions[0].backend.engine is not None and history[1]["content"] in out


def test_memo_grounding_options(chat_run, memo_db, tmp_path, capsys, monkeypatch):
    # without --memo there is no /memo; --mode dense on an index without vectors is one line before the model loads
    sessions = _run(["chat", str(chat_run), *GREEDY], [], monkeypatch)
    assert "/memo" not in sessions[0].commands and "/memo" not in capsys.readouterr().out
    assert main(["chat", str(tmp_path / "없는 런"), "--memo", str(memo_db), "--mode", "dense"]) == 1
    assert "has no vectors" in capsys.readouterr().err
    assert main(["chat", str(chat_run), "--memo", str(tmp_path), "--device", "cpu"]) == 1
    assert "is a directory; expected the memo index file" in capsys.readouterr().err
    assert main(["chat", str(chat_run), "--memo", str(tmp_path / "없음.db"), "--device", "cpu"]) == 1
    assert "no memo index here" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        main(["chat", str(chat_run), "--memo", str(memo_db), "--memo-k", "0"])
    assert "--memo-k: expected an integer >= 1" in capsys.readouterr().err
