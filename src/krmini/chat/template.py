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

Training an imported model (`training_sequences`) finds each reply's tokens by rendering prefixes:
the conversation up to the reply with the generation prompt (what the model is given when it
answers) and the same conversation with the reply; the text between the two is the reply as the
template writes it. It is learned up to and including its first stop id (Qwen's `<|im_end|>`, Llama
3's `<|eot_id|>`, Mistral's `</s>`), not the formatting after it. When every reply's prompt continues
the tokens of the previous prompt and reply exactly, the conversation is one sequence; a template
that writes earlier turns differently once the conversation goes on (Qwen3 drops the thinking of
earlier replies) gives one sequence per reply instead, each its prompt exactly as at inference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
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


def _learned(reply: list[int], stops: frozenset[int]) -> list[int]:
    """The mask of a reply's tokens: all of them up to and including the first stop id."""
    end = next((i + 1 for i, t in enumerate(reply) if t in stops), len(reply))
    return [1] * end + [0] * (len(reply) - end)


def training_sequences(tokenizer: KoTokenizer, messages: list[dict]) -> list[Rendered]:
    """A conversation (ending with a reply) as token ids and training masks: ours as `render` lays it
    out; an imported model's through its own template, one sequence or one per reply (module docstring).

    Raises `KrminiError` when the template refuses the conversation or writes the prompt of a reply
    other than as the start of the conversation with it (Mistral's moves a system message into the
    last user turn), so the reply's tokens cannot be told apart."""
    if tokenizer.foreign is None:
        return [render(tokenizer, messages)]
    check_chat_tokenizer(tokenizer)
    template, names = tokenizer.chat_template, tokenizer.template_tokens
    pieces = []  # (prompt ids, reply ids) of each reply
    for a in (i for i, m in enumerate(messages) if m["role"] == "assistant"):
        prompt = render_template(template, messages[:a], True, names)
        through = render_template(template, messages[:a + 1], False, names)
        if not through.startswith(prompt) or through == prompt:
            raise KrminiError("chat template: a reply's prompt is not the start of the conversation with "
                              "the reply, so its tokens cannot be told apart")
        pieces.append((tokenizer.encode(prompt), tokenizer.encode(through[len(prompt):])))
    stops = tokenizer.stop_ids
    if all(p2[:len(p1) + len(r1)] == p1 + r1 for (p1, r1), (p2, _) in pairwise(pieces)):
        prompt, reply = pieces[-1]
        ids, mask = prompt + reply, [0] * (len(prompt) + len(reply))
        for p, r in pieces:
            mask[len(p):len(p) + len(r)] = _learned(r, stops)
        return [Rendered(ids, mask)]
    return [Rendered(p + r, [0] * len(p) + _learned(r, stops)) for p, r in pieces]


def check_chat_tokenizer(tokenizer: KoTokenizer) -> None:
    """Fail clearly for a tokenizer that cannot format a conversation: ours without chat tokens, or a
    foreign one whose checkpoint has no chat template (a base model)."""
    if tokenizer.foreign is None:
        tokenizer.token_id(END)
    elif tokenizer.chat_template is None:
        raise KrminiError("tokenizer: this imported model has no chat template (tokenizer_config.json: "
                          "chat_template); it is a base model: use `krmini generate` (to chat with it or tune it "
                          "on conversations, add the chat_template of its instruct version)")


def prompt_ids(tokenizer: KoTokenizer, messages: list[dict], options: dict | None = None) -> list[int]:
    """The ids a reply is generated after: the conversation plus a bare `<|assistant|>` (ours), or the
    checkpoint's own template with its generation prompt (an imported model), given `options` as more
    template variables (`--template-option`; ours has none: `check_template_options`)."""
    if tokenizer.foreign is None:
        return render(tokenizer, messages, add_generation_prompt=True).ids
    check_chat_tokenizer(tokenizer)
    text = render_template(tokenizer.chat_template, messages, True, tokenizer.template_tokens, options)
    return tokenizer.encode(text)


def check_template_options(tokenizer: KoTokenizer, options: dict) -> None:
    if options and tokenizer.foreign is None:
        raise KrminiError(f"--template-option {next(iter(options))}: this model uses krmini's own chat layout, which "
                          "takes no options (they are variables of an imported model's Jinja chat template)")


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
    """Drop the oldest non-system turns until the prompt fits in `budget` tokens (`fit_turns`)."""
    return fit_turns(lambda m: len(prompt_ids(tokenizer, m)), messages, budget)


def fit_turns(count: Callable[[list[dict]], int], messages: list[dict], budget: int) -> tuple[list[dict], int]:
    """Drop the oldest non-system turns until `count(messages)` (prompt tokens) is at most `budget`.

    Returns the kept messages and how many were dropped. A leading system message is always kept;
    the newest message is never dropped (if it alone is too long, the caller reports it).
    """
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    dropped = 0
    while len(turns) > 1 and count(system + turns) > budget:
        # drop a whole exchange (user + its reply) so the history still alternates
        step = 2 if len(turns) > 2 and turns[0]["role"] == "user" and turns[1]["role"] == "assistant" else 1
        turns = turns[step:]
        dropped += step
    return system + turns, dropped
