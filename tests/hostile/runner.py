"""Run `krmini.cli.main` on many argv lists in one process and print each outcome as a JSON line.

The unreadable-file cases need a process that file permissions bind: the tests start this one as an
unprivileged user, or as root without the capabilities that bypass permissions (see test_cli_paths).
stdin: a JSON list of argv lists. Every command runs with stdin at EOF and no server ever listening.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import sys


def outcome(argv: list[str]) -> dict:
    from krmini.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 - what escaped main is the finding
            import traceback

            traceback.print_exc()
            code = f"raised {type(exc).__name__}"
    return {"argv": argv, "code": code, "out": out.getvalue(), "err": err.getvalue()}


def no_server(*args, **kwargs):
    raise RuntimeError("the server started although its inputs were unreadable")


def main() -> None:
    cases = json.load(sys.stdin)
    builtins.input = lambda prompt="": (_ for _ in ()).throw(EOFError)
    with contextlib.suppress(ImportError):
        import uvicorn

        uvicorn.run = no_server
    for argv in cases:
        print(json.dumps(outcome(argv), ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
