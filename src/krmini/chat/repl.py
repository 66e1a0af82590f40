"""`krmini chat`: a terminal chat that streams replies and keeps the conversation.

Input is plain `input()`: with `readline` loaded, line editing and multibyte (Korean IME) input
work in any UTF-8 terminal. Replies come from a backend (`krmini.chat.backend`): a model in this
process or an OpenAI-compatible server, with the same commands. History is counted every turn; when
it no longer fits the context, the oldest exchanges are dropped and the user is told.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from krmini.argtypes import SEED_LIMIT
from krmini.chat.backend import Backend
from krmini.chat.tasks import listing, task, with_task
from krmini.chat.template import fit_turns, prompt_budget
from krmini.errors import KrminiError
from krmini.infer.sampling import SamplingConfig

try:  # noqa: SIM105 - readline gives input() line editing where the platform has it
    import readline  # noqa: F401
except ImportError:
    pass

HELP = ("명령 / commands: /reset 대화 지우기 (clear history) · /system TEXT 시스템 프롬프트 (set system prompt) · "
        "/temp X 온도 (temperature) · /task NAME 작업 프리셋 (task preset; /task lists them) · /exit 끝내기 (quit)")


@dataclass
class ChatSession:
    """A conversation through a backend: history, system prompt and sampling settings. A local
    backend streams through `Engine.stream`, so stop strings, special tokens and the compiled step
    behave as in `krmini generate` and the server; a remote one asks its server for the same."""

    backend: Backend
    sampling: SamplingConfig
    system: str = ""
    history: list[dict] = field(default_factory=list)
    # more /commands from the program that starts the REPL: name → (help text, handler(session, argument));
    # `krmini chat --memo DB` adds /memo this way (chat knows nothing of the memo assistant)
    commands: dict[str, tuple[str, Callable[[ChatSession, str], None]]] = field(default_factory=dict)

    def help(self) -> str:
        return HELP + "".join(f" · {name} {text}" for name, (text, _) in self.commands.items())

    def messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def reply(self, text: str, notice=print) -> Iterator[str]:
        """Stream the reply to `text`; the history keeps both once the reply is complete."""
        context = self.backend.context
        budget = prompt_budget(context, self.sampling.max_new_tokens)
        messages, dropped = fit_turns(self.backend.count, [*self.messages(), {"role": "user", "content": text}],
                                      budget)
        if dropped:
            self.history = self.history[dropped:]
            notice(f"(문맥 길이를 넘어 오래된 메시지 {dropped}개를 뺐습니다 / dropped the {dropped} oldest "
                   f"messages to fit the {context}-token context)")
        pieces = []
        for piece in self.backend.stream(messages, self.sampling):
            pieces.append(piece)
            yield piece
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": "".join(pieces)}]
        if self.sampling.seed is not None:  # reproducible, but not the same random draws every turn
            self.sampling = replace(self.sampling, seed=(self.sampling.seed + 1) % SEED_LIMIT)

    def command(self, line: str) -> bool:
        """Handle a /command; False means quit."""
        name, _, arg = line.partition(" ")
        if name in ("/exit", "/quit"):
            return False
        if name in self.commands:
            self.commands[name][1](self, arg.strip())
        elif name == "/reset":
            self.history = []
            print("(대화를 지웠습니다 / history cleared)")
        elif name == "/system":
            self.system = arg.strip()
            print(f"(시스템 프롬프트 / system prompt: {self.system or '없음 (none)'})")
        elif name == "/temp":
            try:
                changed = replace(self.sampling, temperature=float(arg))
                changed.validate()  # the same check as --temperature and the server's temperature
            except (ValueError, KrminiError) as exc:
                why = exc if isinstance(exc, KrminiError) else "expected a number"
                print(f"(/temp 다음에 숫자를 주세요, 예: /temp 0.7 / usage: /temp 0.7 — {why})")
            else:
                self.sampling = changed
                print(f"(온도 / temperature = {self.sampling.temperature})")
        elif name == "/task":
            self.use_task(arg.strip())
        else:
            print(self.help())
        return True

    def use_task(self, name: str) -> None:
        """`/task NAME`: the preset's system prompt and sampling; `/task` alone lists the presets."""
        if not name:
            print(f"(작업 / tasks: {listing()})")
            return
        try:
            preset = task(name)
        except KrminiError as exc:
            print(f"(/task: {exc})")
            return
        self.system, self.sampling = preset.system, with_task(self.sampling, name)
        print(f"(작업 / task {name}: temperature {self.sampling.temperature}, top_p {self.sampling.top_p}; "
              f"시스템 프롬프트 / system prompt: {self.system})")


def repl(session: ChatSession, out=None) -> None:
    out = out or sys.stdout  # looked up per call: a caller (or a test) may have replaced sys.stdout
    out.write(f"krmini chat — {session.backend.name}\n{session.help()}\n")
    while True:
        try:
            line = input("나> ").strip()
        except EOFError:
            out.write("\n")
            return
        if not line:
            continue
        if line.startswith("/"):
            if not session.command(line):
                return
            continue
        out.write("봇> ")
        out.flush()
        try:
            for piece in session.reply(line):
                out.write(piece)
                out.flush()
        except KrminiError as exc:
            out.write(f"(오류 / error: {exc})")
        except KeyboardInterrupt:
            out.write(" (중단 / interrupted)")
        out.write("\n")
