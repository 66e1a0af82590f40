"""Continued pretraining: a run that starts from another run's weights, and the one-tokenizer check.

`train.init_from` names a run or checkpoint — ours, or one made by `krmini import hf` — whose weights
(only the weights: the optimizer, schedule and step start fresh) start this run, in its own directory.
The source is only read. A LoRA run is refused: its weights hold unmerged adapters; merge it first.

`train.tokenizer` moves the run to an extended tokenizer (`krmini tokenizer extend`): the source's
embedding and head keep every old row, and each new token's rows start as the mean of the rows of the
pieces the old tokenizer splits it into (a new character: its byte tokens). The model then reads and
predicts the new token roughly as it did its pieces.

Whatever the run, its data must have been tokenized by the tokenizer the run uses: a run on another
tokenizer's ids trains on nonsense without any error. The data's manifest records the tokenizer's
fingerprint (`krmini.tokenizer.extend.fingerprint`); a mismatch is one line naming both.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from krmini.config import apply_overrides, from_dict, load_yaml
from krmini.errors import KrminiError
from krmini.runs import TOKENIZER_DIR, lora_section, read_state, resolve_checkpoint, run_dir
from krmini.tokenizer import KoTokenizer
from krmini.tokenizer.extend import check_extends, fingerprint, new_token_pieces
from krmini.train import checkpoint as ckpt
from krmini.train.config import RunConfig, TrainConfig, resolve_config_path
from krmini.train.lora import LoraConfig

DEFAULT_CONFIG = "cpt"  # the bundled train-only preset for continued pretraining

EMBEDDING, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def source_checkpoint(init_from: str | Path) -> tuple[Path, dict]:
    """The checkpoint `init_from` names and its verified state.json; a LoRA run is refused."""
    base = resolve_checkpoint(init_from)
    state = read_state(base)
    if lora_section(state):
        raise KrminiError(f"{base}: is a LoRA run (its weights hold unmerged adapters); merge it first with "
                          f"`krmini lora merge {run_dir(base)} MERGED` and start from MERGED")
    return base, state


def continued_config(init_from: str, config: str | None = None, tokenizer: str | None = None,
                     overrides: list[str] | None = None, lora: LoraConfig | None = None) -> RunConfig:
    """The run config of a run started from `init_from`: its model section (vocab_size grown to `tokenizer`),
    the train section of `config` (a train-only YAML or preset; default cpt), `lora` if given."""
    base, state = source_checkpoint(init_from)
    model = asdict(ckpt.checkpoint_model_config(base, state))
    path = resolve_config_path(config or DEFAULT_CONFIG)
    data = load_yaml(path)
    if "model" in data:
        raise KrminiError(f"{path}: has a model section, but with --init-from the model is {base}'s; use a config "
                          f"with a train section only (such as the {DEFAULT_CONFIG} preset)")
    if tokenizer:
        if lora is not None:
            raise KrminiError(f"--tokenizer {tokenizer}: LoRA freezes the embedding and head, so new tokens would "
                              "never learn; change the tokenizer with full continued pretraining, or tune LoRA on "
                              f"{base}'s own tokenizer")
        model["vocab_size"] = max(model["vocab_size"], KoTokenizer.load(tokenizer).vocab_size)
    data["model"] = model
    train = data.setdefault("train", {})
    train.setdefault("seq_len", min(1024, model["max_position_embeddings"]))
    train.update(init_from=str(base), tokenizer=str(tokenizer or ""))
    if lora is not None:
        data["lora"] = asdict(lora)
    apply_overrides(data, overrides or [])
    return from_dict(RunConfig, data, str(path))


def resize_rows(weight: torch.Tensor, pieces: dict[int, list[int]], vocab_size: int,
                toward_mean: float = 0.0) -> torch.Tensor:
    """`weight` (old vocabulary × hidden) grown to `vocab_size` rows: old rows kept, each new id's row the
    mean of its pieces' rows (rows no token uses: the mean of all old rows), moved `toward_mean` of the way
    to the mean of all old rows."""
    rows = max(vocab_size, weight.shape[0])
    out = weight.new_empty(rows, weight.shape[1])
    out[: weight.shape[0]] = weight
    everything = weight.float().mean(0)
    out[weight.shape[0]:] = everything.to(weight.dtype)
    for i, old in pieces.items():
        own = weight[old].float().mean(0)
        out[i] = (own + toward_mean * (everything - own)).to(weight.dtype)
    return out


def resize_vocab(tensors: dict[str, torch.Tensor], base: KoTokenizer, new: KoTokenizer, vocab_size: int,
                 where: tuple[str, str], toward_mean: float = 0.0) -> dict[str, torch.Tensor]:
    """Weights of a model on `base` moved to `new` (an extension of it): embedding and head resized."""
    check_extends(base.tok, new.tok, *where)
    pieces = new_token_pieces(base.tok, new.tok)
    out = dict(tensors)
    for name in (EMBEDDING, HEAD):
        if name in out:  # a tied head is the embedding: no tensor of its own
            out[name] = resize_rows(out[name], pieces, vocab_size, toward_mean)
    return out


def init_weights(model: torch.nn.Module, t: TrainConfig) -> Path:
    """Load `t.init_from`'s weights into `model` (resized to `t.tokenizer` when that differs); returns
    the source checkpoint."""
    base, _ = source_checkpoint(t.init_from)
    tensors = ckpt.read_weights(base)
    if t.tokenizer:
        old, new = KoTokenizer.load(base / TOKENIZER_DIR), KoTokenizer.load(t.tokenizer)
        if fingerprint(old.tok) != fingerprint(new.tok):
            tensors = resize_vocab(tensors, old, new, model.config.vocab_size, (str(base / TOKENIZER_DIR), t.tokenizer),
                                   t.new_rows_toward_mean)
    ckpt.load_model_weights(model, base, tensors)
    return base


def run_tokenizer(t: TrainConfig, manifest: dict, out: Path, resume: bool) -> Path:
    """The tokenizer this run uses: its own on resume, else train.tokenizer, else init_from's, else the data's."""
    if resume and (out / TOKENIZER_DIR).is_dir():
        return out / TOKENIZER_DIR
    if t.tokenizer:
        return Path(t.tokenizer)
    if t.init_from:
        return resolve_checkpoint(t.init_from) / TOKENIZER_DIR
    return Path(manifest["tokenizer"])


def check_data_tokenizer(data_dir: str, manifest: dict, tokenizer_path: Path, t: TrainConfig) -> KoTokenizer:
    """The run's tokenizer, loaded, after checking the data was tokenized with it (one line naming both)."""
    tokenizer = KoTokenizer.load(tokenizer_path)
    recorded = manifest.get("tokenizer_sha256")
    if recorded is None:  # written before manifests recorded fingerprints: compare with the file it names
        try:
            recorded = fingerprint(KoTokenizer.load(manifest["tokenizer"]).tok)
        except KrminiError:
            return tokenizer  # that file is gone: nothing to compare with
    if recorded != fingerprint(tokenizer.tok):
        hint = (f", or pass --tokenizer {manifest['tokenizer']} to move the run to it"
                if t.init_from and not t.tokenizer else "")
        raise KrminiError(f"{data_dir}: tokenized with {manifest['tokenizer']} (sha256 {recorded[:12]}), but the run "
                          f"uses the tokenizer {tokenizer_path} (sha256 {fingerprint(tokenizer.tok)[:12]}); "
                          f"prepare the data with {tokenizer_path}{hint}")
    return tokenizer
