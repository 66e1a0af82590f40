"""What an open model's checkpoint says about its tokens, beside its tokenizer.json.

Our own tokenizer fixes its special tokens by name (`<|bos|>`, `<|eos|>`, …). A tokenizer imported
with a Hugging Face model names them in files next to tokenizer.json instead, and we read them from
there, so that the model is used as its authors set it up:

    tokenizer_config.json    bos_token / eos_token / pad_token / unk_token, chat_template (Jinja)
    chat_template.jinja      the chat template, where newer transformers versions save it
    generation_config.json   eos_token_id (one id or several: the ids generation stops at)

These files are saved back unchanged, so an imported run's tokenizer/ still loads in transformers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from krmini.errors import KrminiError
from krmini.runs import read_json

CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"
GENERATION_FILE = "generation_config.json"
TOKEN_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")


@dataclass
class ForeignFiles:
    """The files beside tokenizer.json, as read (they are written back as they were)."""

    config: dict[str, Any]
    generation: dict[str, Any] = field(default_factory=dict)
    template_file: str | None = None  # chat_template.jinja's text, when the template lives there

    @property
    def chat_template(self) -> str | None:
        """The default chat template: chat_template.jinja, else tokenizer_config.json's (a string, or a
        list of named templates of which "default" is the one `apply_chat_template` uses)."""
        if self.template_file is not None:
            return self.template_file
        template = self.config.get("chat_template")
        if isinstance(template, list):
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        return template if isinstance(template, str) else None

    def token(self, name: str) -> str | None:
        """A special token's text: tokenizer_config.json holds a string or an AddedToken mapping."""
        value = self.config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        return value if isinstance(value, str) else None

    def save(self, out: Path) -> None:
        (out / CONFIG_FILE).write_text(json.dumps(self.config, ensure_ascii=False, indent=2), encoding="utf-8")
        if self.template_file is not None:
            (out / TEMPLATE_FILE).write_text(self.template_file, encoding="utf-8")
        if self.generation:
            (out / GENERATION_FILE).write_text(json.dumps(self.generation, indent=2), encoding="utf-8")


def read_foreign(directory: Path) -> ForeignFiles:
    """tokenizer_config.json (required: it names the special tokens) and the optional files beside it."""
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise KrminiError(f"{config_path}: not found; a tokenizer without krmini's special tokens needs its "
                          "tokenizer_config.json (it names bos/eos and holds the chat template)")
    generation = directory / GENERATION_FILE
    template = directory / TEMPLATE_FILE
    try:
        text = template.read_text(encoding="utf-8") if template.is_file() else None
    except (OSError, UnicodeDecodeError) as exc:
        raise KrminiError(f"{template}: not readable as UTF-8 text ({exc})") from None
    return ForeignFiles(read_json(config_path, "not found"),
                        read_json(generation, "not found") if generation.is_file() else {}, text)


def _ids(value: Any) -> list[int]:
    """generation_config's eos_token_id: one id, a list of ids, or absent."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


@dataclass
class ForeignTokens:
    """Resolved ids. `bos_id` is always set (documents are separated by it when we evaluate or
    fine-tune); a tokenizer without one (Qwen) uses its EOS, as Qwen's own config.json does.
    `stop_ids` are generation_config's eos_token_id where it has one, else the tokenizer's EOS."""

    bos_id: int
    eos_id: int
    pad_id: int
    stop_ids: frozenset[int]
    template_tokens: dict[str, str]  # bos_token, eos_token, … as the chat template sees them


def resolve_tokens(tok: Tokenizer, files: ForeignFiles, where: Path) -> ForeignTokens:
    def token_id(name: str) -> int | None:
        text = files.token(name)
        if text is None:
            return None
        i = tok.token_to_id(text)
        if i is None:
            raise KrminiError(f"{where / CONFIG_FILE}: {name} {text!r} is not in tokenizer.json's vocabulary")
        return i

    generated = {k: _ids(files.generation.get(f"{k}_token_id")) for k in ("bos", "eos", "pad")}
    eos = token_id("eos_token")
    if eos is None:
        if not generated["eos"]:
            raise KrminiError(f"{where / CONFIG_FILE}: eos_token: missing (and no eos_token_id in "
                              f"{GENERATION_FILE}); generation could never stop")
        eos = generated["eos"][0]
    bos = token_id("bos_token")
    bos = bos if bos is not None else (generated["bos"] or [eos])[0]
    pad = token_id("pad_token")
    pad = pad if pad is not None else (generated["pad"] or [eos])[0]
    stops = frozenset(generated["eos"] or [eos])
    vocab = tok.get_vocab_size()
    bad = next((i for i in stops | {bos, pad} if not 0 <= i < vocab), None)
    if bad is not None:
        raise KrminiError(f"{where / GENERATION_FILE}: token id {bad} is outside the vocabulary of {vocab}")
    names = {name: text for name in TOKEN_NAMES if (text := files.token(name)) is not None}
    return ForeignTokens(bos, eos, pad, stops, names)
