"""Text normalisation applied to every document before filtering and tokenization.

NFC first: Korean can be written as precomposed syllables (가) or as conjoining jamo (ᄀ+ᅡ), which
look identical but tokenize differently. Then control characters go, and whitespace is made regular.
"""

from __future__ import annotations

import re
import unicodedata

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\ufeff]")
# Runs of spaces, tabs, no-break and ideographic spaces, which become one " ". A lone " " (most of
# them) is not matched at all: replacing it by itself cost half of this module's time.
_SPACES = re.compile(r" [ \t\u00a0\u3000]+|[\t\u00a0\u3000][ \t\u00a0\u3000]*")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    """NFC, drop control/zero-width characters, collapse spaces, trim lines, at most one blank line."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", text).strip()

