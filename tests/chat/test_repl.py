"""The terminal chat: streaming replies, history within the context, commands, Korean typed in tmux."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import replace

import pytest
import torch

from krmini.chat.backend import LocalBackend
from krmini.chat.load import load_chat_model
from krmini.chat.repl import ChatSession
from krmini.chat.template import prompt_ids, stop_ids
from krmini.errors import KrminiError
from krmini.infer.build import build_engine
from krmini.infer.generate import SamplingConfig


@pytest.fixture(scope="module")
def engine(chat_run):
    loaded = load_chat_model(chat_run, torch.device("cpu"))
    return build_engine(loaded, stop_ids=stop_ids(loaded.tokenizer))


def greedy(n: int = 20) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=n, temperature=0.0, top_k=0, top_p=1.0, seed=0)


def test_reply_streams_and_history_grows(engine):
    session = ChatSession(LocalBackend(engine), greedy())
    pieces = list(session.reply("안녕하세요"))
    assert len(pieces) > 1 and all(pieces)
    assert session.history == [{"role": "user", "content": "안녕하세요"}, {"role": "assistant", "content": "".join(pieces)}]
    list(session.reply("고마워"))
    assert [m["role"] for m in session.history] == ["user", "assistant", "user", "assistant"]


def test_commands(engine, capsys):
    session = ChatSession(LocalBackend(engine), greedy())
    list(session.reply("안녕하세요"))
    assert session.command("/temp 0.3") and session.sampling.temperature == 0.3
    assert session.command("/temp abc") and session.sampling.temperature == 0.3
    assert session.command("/system 너는 친절한 비서야")
    assert session.messages()[0] == {"role": "system", "content": "너는 친절한 비서야"}
    assert session.command("/reset") and session.history == []
    assert session.command("/help")
    assert not session.command("/exit")
    out = capsys.readouterr().out
    assert "history cleared" in out and "/reset" in out


def test_oldest_turns_are_dropped_with_notice(engine):
    session = ChatSession(LocalBackend(engine), greedy(8))
    notices = []
    for i in range(12):
        list(session.reply(f"{i}번째 긴 질문입니다. 오늘 날씨가 정말 좋네요, 산책을 갈까요?", notice=notices.append))
    assert notices and "dropped" in notices[0]
    assert len(session.history) < 24 and session.history[-2]["content"].startswith("11번째")
    assert len(prompt_ids(engine.tokenizer, session.messages())) <= engine.context


def _pane(server: str) -> str:
    return subprocess.run(["tmux", "-L", server, "capture-pane", "-p", "-t", "chat", "-S", "-50"],
                          capture_output=True, text=True, encoding="utf-8").stdout


def _wait(server: str, predicate, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = _pane(server)
        if predicate(text):
            return text
        time.sleep(0.3)
    raise AssertionError(f"timed out; the terminal shows:\n{_pane(server)}")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install -y tmux)")
def test_korean_typed_in_a_real_terminal_gets_a_reply(chat_run, engine):
    expected = "".join(ChatSession(LocalBackend(engine), greedy()).reply("안녕하세요"))
    assert expected.strip()
    server = f"krmini-test-{uuid.uuid4().hex[:8]}"  # a private tmux server: never touches the user's sessions
    env = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1"}
    command = (f"{sys.executable} -m krmini chat {chat_run} --temperature 0 --top-k 0 --max-new-tokens 20 "
               f"--device cpu")
    subprocess.run(["tmux", "-u", "-L", server, "new-session", "-d", "-s", "chat", "-x", "160", "-y", "40", command],
                   check=True, env=env)
    try:
        _wait(server, lambda t: "나>" in t)  # capture-pane trims the prompt's trailing space
        # what a terminal receives once the IME has composed the syllables: their UTF-8 characters
        subprocess.run(["tmux", "-L", server, "send-keys", "-t", "chat", "-l", "안녕하세요"], check=True)
        subprocess.run(["tmux", "-L", server, "send-keys", "-t", "chat", "Enter"], check=True)
        screen = _wait(server, lambda t: t.count("나>") >= 2)
        assert "나> 안녕하세요" in screen
        assert f"봇> {expected}" in screen
        subprocess.run(["tmux", "-L", server, "send-keys", "-t", "chat", "-l", "/exit"], check=True)
        subprocess.run(["tmux", "-L", server, "send-keys", "-t", "chat", "Enter"], check=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and subprocess.run(["tmux", "-L", server, "has-session", "-t", "chat"],
                                                             capture_output=True).returncode == 0:
            time.sleep(0.2)
        assert subprocess.run(["tmux", "-L", server, "has-session", "-t", "chat"], capture_output=True).returncode != 0
    finally:
        subprocess.run(["tmux", "-L", server, "kill-server"], capture_output=True)


def test_stop_strings_end_a_reply(engine):
    full = "".join(ChatSession(LocalBackend(engine), greedy()).reply("안녕하세요"))
    assert len(full) >= 4
    stop = full[2:4]
    session = ChatSession(LocalBackend(engine), replace(greedy(), stop=(stop,)))
    cut = "".join(session.reply("안녕하세요"))
    assert cut == full[: full.index(stop)] and session.history[-1]["content"] == cut


def test_a_bad_temperature_is_one_line_and_the_conversation_survives(engine, capsys):
    session = ChatSession(LocalBackend(engine), greedy())
    list(session.reply("안녕하세요"))
    for bad in ("nan", "inf", "abc"):
        assert session.command(f"/temp {bad}")
        line = capsys.readouterr().out
        assert line.count("\n") == 1 and "/temp 0.7" in line
        assert session.sampling.temperature == 0.0
    assert "temperature: expected a finite number" in (session.command("/temp nan") and capsys.readouterr().out)
    assert "".join(session.reply("고마워")) and len(session.history) == 4


def test_a_message_longer_than_the_context_is_one_line_in_the_repl_s_words(engine):
    session = ChatSession(LocalBackend(engine), greedy())
    with pytest.raises(KrminiError) as caught:
        list(session.reply("안녕하세요 " * 300))
    message, context = str(caught.value), engine.context
    assert message.startswith("message: ") and message.endswith(
        f"tokens with the system prompt; the {context}-token context holds at most {context - 1}; send a shorter message")
    assert "truncate" not in message and session.history == []
