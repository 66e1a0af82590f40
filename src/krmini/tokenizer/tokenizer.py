"""The tokenizer: BPE over characters with byte fallback, built on Hugging Face `tokenizers`.

Why this shape (Llama-2 style): text is split at spaces, each space becoming part of the next word
as "▁"; BPE merges frequent character sequences (Hangul syllables are single characters, so common
words become one token); any character the vocabulary lacks is spelled as its UTF-8 bytes
`<0xEA><0xB0><0x80>` — there is no `<unk>`, every string round-trips. Digits are split one by one
(the default of `PRETOKENIZERS`, the rules that can cut text before BPE).

Ids: the special tokens first, then the 256 byte tokens, then the learned merges. The directory it
saves (`tokenizer.json` + `tokenizer_config.json`) loads in `transformers.AutoTokenizer` as-is.

The same wrapper also runs an open model's own tokenizer (Llama 3, Qwen, Mistral, … imported with
`krmini import hf`): its tokenizer.json as it is, and its special tokens, chat template and stop ids
from the files beside it (`krmini.tokenizer.foreign`). `foreign` is None for our own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from krmini.argtypes import integer
from krmini.errors import KrminiError
from krmini.tokenizer.foreign import ForeignFiles, read_foreign, resolve_tokens

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
CHAT_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# Jinja for tokenizer_config.json, so `transformers`' `apply_chat_template` works on a saved tokenizer. It
# must render the same string `krmini.chat.template.render` tokenizes piece by piece (a test checks).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
RESERVED = [f"<|reserved_{i}|>" for i in range(8)]
SPECIAL_TOKENS = [PAD, BOS, EOS, *CHAT_TOKENS, *RESERVED]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + len(BYTE_TOKENS) + 64  # room for some merges
MAX_VOCAB_SIZE = 2**32  # token ids are stored as uint32 at most (krmini.data.shards)
VOCAB_SIZE = integer(MIN_VOCAB_SIZE, MAX_VOCAB_SIZE)  # the parser type of every --vocab-size
META = "▁"  # what Metaspace puts in place of a space
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
# Pre-tokenisation: how text is cut into pieces before BPE, which merges only inside a piece. Every rule
# cuts at spaces first, so a word is encoded the same wherever it stands; the rest cut words further.
# `krmini bench speedrun --pretokenizers` compares them by held-out bits per byte (docs/bench/speedrun.md).
PRETOKENIZERS = {
    "spaces-digits": "at spaces, and digits one by one (the default)",
    "spaces": "at spaces only (digits merge into numbers and words)",
    "spaces-digits-punct": "at spaces, digits one by one, and each punctuation mark alone",
    "spaces-digits-script": "at spaces, digits one by one, and where Hangul meets other characters (GPU|가, 다|.)",
}
# The default stays (docs/bench/speedrun.md): in two speedrun runs the others were ahead by at most 1.1% on held-out
# bits per byte; "punct" and "script" cost 1.5–2.1% more tokens per character, "script" was 1.3% behind on the
# demo corpus, and "spaces" (3.6% fewer tokens) was 6–7% behind on the validation split.
DEFAULT_PRETOKENIZER = "spaces-digits"
# a run of Hangul, or a run of anything else, each with the "▁" before it; a lone "▁" before a digit
_SCRIPT_RUNS = Regex(r"▁?\p{Hangul}+|▁?[^\p{Hangul}▁]+|▁")


def _pre_tokenizer(rule: str) -> pre_tokenizers.PreTokenizer:
    if rule not in PRETOKENIZERS:
        raise KrminiError(f"pretokenizer: expected one of {', '.join(PRETOKENIZERS)}, got {rule!r}")
    steps = [pre_tokenizers.Metaspace(replacement=META, prepend_scheme="never")]
    if rule != "spaces":
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    if rule == "spaces-digits-punct":
        steps.append(pre_tokenizers.Punctuation(behavior="isolated"))
    if rule == "spaces-digits-script":
        steps.append(pre_tokenizers.Split(_SCRIPT_RUNS, behavior="isolated"))
    return pre_tokenizers.Sequence(steps)


def _pipeline(tok: Tokenizer, pretokenizer: str) -> Tokenizer:
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = _pre_tokenizer(pretokenizer)
    # prepend_scheme="never" and no Strip: decoding any slice of ids gives exactly its text, which
    # keeps round trips lossless and lets streaming decode piece by piece.
    tok.decoder = decoders.Sequence([decoders.Replace(META, " "), decoders.ByteFallback(), decoders.Fuse()])
    return tok


class KoTokenizer:
    def __init__(self, tok: Tokenizer, foreign: ForeignFiles | None = None, where: Path = Path(".")) -> None:
        self.tok, self.foreign = tok, foreign
        if foreign is None:
            self.pad_id, self.bos_id, self.eos_id = (self.token_id(t) for t in (PAD, BOS, EOS))
            self.stop_ids = frozenset({self.eos_id})
            self.chat_template: str | None = None  # ours is `krmini.chat.template.render`
            self.template_tokens = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
        else:
            ids = resolve_tokens(tok, foreign, where)
            self.pad_id, self.bos_id, self.eos_id = ids.pad_id, ids.bos_id, ids.eos_id
            self.stop_ids, self.template_tokens = ids.stop_ids, ids.template_tokens
            self.chat_template = foreign.chat_template

    # ---- training -------------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 32000, min_frequency: int = 2,
              limit_alphabet: int = 4000, show_progress: bool = True,
              pretokenizer: str = DEFAULT_PRETOKENIZER) -> KoTokenizer:
        """Learn merges from `texts`, then lay out ids as specials, bytes, merges. `pretokenizer` is one of
        `PRETOKENIZERS`; the saved tokenizer.json carries it, so loading needs nothing more."""
        reserved = len(SPECIAL_TOKENS) + len(BYTE_TOKENS)
        if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
            raise KrminiError(f"vocab_size: expected {MIN_VOCAB_SIZE} to {MAX_VOCAB_SIZE}, got {vocab_size}")
        # The trainer keeps every alphabet character whatever the target size, so cap the alphabet
        # to leave room for merges; rarer characters fall back to bytes.
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - len(BYTE_TOKENS),
            min_frequency=min_frequency,
            limit_alphabet=min(limit_alphabet, (vocab_size - reserved) // 2),
            special_tokens=SPECIAL_TOKENS,
            show_progress=show_progress,
        )
        draft = _pipeline(Tokenizer(models.BPE(byte_fallback=True)), pretokenizer)
        draft.train_from_iterator(texts, trainer)
        learned = json.loads(draft.to_str())["model"]
        learned_vocab = sorted(learned["vocab"].items(), key=lambda kv: kv[1])
        if len(learned_vocab) <= len(SPECIAL_TOKENS):
            raise KrminiError("tokenizer training saw no text: the corpus is empty")
        vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + BYTE_TOKENS)}
        for token, _ in learned_vocab:
            vocab.setdefault(token, len(vocab))
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
        tok = _pipeline(Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, fuse_unk=False)),
                        pretokenizer)
        tok.add_special_tokens(SPECIAL_TOKENS)
        return cls(tok)

    # ---- persistence ----------------------------------------------------------------------------
    def save(self, out_dir: str | Path, model_max_length: int = 2048) -> Path:
        """tokenizer.json and tokenizer_config.json (a foreign tokenizer's files as they were)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(out / TOKENIZER_FILE))
        if self.foreign is not None:
            self.foreign.save(out)
            return out
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "unk_token": None,
            "additional_special_tokens": CHAT_TOKENS,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": model_max_length,
            "chat_template": CHAT_TEMPLATE,
        }
        (out / CONFIG_FILE).write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
        return out

    @classmethod
    def load(cls, path: str | Path) -> KoTokenizer:
        """Ours if the vocabulary has our special tokens; otherwise a foreign one, described by the
        tokenizer_config.json (and generation_config.json) beside the file."""
        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise KrminiError(f"{file}: tokenizer not found (expected a directory with {TOKENIZER_FILE})")
        try:
            tok = Tokenizer.from_file(str(file))
        except Exception as exc:  # the Rust library raises its own exception type
            raise KrminiError(f"{file}: not a valid tokenizer file ({exc})") from None
        if all(tok.token_to_id(t) is not None for t in (PAD, BOS, EOS)):
            return cls(tok)
        return cls(tok, read_foreign(file.parent), file.parent)

    # ---- use ------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def token_id(self, token: str) -> int:
        i = self.tok.token_to_id(token)
        if i is None:
            raise KrminiError(f"tokenizer has no token {token!r}")
        return i

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_prompt(self, text: str) -> list[int]:
        """The ids a text prompt starts generation from: ours puts `<|bos|>` first (as training did);
        a foreign tokenizer adds what its own post-processor adds (Llama 3 and Mistral a BOS, Qwen nothing),
        as `transformers`' tokenizer(text) does."""
        if self.foreign is None:
            return [self.bos_id, *self.encode(text)]
        return self.tok.encode(text, add_special_tokens=True).ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        """With `add_special_tokens`, what the tokenizer's own post-processor adds, as `transformers`'
        tokenizer(text) does: nothing for ours (no post-processor), a BOS for Llama 3 or Mistral."""
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
