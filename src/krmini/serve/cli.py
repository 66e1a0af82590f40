"""`krmini serve`: the OpenAI-compatible API and the web chat page for one chat model.

Layers above this one add options and routes (`--memo`): the top-level CLI passes their modules in
as `more`, each with `add_serve_args(parser)` and `serve_extension(args)` (an `api.Extension` or None).
"""

from __future__ import annotations

import functools
import ipaddress
import sys
from collections.abc import Iterable
from types import ModuleType

from krmini.argtypes import POSITIVE_INT, integer
from krmini.chat.cli import chat_engine
from krmini.errors import KrminiError
from krmini.infer.cli import add_device_args


def register(subparsers, more: Iterable[ModuleType] = ()) -> None:
    p = subparsers.add_parser(
        "serve", help="API 서버·웹 채팅 / OpenAI-compatible server and web chat page",
        description="Serve a chat model: POST /v1/chat/completions and /v1/completions (stream or not), POST /v1/embeddings, "
        "GET /v1/models, GET /health, GET /openapi.json, and a web chat page at /. Binds 127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument("model", metavar="RUN", help="SFT run or checkpoint directory")
    p.add_argument("--adapter", help="LoRA adapter directory to load onto RUN (a base model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=integer(1, 65535), default=8000, help="port, 1-65535 (default: 8000)")
    p.add_argument("--api-key", help="require `Authorization: Bearer KEY` on /v1/ requests")
    p.add_argument("--name", help="model id reported by the API (default: the run directory's name)")
    p.add_argument("--max-tokens", type=POSITIVE_INT, default=256,
                   help="reply length when a request gives none (default: 256; capped by the context)")
    add_device_args(p)
    more = tuple(more)
    for module in more:
        module.add_serve_args(p)
    p.set_defaults(func=functools.partial(run, more=more))


def run(args, more: tuple[ModuleType, ...] = ()) -> int:
    try:
        import uvicorn

        from krmini.serve.api import create_app
        from krmini.serve.worker import Worker
    except ImportError:
        raise KrminiError("the server needs FastAPI and uvicorn: pip install 'krmini[serve]'") from None
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback and not args.api_key:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach it may use it", file=sys.stderr)
    extensions = [e for e in (m.serve_extension(args) for m in more) if e is not None]  # before the model loads
    # every reply ends at <|end|>, EOS or a new role token; plain completions stop there too
    engine = chat_engine(args)
    name = args.name or engine.source.parent.parent.name
    worker = Worker(engine)
    app = create_app(worker, name, args.api_key, args.max_tokens, extensions)
    extra = "".join(f", /v1/{e.feature}/" for e in extensions)
    print(f"krmini serve: {name} on http://{args.host}:{args.port}/ (API: /v1/chat/completions{extra})", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        worker.close()
    return 0
