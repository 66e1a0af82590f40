"""A tokenizer as llama.cpp reads it from a GGUF file: tokens, their types, scores or merges, special ids.

Three layouts, chosen from tokenizer.json itself:

* ours (`<|bos|>`, `<|eos|>`, …): llama.cpp's "llama" (SentencePiece-style) tokenizer, each merged token
  scored by minus the rank of the BPE merge that made it, so that llama.cpp's "merge the best-scoring
  adjacent pair" follows our merge order; bytes fall back to `<0xNN>` tokens; no leading "▁".
* a foreign byte-level BPE (Llama 3, Qwen2/2.5/3, SmolLM2, GPT-2): llama.cpp's "gpt2" tokenizer, which
  applies the merges as they are, after splitting the text with one of its built-in pre-tokenizer
  regexes (`tokenizer.ggml.pre`). Which one is read off tokenizer.json's pre_tokenizer; one that
  llama.cpp has no twin for is refused, as a GGUF that splits text differently would tokenise
  differently without saying so.
* a foreign SentencePiece-style BPE (Llama 2, Mistral: "▁" for spaces, `<0xNN>` byte fallback):
  "llama" again, scored from the merges like ours, with the leading "▁" the checkpoint adds.

Added tokens become control tokens (special ones) or user-defined tokens (the others); ids beyond
the tokenizer up to the model's vocabulary (Qwen pads its embedding) are unused placeholders.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from krmini.errors import KrminiError
from krmini.tokenizer import KoTokenizer
from krmini.tokenizer.tokenizer import BYTE_TOKENS, CHAT_TEMPLATE, CHAT_TOKENS, SPECIAL_TOKENS

# The pre-tokenizer patterns tokenizer.json carries for Llama 3 (tiktoken's cl100k) and Qwen2 (digits one by
# one), with the llama.cpp pre-tokenizer type that splits text the same way.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_PRE = {LLAMA3_PATTERN: "llama-bpe", QWEN2_PATTERN: "qwen2"}
# llama.cpp applies no normalizer; NFC changes nothing in text that is already NFC (as typed Korean is).
NORMALIZERS = (None, "NFC")
BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")
META = "▁"

# gguf.TokenType, by value (the gguf package is optional; these numbers are the file format's)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class GGUFVocab:
    """What llama.cpp's tokenizer reads: one token, score and type per id, the merges ("gpt2" only),
    the special ids and how a prompt starts."""

    tokens: list[str]
    scores: list[float]
    types: list[int]
    bos_id: int
    eos_id: int
    pad_id: int
    model: str = "llama"  # tokenizer.ggml.model: "llama" (SentencePiece-style) or "gpt2" (byte-level BPE)
    pre: str | None = None  # tokenizer.ggml.pre ("gpt2" only)
    merges: list[str] = field(default_factory=list)
    add_bos: bool = True
    add_eos: bool = False
    add_space_prefix: bool = False
    eot_ids: list[int] = field(default_factory=list)  # further stop ids: end of turn, end of message
    unk_id: int | None = None
    chat_template: str | None = None


def _spec(tokenizer: KoTokenizer) -> dict:
    return json.loads(tokenizer.tok.to_str())


def _merge_scores(merges: list) -> dict[str, float]:
    """Each merged token scored by minus the rank of the first merge that makes it."""
    scores: dict[str, float] = {}
    for rank, merge in enumerate(merges):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        scores.setdefault(left + right, -float(rank + 1))
    return scores


def _layout(tokenizer: KoTokenizer, vocab_size: int, type_of) -> list[tuple[str, int]]:
    """(token, type) per id up to `vocab_size`; `type_of(token, added)` types the tokenizer's tokens,
    added is None or the added token's `special` flag."""
    by_id = {i: t for t, i in tokenizer.tok.get_vocab(with_added_tokens=True).items()}
    added = {i: t.special for i, t in tokenizer.tok.get_added_tokens_decoder().items()}
    return [(f"[PAD{i}]", UNUSED) if i not in by_id else (by_id[i], type_of(by_id[i], added.get(i)))
            for i in range(vocab_size)]


def spm_vocab(tokenizer: KoTokenizer, vocab_size: int) -> GGUFVocab:
    """Our tokenizer as llama.cpp's "llama" tokenizer, padded to `vocab_size`."""
    scores = _merge_scores(_spec(tokenizer)["model"]["merges"])
    special, byte = set(SPECIAL_TOKENS), set(BYTE_TOKENS)
    layout = _layout(tokenizer, vocab_size, lambda t, _: CONTROL if t in special else BYTE if t in byte else NORMAL)
    end = tokenizer.tok.token_to_id(CHAT_TOKENS[-1])
    return GGUFVocab([t for t, _ in layout], [scores.get(t, 0.0) for t, _ in layout], [k for _, k in layout],
                     tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, eot_ids=[] if end is None else [end],
                     chat_template=CHAT_TEMPLATE)


def _steps(node: dict | None) -> list[dict]:
    if node is None:
        return []
    if node.get("type") == "Sequence":
        return [s for child in node.get("pretokenizers", node.get("normalizers", [])) for s in _steps(child)]
    return [node]


def _describe(steps: list[dict]) -> str:
    return " + ".join(s.get("type", "?") for s in steps) or "none"


def _byte_level_pre(steps: list[dict]) -> str | None:
    """llama.cpp's pre-tokenizer type for a byte-level pipeline, None if it has no twin."""
    *head, last = steps or [{}]
    if last.get("type") != "ByteLevel" or last.get("add_prefix_space"):
        return None
    if not head:
        return "gpt-2" if last.get("use_regex", True) else None
    if len(head) == 1 and head[0].get("type") == "Digits" and head[0].get("individual_digits") and last.get("use_regex", True):
        return "smollm"
    split = head[0] if len(head) == 1 else {}
    if (split.get("type") == "Split" and split.get("behavior") == "Isolated" and not split.get("invert")
            and not last.get("use_regex", True)):
        return SPLIT_PRE.get(split.get("pattern", {}).get("Regex"))
    return None


def _space_prefix(spec: dict) -> bool | None:
    """Whether a SentencePiece-style pipeline puts "▁" before the text; None if it is not one."""
    steps, norms = _steps(spec.get("pre_tokenizer")), _steps(spec.get("normalizer"))
    if [s.get("type") for s in steps] == ["Metaspace"] and steps[0].get("replacement") == META and not norms:
        return steps[0].get("prepend_scheme", "always") != "never"
    if not steps and [n.get("type") for n in norms] in (["Prepend", "Replace"], ["Replace"]):
        replace = norms[-1]
        if replace.get("pattern", {}).get("String") == " " and replace.get("content") == META:
            return norms[0].get("type") == "Prepend" and norms[0].get("prepend") == META
    return None


def _prompt_specials(tokenizer: KoTokenizer, where: str) -> tuple[bool, bool]:
    """(add_bos, add_eos): what the checkpoint's post-processor puts around a prompt, which llama.cpp can
    only do as a BOS before and an EOS after."""
    text = "가나다"
    plain, prompt = tokenizer.encode(text), tokenizer.encode_prompt(text)
    for bos in (False, True):
        for eos in (False, True):
            if prompt == [tokenizer.bos_id] * bos + plain + [tokenizer.eos_id] * eos:
                return bos, eos
    raise KrminiError(f"{where}: post_processor: adds {prompt} around {plain}; llama.cpp can add only the "
                      "BOS before and the EOS after a prompt")


def foreign_vocab(tokenizer: KoTokenizer, vocab_size: int, where: str = "tokenizer.json") -> GGUFVocab:
    """An imported checkpoint's tokenizer (byte-level BPE or SentencePiece-style BPE) for llama.cpp."""
    spec = _spec(tokenizer)
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise KrminiError(f"{where}: model.type: {model.get('type')!r} is not supported for GGUF (BPE only)")
    add_bos, add_eos = _prompt_specials(tokenizer, where)
    foreign = tokenizer.foreign
    unk = foreign.token("unk_token")
    unk_id = None if unk is None else tokenizer.tok.token_to_id(unk)
    stops = sorted(tokenizer.stop_ids - {tokenizer.eos_id})
    common = dict(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, add_bos=add_bos,
                  add_eos=add_eos, eot_ids=stops, unk_id=unk_id, chat_template=tokenizer.chat_template)

    def added_type(special: bool | None) -> int | None:
        return None if special is None else CONTROL if special else USER_DEFINED

    space_prefix = _space_prefix(spec)
    if space_prefix is not None:
        if not model.get("byte_fallback"):
            raise KrminiError(f"{where}: model.byte_fallback: false; a SentencePiece-style BPE needs <0xNN> "
                              "byte fallback for llama.cpp")
        scores = _merge_scores(model.get("merges", []))
        layout = _layout(tokenizer, vocab_size, lambda t, a: UNKNOWN if t == unk else added_type(a) or (
            BYTE if BYTE_TOKEN.fullmatch(t) else NORMAL))
        return GGUFVocab([t for t, _ in layout], [scores.get(t, 0.0) for t, _ in layout], [k for _, k in layout],
                         model="llama", add_space_prefix=space_prefix, **common)
    normalizer = spec.get("normalizer")
    if (normalizer or {}).get("type") not in NORMALIZERS:
        raise KrminiError(f"{where}: normalizer: {_describe(_steps(normalizer))} is not supported for GGUF "
                          "(llama.cpp normalizes nothing; none or NFC)")
    steps = _steps(spec.get("pre_tokenizer"))
    pre = _byte_level_pre(steps)
    if pre is None:
        raise KrminiError(f"{where}: pre_tokenizer: {_describe(steps)} matches none of llama.cpp's pre-tokenizers "
                          "(supported: Llama 3, Qwen2 and GPT-2 regex splits, SmolLM digits + GPT-2)")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    layout = _layout(tokenizer, vocab_size, lambda t, a: added_type(a) or NORMAL)
    return GGUFVocab([t for t, _ in layout], [0.0] * vocab_size, [k for _, k in layout], model="gpt2", pre=pre,
                     merges=merges, **common)


def gguf_vocab(tokenizer: KoTokenizer, vocab_size: int, where: str = "tokenizer.json") -> GGUFVocab:
    """Ours or an imported checkpoint's, whichever `tokenizer` is (`where` names it in errors)."""
    if tokenizer.foreign is None:
        return spm_vocab(tokenizer, vocab_size)
    return foreign_vocab(tokenizer, vocab_size, where)
