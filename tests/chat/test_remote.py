"""`krmini chat --backend openai:URL`: the REPL on an OpenAI-compatible server, live against ours (streamed
text = the server's own greedy reply = the local engine's), against a small fake server for the failures
(not JSON, HTTP 500, a broken stream) and for what a request carries, and against llama-cpp-python's server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from krmini.chat.backend import LocalBackend
from krmini.chat.remote import KEY_ENV, OpenAIBackend
from krmini.chat.repl import ChatSession
from krmini.chat.tasks import TASKS
from krmini.chat.template import stop_ids
from krmini.cli import main
from krmini.errors import KrminiError
from krmini.infer.build import build_engine
from krmini.infer.sampling import SamplingConfig
from tests.conftest import free_port, greedy, stop_process
from tests.serve.http import call

GREEDY = ["--temperature", "0", "--max-new-tokens", "16"]


def feed(monkeypatch, lines: list[str]) -> None:
    """The REPL reads these lines, then the end of input."""
    lines = list(lines)

    def fake_input(prompt: str = "") -> str:
        if not lines:
            raise EOFError
        return lines.pop(0)
    monkeypatch.setattr("builtins.input", fake_input)


@pytest.fixture(scope="module")
def local(chat_local):
    return LocalBackend(build_engine(chat_local, stop_ids=stop_ids(chat_local.tokenizer)))


def test_streamed_reply_equals_the_server_s_greedy_reply_and_the_local_engine_s(chat_server, local):
    remote = OpenAIBackend.connect(f"{chat_server.url}/v1", chat_server.key, None, None)
    assert (remote.model, remote.exact, remote.context) == ("krmini-test", True, local.context)
    here, there = ChatSession(local, greedy()), ChatSession(remote, greedy(), system="친절한 비서")
    here.system = there.system
    for text in ("안녕하세요", "고마워"):
        asked = [*there.messages(), {"role": "user", "content": text}]
        pieces = list(there.reply(text))
        status, _, answer = call(chat_server, "POST", "/v1/chat/completions",
                                 {"messages": asked, "temperature": 0, "max_tokens": 16})
        assert status == 200
        assert "".join(pieces) == answer["choices"][0]["message"]["content"] == "".join(here.reply(text))
        assert len(pieces) > 1 and "".join(pieces)  # it streamed, piece by piece
    assert there.history == here.history and len(there.history) == 4
    assert remote.count(there.messages()) == local.count(there.messages())


def test_the_chat_command_on_our_server_with_the_key_from_the_environment(chat_server, local, monkeypatch, capsys):
    expected = "".join(ChatSession(local, greedy()).reply("안녕하세요"))
    monkeypatch.setenv(KEY_ENV, chat_server.key)
    feed(monkeypatch, ["안녕하세요", "/reset", "/exit"])
    assert main(["chat", "--backend", f"openai:{chat_server.url}/v1", *GREEDY]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"krmini chat — krmini-test at {chat_server.url}" and "/task NAME" in out[1]
    assert out[2:] == [f"봇> {expected}", "(대화를 지웠습니다 / history cleared)"]


def test_a_wrong_or_missing_key_is_one_line(chat_server, monkeypatch, capsys):
    monkeypatch.delenv(KEY_ENV, raising=False)
    refused = "HTTP 401 missing or incorrect API key (Authorization: Bearer KEY)"
    for key in (["--api-key", "wrong"], []):
        assert main(["chat", "--backend", f"openai:{chat_server.url}", *key]) == 1
        assert capsys.readouterr().err == f"krmini: error: {chat_server.url}/v1/models: {refused}\n"
    # a named model skips /v1/models; the /tokenize probe meets the 401 before the first message
    assert main(["chat", "--backend", f"openai:{chat_server.url}", "--model", "krmini-test", "--api-key", "x"]) == 1
    assert capsys.readouterr().err == f"krmini: error: {chat_server.url}/tokenize: {refused}\n"


def test_another_model_is_one_line_in_the_repl(chat_server, monkeypatch, capsys):
    feed(monkeypatch, ["안녕하세요", "/exit"])
    assert main(["chat", "--backend", f"openai:{chat_server.url}", "--model", "other", "--api-key", chat_server.key,
                 *GREEDY]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == (f"봇> (오류 / error: {chat_server.url}/v1/chat/completions: HTTP 404 model 'other' does not "
                        "exist; this server serves 'krmini-test')") and len(lines) == 3


def test_a_dead_port_is_one_line(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    for more in ([], ["--model", "m"]):
        assert main(["chat", "--backend", f"openai:{url}/v1", *more]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"krmini: error: {url}/") and "cannot connect" in err and err.count("\n") == 1


class Fake(BaseHTTPRequestHandler):
    """/ok: one model, no /tokenize, a streamed "안녕" + "하세요"; /html: a web page for everything;
    /boom: HTTP 500 on chat; /garbled: a stream event that is not JSON. Request bodies are kept."""

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/html"):
            return self._send(200, b"<html>hello</html>", "text/html")
        if self.path.endswith("/v1/models") and not self.path.startswith("/nothing"):
            return self._send(200, json.dumps({"object": "list", "data": [{"id": "fake-model"}]}).encode())
        return self._send(404, b'{"error": {"message": "no such path"}}')

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append((self.path, body, self.headers.get("Authorization")))
        if self.path.startswith("/html"):
            return self._send(200, b"<html>hello</html>", "text/html")
        if not self.path.endswith("/v1/chat/completions"):
            return self._send(404, b'{"error": {"message": "no such path"}}')
        if self.path.startswith("/boom"):
            return self._send(500, b'{"error": {"message": "the model fell over"}}')
        events = ["not json at all"] if self.path.startswith("/garbled") else [
            json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            *(json.dumps({"choices": [{"index": 0, "delta": {"content": p}}]}, ensure_ascii=False) for p in ("안녕", "하세요")),
            "[DONE]"]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for event in events:
            self.wfile.write(f"data: {event}\n\n".encode())
            self.wfile.flush()


@pytest.fixture(scope="module")
def fake():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    server.bodies = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_task_preset_and_template_options_reach_the_request(fake, monkeypatch, capsys):
    server, url = fake
    server.bodies.clear()
    monkeypatch.delenv(KEY_ENV, raising=False)
    feed(monkeypatch, ["이 문장을 번역해 줘", "/task review", "다시", "/task", "/task poem"])
    assert main(["chat", "--backend", f"openai:{url}/ok/v1", "--task", "translate", "--top-p", "0.5", "--seed", "7",
                 "--template-option", "enable_thinking=false", "--template-option", "depth=2", "--stop", "끝",
                 "--max-new-tokens", "9", "--api-key", "k"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"krmini chat — fake-model at {url}/ok" and out[2] == "봇> 안녕하세요"
    assert out[4] == "봇> 안녕하세요" and out[5].startswith("(작업 / tasks: summarize (요약 / summarize, temperature 0.3)")
    assert out[6] == "(/task: task 'poem': expected one of summarize, translate, review)"
    chats = [(body, key) for path, body, key in server.bodies if path.endswith("/chat/completions")]
    assert [p for p, _, _ in server.bodies] == ["/ok/tokenize", "/ok/v1/chat/completions", "/ok/v1/chat/completions"]
    (first, key), (second, _) = chats
    assert key == "Bearer k"
    assert first == {"model": "fake-model", "stream": True, "max_tokens": 9, "temperature": 0.1, "top_p": 0.5, "seed": 7,
                     "stop": ["끝"], "chat_template_kwargs": {"enable_thinking": False, "depth": 2},
                     "messages": [{"role": "system", "content": TASKS["translate"].system},
                                  {"role": "user", "content": "이 문장을 번역해 줘"}]}
    # /task review: its system prompt and sampling (the command asks for the whole preset); the history stays
    assert (second["temperature"], second["top_p"], second["seed"]) == (0.2, 0.9, 8)
    assert second["messages"][0] == {"role": "system", "content": TASKS["review"].system}
    assert second["messages"][1:] == [*first["messages"][1:], {"role": "assistant", "content": "안녕하세요"},
                                      {"role": "user", "content": "다시"}]


@pytest.mark.parametrize(("root", "said"), [
    ("html", "/v1/models: the answer is not a JSON object (is this an OpenAI-compatible server?"),
    ("nothing", "/nothing/v1/models: HTTP 404 no such path")])
def test_a_server_that_is_not_openai_compatible_is_one_line(fake, root, said, capsys):
    _, url = fake
    assert main(["chat", "--backend", f"openai:{url}/{root}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"krmini: error: {url}/") and said in err and err.count("\n") == 1


@pytest.mark.parametrize(("root", "said"), [
    ("boom", "/boom/v1/chat/completions: HTTP 500 the model fell over"),
    ("garbled", "/garbled/v1/chat/completions: a stream event is not JSON: not json at all")])
def test_a_failing_reply_is_one_line_and_the_repl_goes_on(fake, root, said, monkeypatch, capsys):
    _, url = fake
    feed(monkeypatch, ["안녕", "/system 짧게", "/exit"])
    assert main(["chat", "--backend", f"openai:{url}/{root}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2] == f"봇> (오류 / error: {url}{said})"
    assert out[3] == "(시스템 프롬프트 / system prompt: 짧게)" and len(out) == 4


def test_what_a_server_cannot_take_is_refused_in_one_line(fake, chat_run, capsys):
    _, url = fake
    backend = ["--backend", f"openai:{url}/ok"]
    cases = [
        ([*backend, "--repetition-penalty", "1.2"], "--repetition-penalty: an OpenAI-compatible server takes no "
         "repetition penalty; use --frequency-penalty or --presence-penalty"),
        ([*backend, "--truncate", "left"], "--truncate left: an OpenAI-compatible server cannot be asked to cut the prompt"),
        ([*backend, "--adapter", str(chat_run)], "--adapter: only with a RUN loaded here (a server serves its own weights)"),
        ([*backend, str(chat_run)], f"RUN {chat_run} and --backend: give one (RUN is a model loaded here, --backend a server)"),
        (["--backend", str(chat_run)], f"--backend {chat_run}: expected openai:URL, e.g. openai:http://127.0.0.1:8000/v1 "
         "(a model run is the RUN argument)"),
        (["--backend", "openai:127.0.0.1:8000"], "--backend openai:127.0.0.1:8000: expected an http:// or https:// URL, "
         "e.g. openai:http://127.0.0.1:8000/v1"),
        ([], "RUN: expected a chat run or checkpoint directory, or --backend openai:URL"),
        ([str(chat_run), "--api-key", "k"], "--api-key: only with --backend openai:URL (RUN is a model loaded here)"),
        ([*backend, "--template-option", "messages=1"], "--template-option messages: set by krmini itself"),
    ]
    for argv, said in cases:
        assert main(["chat", *argv]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"krmini: error: {said}") and err.count("\n") == 1, (argv, err)


def test_the_request_body_maps_sampling_to_openai_fields():
    backend = OpenAIBackend("http://127.0.0.1:9", model="m")
    body = backend.body([{"role": "user", "content": "안녕"}],
                        SamplingConfig(max_new_tokens=5, temperature=-1, top_k=3, top_p=0.8, frequency_penalty=0.5))
    assert body == {"model": "m", "messages": [{"role": "user", "content": "안녕"}], "stream": True, "max_tokens": 5,
                    "temperature": 0.0, "top_p": 0.8, "frequency_penalty": 0.5}  # top-k is no OpenAI field
    with pytest.raises(KrminiError, match="--repetition-penalty"):
        backend.body([], SamplingConfig(repetition_penalty=1.1))


@pytest.mark.integration
def test_llama_cpp_python_s_server(chat_run, tmp_path, monkeypatch, capsys):
    """`krmini export gguf` of the chat run served by `python -m llama_cpp.server`: the REPL's streamed greedy
    reply equals that server's non-streamed one."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install 'llama-cpp-python[server]')")
    for module in ("sse_starlette", "starlette_context", "pydantic_settings", "uvicorn"):
        pytest.importorskip(module, reason=f"llama-cpp-python's server needs {module} (pip install 'llama-cpp-python[server]')")
    pytest.importorskip("gguf", reason="gguf not installed (pip install 'krmini[gguf]')")
    gguf = tmp_path / "chat.gguf"
    assert main(["export", "gguf", str(chat_run), str(gguf), "--type", "f32"]) == 0
    port = free_port()
    log = open(tmp_path / "llama.log", "w", encoding="utf-8")  # noqa: SIM115 (the server writes to it until the end)
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                                "--port", str(port), "--n_ctx", "256", "--n_threads", "1"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"llama_cpp.server did not start:\n{(tmp_path / 'llama.log').read_text(encoding='utf-8')}")
                time.sleep(0.5)
        remote = OpenAIBackend.connect(url, None, None, None)
        assert not remote.exact and remote.context == 4096  # no /tokenize there: counts are estimated
        session = ChatSession(remote, SamplingConfig(max_new_tokens=8, temperature=0.0, seed=0))
        streamed = "".join(session.reply("안녕하세요"))
        asked = {"model": remote.model, "messages": [{"role": "user", "content": "안녕하세요"}], "max_tokens": 8,
                 "temperature": 0.0, "seed": 0}
        request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(asked).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as r:
            whole = json.loads(r.read())["choices"][0]["message"]["content"]
        assert streamed == whole
        feed(monkeypatch, ["안녕하세요"])
        assert main(["chat", "--backend", f"openai:{url}/v1", "--temperature", "0", "--seed", "0",
                     "--max-new-tokens", "8"]) == 0
        assert f"봇> {whole}" in capsys.readouterr().out.splitlines()
    finally:
        stop_process(process, log)
