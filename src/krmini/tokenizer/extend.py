"""Extending a BPE tokenizer for a domain: new tokens after the old ids, learned by continuing its merges.

A tokenizer trained on general text spells a domain's frequent words (판결문, 손해배상청구) in several
pieces. Training a new tokenizer would renumber everything a model has learned; here every existing
id keeps its token and every existing merge its rank, and new tokens are appended:

    1. split the domain text into words with the base tokenizer's own normalizer and pre-tokenizer,
       and each word into the pieces the base tokenizer gives it (characters the vocabulary lacks
       appear there as their UTF-8 byte tokens);
    2. repeat, `add` times: take whatever saves the most tokens on the domain text — the most
       frequent adjacent pair of pieces (it becomes one new token, saving one token per occurrence),
       or a missing character (one token instead of its 2-4 byte tokens) — and apply it;
    3. write the new tokens with ids after the highest existing one, and the new merges after the
       existing ones, in the order they were learned.

Why this ordering is exact, not an estimate: `tokenizers` applies a BPE's merges lowest rank first,
so on any text all the old merges happen exactly as before and only then the new ones, in the order
step 2 chose them — which is the order it simulated. Every new merge joins two pieces that exist
(an old token, or a token added before it), so each new token is reachable from the base pieces. A
pair whose joined text the vocabulary already has is skipped (and counted): a merge to an old token
could let old merges fire again and change what came before. Consequences: no text ever gets more
tokens than with the base, every old id decodes to the same text, byte fallback and special tokens are
untouched, and ids from the base tokenizer stay valid input for the extended one.

Works on any BPE `tokenizer.json`: ours (Metaspace + byte fallback), Llama 2/Mistral-style, and
byte-level ones (Llama 3, Qwen, GPT-2), whose pieces are already bytes so nothing is missing.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from krmini.errors import KrminiError
from krmini.tokenizer.tokenizer import CONFIG_FILE, TOKENIZER_FILE, KoTokenizer

BYTE_TOKEN = re.compile(r"^<0x([0-9A-F]{2})>$")
META_START = re.compile("(?=\u2581)")  # before each "▁" (SentencePiece's word start)
EXTENSION_FILE = "extension.json"  # written beside an extended tokenizer: what it was extended from
# Files that describe a tokenizer beside its tokenizer.json (ours, or an open model's): copied unchanged,
# since every id they name keeps its meaning.
SIBLING_FILES = (CONFIG_FILE, "special_tokens_map.json", "chat_template.jinja", "generation_config.json")


@dataclass
class Extension:
    tokenizer: Tokenizer
    added: list[str]  # the new tokens, in id order
    skipped: int  # candidates whose text the vocabulary already had
    first_id: int  # id of the first new token
    chars: int  # characters of the domain text
    tokens_before: int  # its tokens with the base tokenizer
    tokens_after: int  # and with the extended one


def _bpe_spec(tok: Tokenizer, where: str) -> dict:
    spec = json.loads(tok.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise KrminiError(f"{where}: a {model.get('type')} tokenizer; only BPE tokenizers can be extended")
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise KrminiError(f"{where}: BPE with {key}={model[key]!r} is not supported for extension")
    return spec


def _whole_text_metaspace(spec: dict) -> bool:
    """Llama 2 / Mistral layout: Metaspace without splitting, so the whole text is one pre-token."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    return any(s.get("type") == "Metaspace" and s.get("split") is False for s in steps)


def _words(tok: Tokenizer, texts: Iterable[str], at_meta: bool) -> tuple[Counter, int]:
    """(pre-tokenized word → count, characters read), split as the tokenizer itself splits text.

    `at_meta`: also cut before each "▁" (for a Metaspace that leaves the text whole). Learning then runs per
    word, not per document; the tokenizer's own pieces are SentencePiece's, which start at a "▁" and never
    span one, so this changes what is learned only for pieces made of spaces alone."""
    counts: Counter = Counter()
    chars = 0
    for text in texts:
        chars += len(text)
        normalized = tok.normalizer.normalize_str(text) if tok.normalizer else text
        pieces = tok.pre_tokenizer.pre_tokenize_str(normalized) if tok.pre_tokenizer else [(normalized, None)]
        for piece, _ in pieces:
            counts.update([w for w in META_START.split(piece) if w] if at_meta else [piece])
    return counts, chars


def _pieces(tok: Tokenizer, word: str) -> list[str]:
    """The base tokenizer's pieces of one word; a run of byte tokens becomes the characters it spells."""
    out: list[str] = []
    pending = bytearray()
    for token in tok.model.tokenize(word):
        byte = BYTE_TOKEN.match(token.value)
        if byte:
            pending.append(int(byte.group(1), 16))
            continue
        if pending:
            out += pending.decode("utf-8", errors="replace")
            pending.clear()
        out.append(token.value)
    if pending:
        out += pending.decode("utf-8", errors="replace")
    return out


class _Merger:
    """The corpus as words of pieces, with pair counts kept current as merges are applied."""

    def __init__(self, words: list[list[str]], freqs: list[int], vocab: set[str], min_frequency: int) -> None:
        self.words, self.freqs, self.vocab, self.min_frequency = words, freqs, vocab, min_frequency
        self.missing: set[str] = {s for w in words for s in w if s not in vocab}
        self.pairs: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
        self.waiting: defaultdict[str, set[tuple[str, str]]] = defaultdict(set)  # missing char → its pairs
        self.char_gain: Counter = Counter()
        self.banned: set[tuple[str, str]] = set()
        for i, (w, f) in enumerate(zip(words, freqs, strict=True)):
            for s in w:
                if s in self.missing:
                    self.char_gain[s] += f * (len(s.encode("utf-8")) - 1)
            for pair in zip(w, w[1:], strict=False):
                self._count(pair, f, i)
        self.heap: list[tuple[int, tuple[str, ...]]] = [(-g, (c,)) for c, g in self.char_gain.items() if g]
        self.heap += [(-n, p) for p, n in self.pairs.items() if self._eligible(p)]
        heapq.heapify(self.heap)

    def tokens(self) -> int:
        return sum(f * sum(len(s.encode("utf-8")) if s in self.missing else 1 for s in w)
                   for w, f in zip(self.words, self.freqs, strict=True))

    def _count(self, pair: tuple[str, str], f: int, i: int) -> None:
        self.pairs[pair] += f
        self.where[pair].add(i)
        for s in pair:
            if s in self.missing:
                self.waiting[s].add(pair)

    def _eligible(self, pair: tuple[str, str]) -> bool:
        return (self.pairs[pair] >= self.min_frequency and pair not in self.banned
                and pair[0] not in self.missing and pair[1] not in self.missing)

    def _gain(self, key: tuple[str, ...]) -> int:
        if len(key) == 1:
            return self.char_gain[key[0]] if key[0] in self.missing else 0
        return self.pairs[key] if self._eligible(key) else 0

    def best(self) -> tuple[str, ...] | None:
        """The candidate that saves the most tokens now (counts in the heap may be stale: refreshed here)."""
        while self.heap:
            neg, key = heapq.heappop(self.heap)
            gain = self._gain(key)
            if gain == -neg and gain >= (1 if len(key) == 1 else self.min_frequency):
                return key
            if gain and gain < -neg:
                heapq.heappush(self.heap, (-gain, key))
        return None

    def add_char(self, char: str) -> None:
        self.missing.discard(char)
        for pair in self.waiting.pop(char, ()):
            if self._eligible(pair):
                heapq.heappush(self.heap, (-self.pairs[pair], pair))

    def merge(self, pair: tuple[str, str]) -> None:
        a, b = pair
        token = a + b
        for i in list(self.where[pair]):
            w, f = self.words[i], self.freqs[i]
            new, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    new.append(token)
                    j += 2
                else:
                    new.append(w[j])
                    j += 1
            old_pairs, new_pairs = list(zip(w, w[1:], strict=False)), list(zip(new, new[1:], strict=False))
            for p in old_pairs:
                self.pairs[p] -= f
            for p in set(old_pairs) - set(new_pairs):
                self.where[p].discard(i)
            for p in new_pairs:
                self._count(p, f, i)
            for p in set(new_pairs) - set(old_pairs):
                if self._eligible(p):
                    heapq.heappush(self.heap, (-self.pairs[p], p))
            self.words[i] = new
        self.where.pop(pair, None)


def extend(base: Tokenizer, texts: Iterable[str], add: int, min_frequency: int = 2, where: str = "tokenizer") -> Extension:
    """Up to `add` new tokens learned from `texts`, appended after every existing id (see the module doc)."""
    spec = _bpe_spec(base, where)
    counts, chars = _words(base, texts, _whole_text_metaspace(spec))
    if not counts:
        raise KrminiError("the domain corpus is empty: no text to learn tokens from")
    vocab = set(base.get_vocab(with_added_tokens=True))
    merger = _Merger([_pieces(base, w) for w in counts], list(counts.values()), vocab, min_frequency)
    before = merger.tokens()
    added: list[str] = []
    merges: list[tuple[str, str]] = []
    skipped = 0
    while len(added) < add:
        key = merger.best()
        if key is None:
            break
        if len(key) == 1:
            merger.add_char(key[0])
            added.append(key[0])
            continue
        token = key[0] + key[1]
        if token in vocab:
            merger.banned.add(key)
            skipped += 1
            continue
        merger.merge(key)
        vocab.add(token)
        added.append(token)
        merges.append(key)
    old_ids = base.get_vocab(with_added_tokens=True)
    first_id = max(old_ids.values()) + 1
    model = spec["model"]
    # Special tokens outside the BPE vocabulary (Llama 3's, Qwen's: ids after it) go into it at their ids:
    # `tokenizers` numbers such tokens from the vocabulary's size when it loads, which the new ids would shift.
    model["vocab"].update({t["content"]: t["id"] for t in spec.get("added_tokens", []) if t["content"] not in model["vocab"]})
    model["vocab"].update({t: first_id + i for i, t in enumerate(added)})
    as_lists = not model["merges"] or isinstance(model["merges"][0], list) or any(" " in t for m in merges for t in m)
    if not as_lists:
        model["merges"] += [f"{a} {b}" for a, b in merges]
    else:
        model["merges"] = [m if isinstance(m, list) else m.split(" ") for m in model["merges"]] + [list(m) for m in merges]
    tok = Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))
    moved = next((t for t, i in old_ids.items() if tok.token_to_id(t) != i), None)
    if moved is not None:  # by construction never; checked because every later step relies on it
        raise KrminiError(f"{where}: extending would give {moved!r} another id; not extended")
    return Extension(tok, added, skipped, first_id, chars, before, merger.tokens())


def fingerprint(tok: Tokenizer) -> str:
    """sha256 of what decides the ids a text gets (pipeline, vocabulary, merges, special tokens): equal
    fingerprints mean identical tokenization, whatever the file's formatting or path."""
    spec = json.loads(tok.to_str())
    model = spec.get("model") or {}
    if isinstance(model.get("merges"), list):
        model["merges"] = [m if isinstance(m, list) else m.split(" ") for m in model["merges"]]
    spec.pop("truncation", None)
    spec.pop("padding", None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def check_extends(base: Tokenizer, ext: Tokenizer, base_where: str, ext_where: str) -> None:
    """`ext` must be `base` plus new tokens: same pipeline and special tokens, every old id the same
    token, the old merges first and in order. One line naming both otherwise."""
    a, b = json.loads(base.to_str()), json.loads(ext.to_str())
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder", "added_tokens"):
        if a.get(key) != b.get(key):
            raise KrminiError(f"{ext_where}: not an extension of {base_where} (their {key} differ)")
    ma, mb = a.get("model") or {}, b.get("model") or {}
    if {k: v for k, v in ma.items() if k not in ("vocab", "merges")} != {k: v for k, v in mb.items()
                                                                         if k not in ("vocab", "merges")}:
        raise KrminiError(f"{ext_where}: not an extension of {base_where} (their BPE settings differ)")
    changed = next((t for t, i in ma.get("vocab", {}).items() if mb.get("vocab", {}).get(t) != i), None)
    if changed is not None:
        raise KrminiError(f"{ext_where}: not an extension of {base_where} (token {changed!r} has another id)")
    norm = lambda ms: [m if isinstance(m, list) else m.split(" ") for m in ms]  # noqa: E731
    old = norm(ma.get("merges", []))
    if norm(mb.get("merges", []))[: len(old)] != old:
        raise KrminiError(f"{ext_where}: not an extension of {base_where} (the old merges are not its first ones)")


def new_token_pieces(base: Tokenizer, ext: Tokenizer) -> dict[int, list[int]]:
    """For each id `ext` has and `base` lacks: the base ids its text splits into (a new character: its bytes)."""
    old = base.get_vocab(with_added_tokens=True)
    return {i: [t.id for t in base.model.tokenize(token)]
            for token, i in sorted(ext.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
            if token not in old}


def save_extension(ext: Extension, base_dir: Path, out: Path, record: dict) -> Path:
    """`out`/tokenizer.json, the base's sibling files (tokenizer_config.json, …) and extension.json.
    A base of ours saved without its tokenizer_config.json gets a fresh one."""
    out.mkdir(parents=True, exist_ok=True)
    if (base_dir / CONFIG_FILE).is_file():
        ext.tokenizer.save(str(out / TOKENIZER_FILE))
    else:
        KoTokenizer(ext.tokenizer).save(out)
    for name in SIBLING_FILES:
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, out / name)
    (out / EXTENSION_FILE).write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return out
