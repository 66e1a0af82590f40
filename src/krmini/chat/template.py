"""The one chat template: how a conversation becomes token ids, for training and for serving alike.

    <|bos|><|system|>…<|end|><|user|>…<|end|><|assistant|>…<|end|><|user|>…<|end|><|assistant|>

Role tokens are reserved special tokens, so a message's text never merges with its role. Each
message is its role token, its content, then `<|end|>`; a reply is generated after a bare
`<|assistant|>` and stops at `<|end|>`. Training learns only the assistant's content and its
`<|end|>` (the mask). No newlines or spaces are added around role tokens: the same string, given to
`transformers`' `apply_chat_template` through `CHAT_TEMPLATE` (defined with the tokenizer, which saves
it), tokenizes to exactly these ids.

An imported open model (Llama 3, Qwen, Mistral, …) keeps its own format: `prompt_ids` renders the
checkpoint's Jinja template (`krmini.chat.jinja`) and a reply stops at the ids its generation config
names. Our own models keep the layout above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from krmini.chat.jinja import render_template
from krmini.errors import KrminiError
from krmini.tokenizer.tokenizer import CHAT_TEMPLATE  # noqa: F401  (re-exported: the Jinja form of `render`)

if TYPE_CHECKING:
    from krmini.tokenizer import KoTokenizer

ROLES = ("system", "user", "assistant")
END = "<|end|>"


def role_token(role: str) -> str:
    return f"<|{role}|>"


@dataclass
class Rendered:
    ids: list[int]
    mask: list[int]  # 1 where the token is learned: assistant content and its <|end|>


def render(tokenizer: KoTokenizer, messages: list[dict], add_generation_prompt: bool = False) -> Rendered:
    """Token ids (and the training mask) of a conversation; see the module docstring for the layout."""
    ids, mask = [tokenizer.bos_id], [0]
    end_id = tokenizer.token_id(END)
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise KrminiError(f"messages[{i}].role: expected one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise KrminiError(f"messages[{i}].content: expected a string, got {type(content).__name__}")
        body = [*tokenizer.encode(content), end_id]
        learned = 1 if role == "assistant" else 0
        ids += [tokenizer.token_id(role_token(role)), *body]
        mask += [0, *[learned] * len(body)]
    if add_generation_prompt:
        ids.append(tokenizer.token_id(role_token("assistant")))
        mask.append(0)
    return Rendered(ids, mask)


def check_chat_tokenizer(tokenizer: KoTokenizer) -> None:
    """Fail clearly for a tokenizer that cannot format a conversation: ours without chat tokens, or a
    foreign one whose checkpoint has no chat template (a base model)."""
    if tokenizer.foreign is None:
        tokenizer.token_id(END)
    elif tokenizer.chat_template is None:
        raise KrminiError("tokenizer: this imported model has no chat template (tokenizer_config.json: "
                          "chat_template); it is a base model: use `krmini generate`")


def prompt_ids(tokenizer: KoTokenizer, messages: list[dict]) -> list[int]:
    """The ids a reply is generated after: the conversation plus a bare `<|assistant|>` (ours), or the
    checkpoint's own template with its generation prompt (an imported model)."""
    if tokenizer.foreign is None:
        return render(tokenizer, messages, add_generation_prompt=True).ids
    check_chat_tokenizer(tokenizer)
    text = render_template(tokenizer.chat_template, messages, True, tokenizer.template_tokens)
    return tokenizer.encode(text)


def stop_ids(tokenizer: KoTokenizer) -> set[int]:
    """A reply ends at `<|end|>`; EOS and a new role token also end it (a weak model may skip `<|end|>`).
    An imported model's reply ends where its generation config says (Llama 3 `<|eot_id|>`, Qwen `<|im_end|>`)."""
    if tokenizer.foreign is not None:
        return set(tokenizer.stop_ids)
    return {tokenizer.token_id(END), tokenizer.eos_id, *(tokenizer.token_id(role_token(r)) for r in ROLES)}


def prompt_budget(context: int, max_new_tokens: int) -> int:
    """The prompt tokens a conversation may fill before its oldest turns are dropped: room for a whole
    reply, but never less than half the context (a reply limit near the context must not empty the history)."""
    return max(context - max_new_tokens, context // 2)


def fit_history(tokenizer: KoTokenizer, messages: list[dict], budget: int) -> tuple[list[dict], int]:
    """Drop the oldest non-system turns until the prompt fits in `budget` tokens.

    Returns the kept messages and how many were dropped. A leading system message is always kept;
    the newest message is never dropped (if it alone is too long, the caller reports it).
    """
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    dropped = 0
    while len(turns) > 1 and len(prompt_ids(tokenizer, system + turns)) > budget:
        # drop a whole exchange (user + its reply) so the history still alternates
        step = 2 if len(turns) > 2 and turns[0]["role"] == "user" and turns[1]["role"] == "assistant" else 1
        turns = turns[step:]
        dropped += step
    return system + turns, dropped
