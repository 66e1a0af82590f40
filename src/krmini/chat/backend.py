"""Where a chat's replies come from: a model in this process or a server (`krmini.chat.remote`).

A backend is four things, all the REPL and the memo assistant need:

    name                       what it is, for the banner
    context                    its context in tokens
    count(messages)            the prompt tokens of a conversation (to drop the oldest turns)
    stream(messages, sampling) the reply's text pieces, as they are made

`LocalBackend` renders messages with the chat template (ours, or an imported model's Jinja template
with the template options) and streams through `Engine.stream`; counts are exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from krmini.chat.template import check_template_options, prompt_ids
from krmini.errors import KrminiError
from krmini.infer.engine import Engine, PromptTooLong
from krmini.infer.sampling import SamplingConfig


class Backend(Protocol):
    name: str
    context: int

    def count(self, messages: list[dict]) -> int: ...

    def stream(self, messages: list[dict], sampling: SamplingConfig) -> Iterator[str]: ...


class LocalBackend:
    def __init__(self, engine: Engine, template_options: dict | None = None):
        check_template_options(engine.tokenizer, template_options or {})
        self.engine = engine
        self.template_options = dict(template_options or {})
        self.name = str(engine.source)
        self.context = engine.context

    def count(self, messages: list[dict]) -> int:
        return len(prompt_ids(self.engine.tokenizer, messages, self.template_options))

    def stream(self, messages: list[dict], sampling: SamplingConfig) -> Iterator[str]:
        """Checked before the first piece: a prompt too long for the context is one line."""
        try:
            return self.engine.stream(prompt_ids(self.engine.tokenizer, messages, self.template_options), sampling)
        except PromptTooLong as exc:
            raise KrminiError(f"message: {exc.tokens} tokens with the system prompt; the {exc.context}-token "
                              f"context holds at most {exc.context - 1}; send a shorter message") from None
