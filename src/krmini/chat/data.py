"""Instruction-tuning data: chat JSONL → checked conversations → masked token stream → packed rows.

Input lines are `{"messages": [{"role": "system"|"user"|"assistant", "content": "…"}, …]}`. Rules
(every skipped or changed record is counted in the report, never silently dropped):

- a `system` message anywhere but first is the agent's reply (HG-TODS' original convention), so it
  becomes `assistant`;
- after an optional system prompt, turns alternate user, assistant, user, …: two user messages in
  a row are joined with a newline (one message sent in two parts); at a repeated assistant message
  the conversation is cut (in HG-TODS the second one is often a mislabelled user question); a
  trailing user turn with no reply is dropped;
- a record with no assistant reply left, bad JSON, unknown roles or empty content is skipped.

`prepare_chat` writes a data directory like `krmini prepare` does (token shards + manifest.json) plus
one mask byte per token (1 = learned) and where each sequence starts (`{split}.starts`, uint64
offsets: a conversation is one sequence, or one per reply for an imported model whose template
needs it, see `krmini.chat.template.training_sequences`). Conversations are split train/val by
content hash. A conversation the model's own template cannot format for training is skipped and
counted. `ChatWindows` packs whole sequences into rows of seq_len + 1 tokens (padding the rest) and
serves them through the same interface as `TokenWindows`, with targets -100 where nothing is learned.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from krmini.chat.template import ROLES, training_sequences
from krmini.data.loader import TokenWindows
from krmini.data.shards import (
    FORMAT_VERSION,
    ShardWriter,
    SplitStats,
    load_split,
    read_manifest,
    token_dtype,
    write_manifest,
)
from krmini.data.split import document_digest, split_of
from krmini.errors import KrminiError
from krmini.runs import write_bytes_atomic
from krmini.tokenizer import KoTokenizer
from krmini.tokenizer.extend import fingerprint
from krmini.train.trainer import BatchSources

CHAT_SPLITS = ("train", "val")


@dataclass
class ChatReport:
    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason → records
    changed: Counter = field(default_factory=Counter)  # what was fixed → records
    examples: list[str] = field(default_factory=list)  # the first few "file:line: reason"

    def skip(self, where: str, reason: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{where}: {reason}")

    def summary(self) -> str:
        parts = [f"{self.kept:,} of {self.read:,} conversations kept"]
        if self.skipped:
            parts.append("skipped: " + ", ".join(f"{k} {v}" for k, v in self.skipped.most_common()))
        if self.changed:
            parts.append("changed: " + ", ".join(f"{k} {v}" for k, v in self.changed.most_common()))
        return "; ".join(parts)


def check_conversation(record: object, report: ChatReport, where: str) -> list[dict] | None:
    """The record's messages, normalised by the module's rules, or None (skipped, with the reason)."""
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        report.skip(where, "no messages list")
        return None
    out: list[dict] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            report.skip(where, "message without string role/content")
            return None
        role, content = m["role"], m["content"]
        if role not in ROLES:
            report.skip(where, f"unknown role {role!r}"[:60])
            return None
        if not content.strip():
            report.skip(where, "empty content")
            return None
        if role == "system" and i > 0:
            role = "assistant"
            report.changed["later system → assistant"] += 1
        out.append({"role": role, "content": content})
    system = out[:1] if out[0]["role"] == "system" else []
    turns: list[dict] = []
    for m in out[len(system):]:
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if m["role"] == expected:
            turns.append(m)
        elif m["role"] == "user":  # two user messages in a row: one message sent in two parts
            turns[-1] = {"role": "user", "content": turns[-1]["content"] + "\n" + m["content"]}
            report.changed["joined repeated user"] += 1
        elif turns:
            report.changed["cut at repeated assistant"] += 1
            break
        else:
            report.skip(where, "starts with an assistant message")
            return None
    if turns and turns[-1]["role"] == "user":
        turns = turns[:-1]
    if not turns:
        report.skip(where, "no assistant reply")
        return None
    return system + turns


def chat_files(paths: list[str | Path]) -> list[Path]:
    """The chat JSONL files, each checked to be a file that opens: all of them before anything is read
    or written, so a bad path leaves no half-made data directory."""
    files = [Path(p) for p in paths]
    for path in files:
        if not path.is_file():
            raise KrminiError(f"{path}: chat data file not found (expected JSONL with a messages list per line)")
        try:
            path.open("rb").close()
        except OSError as exc:
            raise KrminiError(f"{path}: cannot open ({exc.strerror or exc})") from None
    return files


def read_conversations(paths: list[str | Path], report: ChatReport) -> Iterator[list[dict]]:
    return (messages for _, messages in read_records(paths, report))


def read_records(paths: list[str | Path], report: ChatReport) -> Iterator[tuple[str, list[dict]]]:
    """("file:line", checked messages) of every conversation kept by `check_conversation`."""
    for path in chat_files(paths):
        with open(path, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                report.read += 1
                try:
                    record = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    report.skip(f"{path}:{n}", "not valid UTF-8")
                    continue
                except json.JSONDecodeError:
                    report.skip(f"{path}:{n}", "not valid JSON")
                    continue
                messages = check_conversation(record, report, f"{path}:{n}")
                if messages is not None:
                    yield f"{path}:{n}", messages


def prepare_chat(paths: list[str | Path], tokenizer: KoTokenizer, tokenizer_path: str, out_dir: str | Path,
                 val_fraction: float = 0.02, progress: bool = True) -> dict:
    """Tokenize conversations into `out_dir` (shards, masks, manifest); returns the manifest."""
    paths = chat_files(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    report = ChatReport()
    stats = {s: SplitStats() for s in CHAT_SPLITS}
    writers = {s: ShardWriter(out, s, dtype, 1 << 40, stats[s]) for s in CHAT_SPLITS}
    masks: dict[str, list[np.ndarray]] = {s: [] for s in CHAT_SPLITS}
    targets = {s: {"tokens": 0, "bytes": 0} for s in CHAT_SPLITS}
    seen: set[bytes] = set()
    for where, messages in tqdm(read_records(paths, report), desc="chat data", unit="conv", disable=not progress):
        digest = document_digest(json.dumps(messages, ensure_ascii=False))
        if digest in seen:
            report.skipped["duplicate conversation"] += 1
            continue
        seen.add(digest)
        try:
            sequences = training_sequences(tokenizer, messages)
        except KrminiError as exc:  # the model's own template refuses it, or cannot mark its replies
            report.skip(where, str(exc)[:120])
            continue
        report.kept += 1
        split = split_of(digest, val_fraction, 0.0)
        learned_bytes = sum(len(m["content"].encode("utf-8")) for m in messages if m["role"] == "assistant")
        writers[split].write(np.asarray([t for seq in sequences for t in seq.ids]), learned_bytes)
        masks[split] += [np.asarray(seq.mask, dtype=np.uint8) for seq in sequences]
        targets[split]["tokens"] += sum(sum(seq.mask) for seq in sequences)
        targets[split]["bytes"] += learned_bytes
    for w in writers.values():
        w.close()
    for split in CHAT_SPLITS:
        if stats[split].documents == 0:
            raise KrminiError(f"{', '.join(map(str, paths))}: {report.summary()}; none in the {split} split — "
                              f"give more conversations")
        write_bytes_atomic(out / f"{split}.mask", np.concatenate(masks[split]).tobytes())
        starts = np.cumsum([0, *(len(m) for m in masks[split][:-1])], dtype=np.uint64)
        write_bytes_atomic(out / f"{split}.starts", starts.tobytes())
    manifest = {
        "format_version": FORMAT_VERSION, "kind": "chat", "dtype": dtype.name,
        "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id,
        "tokenizer": str(tokenizer_path), "tokenizer_sha256": fingerprint(tokenizer.tok),
        "inputs": [str(p) for p in paths], "splits": {s: vars(v) for s, v in stats.items()}, "targets": targets,
        "report": {"read": report.read, "kept": report.kept, "skipped": dict(report.skipped),
                   "changed": dict(report.changed), "examples": report.examples},
    }
    write_manifest(out, manifest)
    print(f"chat data: {report.summary()}")
    for example in report.examples:
        print(f"  e.g. {example}")
    return manifest


def load_chat_split(data_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, mask) of a split written by `prepare_chat`."""
    manifest = read_manifest(data_dir)
    if manifest.get("kind") != "chat":
        raise KrminiError(f"{data_dir}: not a chat data directory (made by `krmini sft`)")
    ids = np.concatenate(load_split(data_dir, split))
    mask = np.fromfile(Path(data_dir) / f"{split}.mask", dtype=np.uint8)
    if len(mask) != len(ids):
        raise KrminiError(f"{data_dir}/{split}.mask: {len(mask)} entries for {len(ids)} tokens; re-run `krmini sft`")
    return ids, mask


def load_chat_starts(data_dir: str | Path, split: str, tokens: int) -> np.ndarray | None:
    """Where each sequence of a split starts, or None for data made before `{split}.starts` was written
    (its conversations all start with BOS)."""
    path = Path(data_dir) / f"{split}.starts"
    if not path.is_file():
        return None
    starts = np.fromfile(path, dtype=np.uint64).astype(np.int64)
    if not len(starts) or starts[0] != 0 or (np.diff(starts) <= 0).any() or starts[-1] >= tokens:
        raise KrminiError(f"{path}: not increasing offsets from 0 below {tokens} tokens; re-run `krmini sft`")
    return starts


class ChatWindows(TokenWindows):
    """Rows of whole sequences (conversations) packed first-fit in order; same sampling/resume logic
    as pretraining.

    A sequence longer than a row is cut to the row (its later turns are lost); rows in which nothing
    is learned are dropped. `truncated` counts the cut sequences. They start at `starts` (written by
    `prepare_chat`), or where BOS is (our template puts it first, and nowhere else).
    """

    def __init__(self, ids: np.ndarray, mask: np.ndarray, seq_len: int, seed: int, bos_id: int, pad_id: int,
                 starts: np.ndarray | None = None) -> None:
        self.seq_len, self.seed, self.pad_id = seq_len, seed, pad_id
        self.ids = ids.astype(np.int64)
        self.labels = np.where(mask.astype(bool), self.ids, -100)
        starts = (np.flatnonzero(ids == bos_id) if starts is None else starts).tolist() + [len(ids)]
        row_len = seq_len + 1
        self.rows: list[list[tuple[int, int]]] = []
        self.truncated = 0
        row: list[tuple[int, int]] = []
        used = 0
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            if b - a > row_len:
                self.truncated += 1
                b = a + row_len
            if used + b - a > row_len:
                self.rows.append(row)
                row, used = [], 0
            row.append((a, b))
            used += b - a
        if row:
            self.rows.append(row)
        self.rows = [r for r in self.rows if any((self.labels[a + 1 : b] != -100).any() for a, b in r)]
        self.num_windows = len(self.rows)
        if self.num_windows == 0:
            raise KrminiError("chat data: no conversation has an assistant reply within seq_len")
        self._perm_epoch = -1
        self._perm = None

    def window(self, index: int) -> np.ndarray:
        """(2, seq_len + 1): token ids (padded) and their labels (-100 where not learned)."""
        out = np.empty((2, self.seq_len + 1), dtype=np.int64)
        out[0], out[1] = self.pad_id, -100
        pos = 0
        for a, b in self.rows[index]:
            out[0, pos : pos + b - a] = self.ids[a:b]
            out[1, pos : pos + b - a] = self.labels[a:b]
            pos += b - a
        return out

    @staticmethod
    def _to_device(rows: list[np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(np.stack(rows))
        return t[:, 0, :-1].to(device), t[:, 1, 1:].to(device)


def chat_batches(data_dir: str | Path, seq_len: int, seed: int, tokenizer: KoTokenizer):
    """BatchSources for the trainer: packed train/val rows and bytes per learned val token."""
    manifest = read_manifest(data_dir)
    windows = {}
    for split in CHAT_SPLITS:
        ids, mask = load_chat_split(data_dir, split)
        windows[split] = ChatWindows(ids, mask, seq_len, seed, tokenizer.bos_id, tokenizer.pad_id,
                                     load_chat_starts(data_dir, split, len(ids)))
    val = manifest["targets"]["val"]
    return BatchSources(windows["train"], windows["val"], val["bytes"] / max(val["tokens"], 1))
