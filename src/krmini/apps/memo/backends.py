"""Where the memo assistant's answers come from: `--backend RUN` (a chat run, our engine in this
process) or `--backend openai:URL` (any OpenAI-compatible server). Both are chat backends
(`krmini.chat.backend`, `krmini.chat.remote`): the model's `context`, `count(messages)` and
`stream(messages, sampling)`; the OpenAI client and its options (--model, --api-key or
$OPENAI_API_KEY, --context) are the chat layer's, shared with `krmini chat --backend`.
"""

from __future__ import annotations

import argparse

from krmini.chat.backend import LocalBackend
from krmini.chat.remote import OPENAI_PREFIX, add_remote_args, open_remote


def add_backend_args(p) -> None:
    p.add_argument("--backend", required=True, metavar="RUN|openai:URL",
                   help="a chat run or checkpoint directory, or openai:http://HOST:PORT (any OpenAI-compatible server)")
    add_remote_args(p)


def open_backend(args):
    spec = args.backend
    if spec.startswith(OPENAI_PREFIX):
        return open_remote(spec, args)
    from krmini.chat.cli import chat_engine

    local = argparse.Namespace(**vars(args))
    local.model, local.adapter = spec, None  # chat_engine's names for the run and a LoRA adapter
    return LocalBackend(chat_engine(local))
