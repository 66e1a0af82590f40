"""Task presets (`--task`, `/task`) and template options (`--template-option KEY=VALUE`) for the local model:
the preset's system prompt and sampling reach the backend, flags given win, and an imported model's Jinja
template gets the options as variables."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from krmini.chat import cli as chat_cli
from krmini.chat.backend import LocalBackend
from krmini.chat.jinja import parse_template_options, render_template
from krmini.chat.repl import ChatSession
from krmini.chat.tasks import TASKS
from krmini.cli import main
from krmini.errors import KrminiError
from krmini.infer.sampling import SamplingConfig

THINKING = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% if enable_thinking is defined and not enable_thinking %}"
            "<think></think>{% endif %}{% endif %}{% if depth %}[{{ depth + 1 }}]{% endif %}{{ style or '' }}")


class Recording:
    """A backend that keeps what it is asked and answers "네"."""

    name, context = "recording", 512

    def __init__(self) -> None:
        self.asked: list[tuple[list[dict], SamplingConfig]] = []

    def count(self, messages: list[dict]) -> int:
        return sum(len(m["content"]) for m in messages)

    def stream(self, messages: list[dict], sampling: SamplingConfig):
        self.asked.append((messages, sampling))
        yield "네"


def test_task_command_sets_system_prompt_and_sampling_and_lists_the_choices(capsys):
    backend = Recording()
    session = ChatSession(backend, SamplingConfig(temperature=0.8, top_p=1.0, seed=3))
    session.command("/task summarize")
    assert "".join(session.reply("긴 글")) == "네"
    messages, sampling = backend.asked[-1]
    assert messages == [{"role": "system", "content": TASKS["summarize"].system}, {"role": "user", "content": "긴 글"}]
    assert (sampling.temperature, sampling.top_p, sampling.seed) == (0.3, 0.9, 3)
    session.command("/task")
    session.command("/task 시")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("(작업 / task summarize: temperature 0.3, top_p 0.9; 시스템 프롬프트 / system prompt: 너는")
    assert out[1] == ("(작업 / tasks: summarize (요약 / summarize, temperature 0.3) · translate (번역 / translate, "
                      "temperature 0.1) · review (검토 / review, temperature 0.2))")
    assert out[2] == "(/task: task '시': expected one of summarize, translate, review)"
    assert session.system == TASKS["summarize"].system  # an unknown name changes nothing


def test_every_preset_is_a_korean_system_prompt_with_low_temperature():
    assert set(TASKS) == {"summarize", "translate", "review"}
    for preset in TASKS.values():
        assert any("가" <= ch <= "힣" for ch in preset.system) and len(preset.system) > 30
        assert 0 < preset.sampling["temperature"] <= 0.3 and set(preset.sampling) <= {"temperature", "top_p"}


def test_cli_task_with_the_local_model_and_flags_that_win(chat_run, monkeypatch, capsys):
    started = []
    monkeypatch.setattr(chat_cli, "repl", started.append)
    assert main(["chat", str(chat_run), "--task", "translate", "--device", "cpu"]) == 0
    assert main(["chat", str(chat_run), "--task", "review", "--temperature", "0.9", "--system", "짧게", "--device", "cpu"]) == 0
    assert main(["chat", str(chat_run), "--device", "cpu"]) == 0
    (translate, review, plain) = started
    assert isinstance(translate.backend, LocalBackend)
    assert (translate.system, translate.sampling.temperature, translate.sampling.top_p) == (
        TASKS["translate"].system, 0.1, 0.9)
    assert (review.system, review.sampling.temperature, review.sampling.top_p) == ("짧게", 0.9, 0.9)
    assert (plain.system, plain.sampling.temperature, plain.sampling.top_p) == ("", 0.8, 1.0)  # the usual defaults
    with pytest.raises(SystemExit) as refused:
        main(["chat", str(chat_run), "--task", "poem"])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "argument --task: invalid choice: 'poem'" in err and all(name in err for name in TASKS)
    assert err.count("\n") == 1


@pytest.mark.parametrize(("items", "expected"), [
    (["enable_thinking=false"], {"enable_thinking": False}),
    (["a=True", "b=12", "c=-3", "d=1.5", "e=", "f=x=y"], {"a": True, "b": 12, "c": -3, "d": "1.5", "e": "", "f": "x=y"}),
])
def test_template_option_values(items, expected):
    assert parse_template_options(items) == expected


@pytest.mark.parametrize(("item", "said"), [("noequals", "expected KEY=VALUE"), ("1x=2", "expected KEY=VALUE"),
                                            ("bos_token=x", "set by krmini itself"), ("tools=1", "set by krmini itself")])
def test_bad_template_options_are_one_line(item, said):
    with pytest.raises(KrminiError, match=said):
        parse_template_options([item])


def test_a_jinja_template_branches_on_the_options():
    messages = [{"role": "user", "content": "안녕"}]
    assert render_template(THINKING, messages, True, {}) == "<user>안녕<assistant>"
    assert render_template(THINKING, messages, True, {}, {"enable_thinking": True}) == "<user>안녕<assistant>"
    options = parse_template_options(["enable_thinking=false", "depth=2", "style=짧게"])
    assert render_template(THINKING, messages, True, {}, options) == "<user>안녕<assistant><think></think>[3]짧게"


def test_an_imported_model_s_template_gets_the_options_through_the_local_backend():
    tokenizer = SimpleNamespace(foreign=object(), chat_template=THINKING, template_tokens={},
                                encode=lambda text: [ord(ch) for ch in text])
    prompts = []
    engine = SimpleNamespace(tokenizer=tokenizer, source="imported", context=256,
                             stream=lambda ids, sampling: prompts.append("".join(map(chr, ids))) or iter(["네"]))
    backend = LocalBackend(engine, {"enable_thinking": False})
    session = ChatSession(backend, SamplingConfig())
    assert "".join(session.reply("안녕")) == "네"
    assert prompts == ["<user>안녕<assistant><think></think>"]
    assert backend.count([{"role": "user", "content": "안녕"}]) == len(prompts[0])


def test_our_own_layout_refuses_template_options(chat_run, capsys):
    assert main(["chat", str(chat_run), "--template-option", "enable_thinking=false", "--device", "cpu"]) == 1
    assert capsys.readouterr().err == (
        "krmini: error: --template-option enable_thinking: this model uses krmini's own chat layout, which takes no "
        "options (they are variables of an imported model's Jinja chat template)\n")
