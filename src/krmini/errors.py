"""One exception type for every problem a user can fix.

The CLI turns a `KrminiError` into a single line on stderr and exit code 1, so bad input never
shows a traceback. Raise it with a message that names the file or field and what was expected.
"""


class KrminiError(Exception):
    """A user-facing error: bad input, missing file, incompatible checkpoint."""
