"""One exception type for every problem a user can fix.

The CLI turns a `KrminiError` into a single line on stderr and exit code 1, so bad input never
shows a traceback. Raise it with a message that names the file or field and what was expected. An
`OSError` about a file (unreadable, missing, a directory where a file belongs) that no check caught
first is one line too, naming the file.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class KrminiError(Exception):
    """A user-facing error: bad input, missing file, incompatible checkpoint."""


def exit_code(handler: Callable[[Any], int | None], args: Any, prog: str = "krmini") -> int:
    """Run a command handler: its exit code; one line on stderr and 1 for a `KrminiError`; 130 on Ctrl-C."""
    try:
        return int(handler(args) or 0)
    except KrminiError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.filename is None:
            raise
        print(f"{prog}: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
