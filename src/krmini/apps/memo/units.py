"""Korean-aware search units: what BM25 counts, for notes and for questions alike.

Korean glues particles and endings to words (임종석이, 임종석은, 임종석의), so whitespace tokens split
one name into many terms and an English tokenizer drops or merges Hangul. Two unit kinds:

* `bigram` (always): text is NFC-normalised and lowercased, cut into words (runs of Hangul, of other
  letters, of digits), a trailing particle (조사) is stripped from a Hangul word of three or more
  syllables, and each Hangul/CJK word becomes its overlapping character pairs (임종석 → 임종 종석); a
  one-syllable word, a Latin word and a number stay whole. No dictionary, no download, ~0.6 M chars/s.
* `kiwi` (optional, `pip install 'krmini[memo]'`): content morphemes from the Kiwi analyser
  (kiwipiepy; its model ships in the kiwipiepy_model wheel, nothing is downloaded at run time).
  More precise, ~10x slower to index; fused with bigrams by reciprocal rank (search.py).

A chunk's heading path (or a JSONL note's title) counts `TITLE_WEIGHT` times, its body once.
The figures behind each choice are in docs/memo.md.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from krmini.errors import KrminiError

KINDS = ("bigram", "kiwi")
TITLE_WEIGHT = 2

_WORD = re.compile(r"[가-힣]+|\d+|[^\W\d_가-힣]+")
# Particles and copula forms; the longest that fits is stripped (에서는 before 는), and only when at
# least two syllables remain, so 나이 or 가위 keep their last syllable.
PARTICLES = frozenset((
    "은", "는", "이", "가", "을", "를", "의", "에", "에서", "에게", "께서", "으로", "로", "와", "과", "도", "만", "까지", "부터",
    "에는", "에서는", "으로는", "로는", "이다", "였다", "이었다", "한", "된", "하는", "했던", "인", "란", "이란", "라는", "이라는", "처럼",
    "보다", "에도", "과의", "와의", "으로써", "로써", "으로서", "로서", "이며", "며", "고", "하고", "들", "들은", "들이", "들의", "들을",
))
_LENGTHS = sorted({len(p) for p in PARTICLES}, reverse=True)
INTERROGATIVES = ("무엇", "누구", "언제", "어디", "어느", "몇", "얼마", "무슨", "어떤", "어떻게", "어떠한")
# Kiwi tags kept: nouns, numerals, pronouns, verb and adjective stems, roots, foreign words, Hanja,
# numbers, determiners, general adverbs. Particles, endings and symbols carry no topic.
KIWI_TAGS = ("NN", "NR", "NP", "VV", "VA", "XR", "SL", "SH", "SN", "MM", "MAG")


def _bigrammed(word: str) -> bool:
    c = word[0]
    return "가" <= c <= "힣" or "\u3040" <= c <= "\u30ff" or "\u3400" <= c <= "\u9fff"


@lru_cache(maxsize=1 << 17)
def strip_particle(word: str) -> str:
    if "가" <= word[0] <= "힣":
        for n in _LENGTHS:
            if len(word) > n + 1 and word[-n:] in PARTICLES:
                return word[:-n]
    return word


def words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFC", text).lower())


def bigrams(text: str, query: bool = False) -> list[str]:
    ws = [strip_particle(w) for w in words(text) if not (query and _asks(w))]
    out: list[str] = []
    for word in ws:
        if len(word) > 1 and _bigrammed(word):
            out += [word[i:i + 2] for i in range(len(word) - 1)]
        else:
            out.append(word)
    return out + [f"{a} {b}" for a, b in zip(ws, ws[1:], strict=False)]


def _asks(word: str) -> bool:
    """An interrogative (무엇인가, 누구, 언제, 몇년, 어느): in questions, never in the notes they ask about."""
    return word == "왜" or word.startswith(INTERROGATIVES)


def kiwi_available() -> bool:
    try:
        import kiwipiepy  # noqa: F401
        import kiwipiepy_model  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=1)
def _kiwi():
    if not kiwi_available():
        raise KrminiError("kiwi units need kiwipiepy and kiwipiepy_model: pip install 'krmini[memo]' "
                          "(or index with --units bigram)")
    from kiwipiepy import Kiwi

    return Kiwi(num_workers=1)


def morphemes(texts: list[str]) -> list[list[str]]:
    texts = [unicodedata.normalize("NFC", t) for t in texts]
    return [[tok.form.lower() for tok in tokens if tok.tag.startswith(KIWI_TAGS)]
            for tokens in _kiwi().tokenize(texts)]


def analyze(kind: str, texts: list[str], query: bool = False) -> list[list[str]]:
    """The units of each text for one unit kind (of a question: interrogatives left out)."""
    if kind == "bigram":
        return [bigrams(t, query) for t in texts]
    if kind == "kiwi":
        return morphemes(texts) if texts else []
    raise KrminiError(f"units: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")


def chunk_units(kind: str, titles: list[str], bodies: list[str]) -> list[list[str]]:
    """Index units of chunks: the title's `TITLE_WEIGHT` times, then the body's."""
    heads = analyze(kind, titles)
    return [head * TITLE_WEIGHT + body for head, body in zip(heads, analyze(kind, bodies), strict=True)]


def parse_kinds(spec: str) -> tuple[str, ...]:
    """`bigram`, `kiwi` or `bigram+kiwi` → the kinds, in KINDS order."""
    asked = {s.strip() for s in spec.split("+") if s.strip()}
    unknown = asked - set(KINDS)
    if unknown or not asked:
        raise KrminiError(f"--units: expected bigram, kiwi or bigram+kiwi, got {spec!r}")
    return tuple(k for k in KINDS if k in asked)
