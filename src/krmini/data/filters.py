"""Document quality filters, boilerplate stripping and PII scrubbing.

Each filter answers with a reason name (the key it is counted under in the manifest) or None.
Thresholds were chosen by looking at what they drop on the Korean corpora in `../shared/data`
(see docs/data.md): they remove junk — lines repeated over and over, texts that are not Korean,
pages of navigation links — while leaving statutes, judgments and short reviews alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from krmini.errors import KrminiError

_HANGUL = re.compile(r"[가-힣ㄱ-ㆎ]+")
_NOT_LETTERS = re.compile(r"[\W\d_]+")

# Whole lines that are site furniture, not writing: copyright notices, sharing/subscription
# prompts, navigation. Only short lines are tested, so a paragraph that mentions them stays.
_BOILERPLATE = re.compile(
    r"무단\s*(전재|복제).{0,20}(재배포|금지)"
    r"|저작권자\s*[©ⓒ(]"
    r"|all rights reserved"
    r"|^\s*(copyright|ⓒ|©)\s"
    r"|^\s*[▶☞►]\s*.{0,60}(바로가기|구독|클릭|보러가기)"
    r"|(기사\s*제보|제보하기).{0,40}(카카오톡|이메일|전화)"
    r"|^\s*(공유하기|댓글\s*\d*|목록|이전\s*글|다음\s*글|맨\s*위로|로그인|회원가입|본문\s*바로가기)\s*$",
    re.IGNORECASE,
)
_BOILERPLATE_MAX_LINE = 200

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Mobile (010-1234-5678, 01012345678), Seoul/regional landlines with separators, +82 forms.
_PHONE = re.compile(
    r"(?<![\d-])(?:\+82[-\s]?|0)(?:1[016789][-.\s]?\d{3,4}[-.\s]?\d{4}"
    r"|(?:2|[3-6][1-5])[-.)\s]\d{3,4}[-.\s]\d{4})(?![\d-])"
)
# 주민등록번호: YYMMDD-GNNNNNN with a real month/day and a gender digit 1-8.
_RRN = re.compile(r"(?<!\d)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\s?-\s?[1-8]\d{6}(?!\d)")
PII_PATTERNS = (("rrn", _RRN, "[주민번호]"), ("phone", _PHONE, "[전화번호]"), ("email", _EMAIL, "[이메일]"))


@dataclass
class FilterConfig:
    """Quality filters; a threshold of 0 (or a flag set to false) turns that filter off."""

    min_hangul_ratio: float = 0.0  # Hangul share of letters (Hangul + Latin + Hanja …)
    max_repeated_line_ratio: float = 0.0  # share of characters in lines already seen in the document
    max_repeated_ngram_ratio: float = 0.0  # share of token 5-grams that repeat an earlier one
    strip_boilerplate: bool = False
    scrub_pii: bool = False

    def validate(self, where: str) -> None:
        for name in ("min_hangul_ratio", "max_repeated_line_ratio", "max_repeated_ngram_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise KrminiError(f"{where}.{name}: expected a ratio between 0 and 1, got {getattr(self, name)}")


def hangul_ratio(text: str) -> float:
    # Counted by deleting (one C pass each), not by listing matches: a third faster on the corpus.
    letters = _NOT_LETTERS.sub("", text)
    return (len(letters) - len(_HANGUL.sub("", letters))) / len(letters) if letters else 0.0


def repeated_line_ratio(text: str) -> float:
    """Share of characters in non-empty lines that already occurred earlier in the document."""
    seen: set[str] = set()
    repeated = 0
    for line in text.split("\n"):
        if line in seen:
            repeated += len(line)
        elif line:
            seen.add(line)
    return repeated / len(text) if text else 0.0


def strip_boilerplate(text: str) -> tuple[str, int]:
    """Drop short lines that are site furniture; returns (text, characters removed)."""
    lines = text.split("\n")
    kept = [ln for ln in lines if len(ln) > _BOILERPLATE_MAX_LINE or not _BOILERPLATE.search(ln)]
    if len(kept) == len(lines):
        return text, 0
    out = "\n".join(kept).strip()
    return out, len(text) - len(out)


def scrub_pii(text: str) -> tuple[str, int]:
    """Replace resident registration numbers, phone numbers and e-mail addresses with placeholders."""
    total = 0
    for _, pattern, placeholder in PII_PATTERNS:
        text, n = pattern.subn(placeholder, text)
        total += n
    return text, total


def text_reason(text: str, config: FilterConfig, min_chars: int = 1, max_chars: int = 1_000_000) -> str | None:
    """The first text-level filter that rejects `text`, or None (n-gram repetition needs tokens)."""
    if not text:
        return "empty"
    if len(text) < min_chars:
        return "too_short"
    if len(text) > max_chars:
        return "too_long"
    if config.min_hangul_ratio and hangul_ratio(text) < config.min_hangul_ratio:
        return "hangul_ratio"
    if config.max_repeated_line_ratio and repeated_line_ratio(text) > config.max_repeated_line_ratio:
        return "repeated_lines"
    return None
