"""An open model's own chat template (Jinja), rendered the way `transformers`' `apply_chat_template` does.

A checkpoint from Hugging Face carries its chat format as a Jinja template in tokenizer_config.json
(or chat_template.jinja). The model was tuned on exactly that text, so we render the template
rather than imitate it; the same environment as transformers' makes the same string:

* a sandbox (`ImmutableSandboxedEnvironment`): a template is code from the internet and must not
  reach Python internals or change its inputs;
* `trim_blocks` and `lstrip_blocks`: a `{% ... %}` tag's own line break and indentation are dropped,
  so templates can be laid out readably without adding whitespace to the prompt;
* the loop-controls extension (`{% break %}`, `{% continue %}`);
* `raise_exception(msg)` (a template rejecting a conversation, such as roles that do not alternate:
  here a one-line error), `strftime_now(fmt)` (Llama 3.2 puts today's date in its system prompt),
  and a `tojson` that keeps non-ASCII text (Korean) as it is;
* the variables `messages`, `add_generation_prompt`, `tools`, `documents` and the tokenizer's special
  tokens by name (`bos_token`, `eos_token`, …), plus the caller's template options (`--template-option
  enable_thinking=false` for Qwen3's: transformers' `apply_chat_template(..., **kwargs)`).

The rendered text is tokenized without adding special tokens (the template writes them itself), as
`apply_chat_template` does; the tests compare the ids with transformers' for each family.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import lru_cache

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from krmini.errors import KrminiError


class TemplateRejected(KrminiError):
    """The template itself refused the conversation (its `raise_exception`)."""


def _raise_exception(message: str):
    raise TemplateRejected(f"chat template: {message}")


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=8)
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise KrminiError(f"chat template: not valid Jinja (line {exc.lineno}: {exc.message})") from None


def render_template(source: str, messages: list[dict], add_generation_prompt: bool,
                    special_tokens: dict[str, str], options: dict | None = None) -> str:
    """The conversation as the template writes it, with `options` as more variables. Keys whose value
    is None are dropped first (as transformers does: many templates test `'key' in message`)."""
    messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
    try:
        return compile_template(source).render(**(options or {}), messages=messages,
                                               add_generation_prompt=add_generation_prompt,
                                               tools=None, documents=None, **special_tokens)
    except TemplateRejected:
        raise
    except (jinja2.TemplateError, TypeError, ValueError) as exc:  # an undefined name, `'a' + 1`, …
        raise KrminiError(f"chat template: {exc}") from None


RESERVED = frozenset({"messages", "add_generation_prompt", "tools", "documents", "raise_exception", "strftime_now"})
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_template_options(items: list[str]) -> dict[str, bool | int | str]:
    """`KEY=VALUE` strings (`--template-option`) as template variables: true/false are booleans, an
    integer is an int, anything else the string itself."""
    options: dict[str, bool | int | str] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            raise KrminiError(f"--template-option {item!r}: expected KEY=VALUE with KEY a name "
                              "(letters, digits, _), e.g. enable_thinking=false")
        if key in RESERVED or key.endswith("_token"):
            raise KrminiError(f"--template-option {key}: set by krmini itself (the conversation, the tokenizer's special "
                              "tokens or a template function); choose another name")
        lowered = text.strip().lower()
        if lowered in ("true", "false"):
            options[key] = lowered == "true"
        elif re.fullmatch(r"[+-]?\d+", text.strip()):
            options[key] = int(text)
        else:
            options[key] = text
    return options
