"""Answers from the notes: prompts that fit, citations that map to the right lines, refusing to guess,
summaries, /memo in the REPL, and the local and OpenAI-compatible backends."""

from __future__ import annotations

import argparse
import io
from dataclasses import replace

import pytest

from krmini.apps.memo.ask import (
    MIN_COVERAGE,
    MIN_SOURCE_CHARS,
    Source,
    answer_messages,
    choose,
    fit_sources,
    memo_command,
    stream_answer,
    summarize,
)
from krmini.apps.memo.search import Searcher
from krmini.chat.backend import LocalBackend
from krmini.chat.remote import OpenAIBackend
from krmini.chat.template import prompt_budget
from krmini.cli import main
from krmini.infer.sampling import SamplingConfig
from tests.apps.memo.conftest import open_index, reindex, write_notes
from tests.conftest import greedy


class FakeBackend:
    """Counts a message as its characters plus 4; replies with `reply`; remembers every prompt."""

    name = "fake"

    def __init__(self, context: int, reply: str = "답 [1]"):
        self.context, self.reply, self.prompts = context, reply, []

    def count(self, messages):
        return sum(len(m["content"]) + 4 for m in messages)

    def stream(self, messages, sampling):
        self.prompts.append(messages)
        yield from self.reply


@pytest.fixture
def indexed(notes_dir, tmp_path):
    store, kinds = open_index(tmp_path / "m.db", [notes_dir])
    reindex(store, kinds)
    return store


def test_citations_map_to_file_heading_and_lines(indexed, notes_dir):
    hits = choose(Searcher(indexed).search("마케팅 예산은 얼마로 확정했어?", 4).hits, MIN_COVERAGE)
    out = io.StringIO()
    backend = FakeBackend(4096, reply="1,200만 원으로 확정했습니다 [1].")
    answer, sources = stream_answer(backend, "마케팅 예산은 얼마로 확정했어?", hits, SamplingConfig(max_new_tokens=64), out)
    text = out.getvalue()
    assert text.startswith("1,200만 원으로 확정했습니다 [1].\n\n출처 / sources:\n")
    assert "[1] notes/회의/3월.md:5-6 — 3월 > 3월 회의 > 예산  (인용 / cited)" in text.splitlines()
    first = sources[0].hit
    cited = (notes_dir / "회의" / "3월.md").read_text(encoding="utf-8").splitlines()[first.line_start - 1:first.line_end]
    assert cited == ["올해 마케팅 예산은 1,200만 원으로 확정했다.", "집행은 분기별로 나눈다."]
    prompt = backend.prompts[0][-1]["content"]
    assert prompt.startswith("자료:\n\n[1] notes/회의/3월.md:5-6 — 3월 > 3월 회의 > 예산\n올해 마케팅 예산은")
    assert "질문: 마케팅 예산은 얼마로 확정했어?" in prompt and "[1]처럼" in prompt


def test_no_answer_is_guessed_when_the_notes_do_not_hold_it(indexed, capsys, monkeypatch):
    asked = []
    monkeypatch.setattr("krmini.apps.memo.cli.open_backend", lambda args: asked.append(args))
    assert main(["memo", "ask", "양자역학의 불확정성 원리는 누가 제안했나?", "--db", str(indexed.path),
                 "--backend", "unused"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "mode: lexical (bigram); 0 sources"
    assert out[1].startswith("메모에서 이 질문의 답을 찾지 못해 답하지 않습니다 / the notes do not answer this")
    assert "--min-coverage 50%" in out[1] and asked == []  # no model was asked


@pytest.mark.parametrize("context", [1200, 760, 600, 300])
def test_the_prompt_fits_the_context_and_only_the_last_source_is_cut(indexed, context):
    best = Searcher(indexed).search("마케팅 예산", 1).hits[0]
    hits = [replace(best, chunk_id=i, text=f"예산 회의 {i}: " + "마케팅 예산과 일정을 다시 논의했다. " * 8) for i in range(4)]
    backend, render = FakeBackend(context), answer_messages("예산은?")
    budget = prompt_budget(context, 64)
    messages, sources = fit_sources(backend.count, budget, render, hits)
    assert backend.count(messages) <= budget and sources
    assert [s.number for s in sources] == list(range(1, len(sources) + 1))
    assert not any(s.cut for s in sources[:-1])
    last = sources[-1]
    if last.cut:  # one more character would not have fitted
        longer = replace(last, text=last.hit.text[:len(last.text) + 1])
        assert backend.count(render([*sources[:-1], longer])) > budget
    elif len(sources) < len(hits):  # nor would the start of the next source
        nxt = Source(len(sources) + 1, hits[len(sources)], hits[len(sources)].text[:MIN_SOURCE_CHARS])
        assert backend.count(render([*sources, nxt])) > budget
    assert (len(sources), last.cut) == {1200: (4, False), 760: (3, True), 600: (2, False), 300: (1, True)}[context]


def test_a_question_longer_than_the_context_is_one_line(indexed, tmp_path):
    from krmini.errors import KrminiError

    hits = Searcher(indexed).search("마케팅 예산", 1).hits
    with pytest.raises(KrminiError, match="the question alone is more than the 50 prompt tokens"):
        fit_sources(FakeBackend(100).count, 50, answer_messages("예산 " * 40), hits)


def test_summaries_split_what_does_not_fit_into_parts(tmp_path):
    notes = write_notes(tmp_path / "long", {"일지.md": "\n\n".join(
        f"## {d}일\n\n" + f"{d}일에는 보고서를 쓰고 회의를 했다. " * 6 for d in range(1, 9))})
    store, kinds = open_index(tmp_path / "s.db", [notes])
    reindex(store, kinds)
    rows = store.conn.execute("SELECT k.id, f.path, f.root, k.heading, k.line_start, k.line_end, k.page, k.note_id, "
                              "k.text FROM chunks k JOIN files f ON f.id = k.file ORDER BY k.ord").fetchall()
    from krmini.apps.memo.ask import iter_hits

    hits = list(iter_hits(rows))
    assert len(hits) == 8
    backend, out, notices = FakeBackend(600, reply="요약문"), io.StringIO(), []
    summarize(backend, hits, SamplingConfig(max_new_tokens=100), out, notices.append)
    budget = prompt_budget(600, 100)
    assert len(backend.prompts) > 2 and all(backend.count(p) <= budget for p in backend.prompts)
    assert notices and notices[0].startswith("(메모가 문맥보다 길어")
    final = backend.prompts[-1][0]["content"]
    assert final.startswith("메모:\n\n[1] long/일지.md:") and "요약문" in final  # the parts, summarised together
    lines = out.getvalue().splitlines()
    assert lines[0] == "요약문" and lines[2] == "요약한 메모 / summarised:"
    assert lines[3:] == [f"[{d}] long/일지.md:{4 * d - 1} — 일지 > {d}일" for d in range(1, 9)]


def test_local_backend_counts_with_the_chat_template(chat_run, indexed):
    from krmini.chat.cli import chat_engine
    from krmini.infer.cli import add_device_args

    parser = argparse.ArgumentParser()
    add_device_args(parser)
    args = parser.parse_args(["--device", "cpu"])
    args.model, args.adapter = str(chat_run), None
    backend = LocalBackend(chat_engine(args))
    hits = choose(Searcher(indexed).search("마케팅 예산은 얼마야?", 4).hits, MIN_COVERAGE)
    sampling = greedy(16)
    budget = prompt_budget(backend.context, sampling.max_new_tokens)
    messages, sources = fit_sources(backend.count, budget, answer_messages("마케팅 예산은 얼마야?"), hits)
    from krmini.chat.template import prompt_ids

    assert backend.count(messages) == len(prompt_ids(backend.engine.tokenizer, messages)) <= budget
    out = io.StringIO()
    answer, _ = stream_answer(backend, "마케팅 예산은 얼마야?", hits, sampling, out)
    assert out.getvalue().startswith(answer) and "출처 / sources:\n[1] notes/회의/3월.md:5-6" in out.getvalue()


def test_openai_backend_against_our_server(chat_server, chat_local, indexed):
    backend = OpenAIBackend.connect(chat_server.url, chat_server.key, None, None)
    assert (backend.model, backend.exact, backend.context) == (
        "krmini-test", True, chat_local.model.config.max_position_embeddings)
    from krmini.chat.template import prompt_ids
    from krmini.infer.build import build_engine

    hits = choose(Searcher(indexed).search("마케팅 예산은 얼마야?", 4).hits, MIN_COVERAGE)
    messages, _ = fit_sources(backend.count, prompt_budget(backend.context, 16), answer_messages("마케팅 예산은 얼마야?"),
                              hits)
    assert backend.count(messages) == len(prompt_ids(chat_local.tokenizer, messages))
    remote = "".join(backend.stream(messages, greedy(16)))
    from krmini.chat.template import stop_ids

    local = "".join(LocalBackend(build_engine(chat_local, stop_ids=stop_ids(chat_local.tokenizer))).stream(
        messages, greedy(16)))
    assert remote == local and remote
    with pytest.raises(Exception, match="HTTP 401"):
        OpenAIBackend.connect(chat_server.url, "wrong-key", None, None)


def test_memo_in_the_chat_repl(chat_run, indexed, capsys):
    from krmini.chat.cli import chat_engine
    from krmini.chat.repl import ChatSession

    args = argparse.Namespace(model=str(chat_run), adapter=None, device="cpu", dtype="fp32", compile=False)
    command = memo_command(Searcher(indexed), 4, MIN_COVERAGE)
    session = ChatSession(LocalBackend(chat_engine(args)), greedy(12), commands={"/memo": ("QUESTION 메모", command)})
    assert "/memo QUESTION 메모" in session.help()
    assert session.command("/memo 신제품 출시는 언제로 미뤘어?")
    out = capsys.readouterr().out
    assert out.startswith("(mode: lexical (bigram); 1 sources)\n봇> ")
    assert "출처 / sources:\n[1] notes/회의/3월.md:10 — 3월 > 3월 회의 > 일정" in out
    assert [m["role"] for m in session.history] == ["user", "assistant"]
    assert session.history[0]["content"].startswith("자료:\n\n[1] notes/회의/3월.md:10")
    session.command("/memo 양자역학 초전도체")
    assert "답하지 않습니다" in capsys.readouterr().out and len(session.history) == 2


def test_memo_in_the_chat_repl_through_a_server(chat_server, chat_local, indexed, capsys):
    """`krmini chat --backend openai:URL --memo DB`: /memo answers through the server, as the local model would."""
    from krmini.chat.repl import ChatSession
    from krmini.chat.template import stop_ids
    from krmini.infer.build import build_engine

    command = memo_command(Searcher(indexed), 4, MIN_COVERAGE)
    said = []
    for backend in (LocalBackend(build_engine(chat_local, stop_ids=stop_ids(chat_local.tokenizer))),
                    OpenAIBackend.connect(chat_server.url, chat_server.key, None, None)):
        session = ChatSession(backend, greedy(12), commands={"/memo": ("QUESTION 메모", command)})
        assert session.command("/memo 신제품 출시는 언제로 미뤘어?")
        said.append((capsys.readouterr().out, session.history))
    (here, history), (there, remote_history) = said
    assert there == here and remote_history == history and "출처 / sources:\n[1] notes/회의/3월.md:10" in there


def test_cli_ask_and_summarize_with_a_backend(indexed, notes_dir, capsys, monkeypatch):
    backend = FakeBackend(4096, reply="5월 둘째 주로 미뤘습니다 [1].")
    monkeypatch.setattr("krmini.apps.memo.cli.open_backend", lambda args: backend)
    db = str(indexed.path)
    assert main(["memo", "ask", "신제품 출시는 언제로 미뤘어?", "--db", db, "--backend", "x"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "mode: lexical (bigram); 1 sources; backend fake (context 4096)"
    assert out[1] == "5월 둘째 주로 미뤘습니다 [1]." and out[-1] == "[1] notes/회의/3월.md:10 — 3월 > 3월 회의 > 일정  (인용 / cited)"
    backend.reply = "요약"
    assert main(["memo", "summarize", str(notes_dir / "회의"), "--db", db, "--backend", "x"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "1 notes, 2 chunks; backend fake (context 4096)" and out[-2:] == [
        "[1] notes/회의/3월.md:5-6 — 3월 > 3월 회의 > 예산", "[2] notes/회의/3월.md:10 — 3월 > 3월 회의 > 일정"]
    assert main(["memo", "summarize", "--since", "2000-01-01", "--db", db, "--backend", "x"]) == 0
    assert capsys.readouterr().out.startswith("4 notes, 5 chunks;")
    for argv, message in [
        (["--since", "2999-01-01"], "--since 2999-01-01: no indexed note was modified on or after that day"),
        (["--since", "어제"], "--since: expected a date YYYY-MM-DD, got '어제'"),
        ([str(notes_dir / "없는.md")], "없는.md: no indexed note there"),
        ([], "summarize: give a PATH or --since YYYY-MM-DD (one of them)"),
    ]:
        assert main(["memo", "summarize", *argv, "--db", db, "--backend", "x"]) == 1
        assert message in capsys.readouterr().err
