"""state.json and the checksums in it: how a reader knows a checkpoint is whole and unchanged.

The writer records the sha256 of every weight file in state.json (written last, inside the same
staged directory). `read_state` recomputes them, so a disk error, a copy cut short or a flipped
byte is a one-line error naming the file — and the newest intact sibling checkpoint to use instead
— rather than a model that loads and quietly produces garbage.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

from krmini.errors import KrminiError
from krmini.runs.layout import STATE_FILE, TOKENIZER_DIR, complete_checkpoints
from krmini.runs.staged import write_json_atomic


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: Path, missing: str) -> dict[str, Any]:
    """A JSON object from `path`; one line naming the file when it is absent (`missing` says what
    was expected), not JSON, or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):  # NotADirectory: a file where its directory should be
        raise KrminiError(f"{path}: {missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KrminiError(f"{path}: corrupt (not valid JSON: {exc})") from None
    if not isinstance(data, dict):
        raise KrminiError(f"{path}: corrupt (expected a JSON object)")
    return data


def write_state(ckpt: Path, state: dict[str, Any], files: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Write `ckpt/state.json`: `state` plus the sha256 of each of `files` (already written in `ckpt`)."""
    state = {**state, "checksums": {f: sha256_file(ckpt / f) for f in files}}
    write_json_atomic(ckpt / STATE_FILE, state)
    return state


def corrupt_file(ckpt: Path, state: dict[str, Any]) -> Path | None:
    """The first file whose content no longer matches its recorded sha256 (or is missing), else None."""
    for f, digest in state.get("checksums", {}).items():
        if not (ckpt / f).is_file() or sha256_file(ckpt / f) != digest:
            return ckpt / f
    return None


def is_intact(ckpt: Path) -> bool:
    try:
        state = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and corrupt_file(ckpt, state) is None


def read_state(ckpt: Path, verify: bool = True) -> dict[str, Any]:
    """Load state.json and (with `verify`) check every file against its recorded sha256."""
    ckpt = Path(ckpt)
    state = read_json(ckpt / STATE_FILE, "missing; the checkpoint is incomplete")
    if verify:
        bad = corrupt_file(ckpt, state)
        if bad:
            good = [p for p in complete_checkpoints(ckpt.parent) if p != ckpt and is_intact(p)]
            hint = f"; last good checkpoint: {good[-1]}" if good else "; no other intact checkpoint"
            raise KrminiError(f"{bad}: corrupt or truncated (checksum mismatch){hint}")
    return state


def checkpoint_files(ckpt: Path) -> list[Path]:
    """What a checkpoint is made of (state.json, the files it checksums, tokenizer/): the paths an output
    written next to it (an eval result, an int8 copy, a benchmark's JSON) must never replace."""
    state = read_state(ckpt, verify=False)
    return [ckpt / STATE_FILE, ckpt / TOKENIZER_DIR, *(ckpt / name for name in state.get("checksums", {}))]


def last_good_checkpoint(ckpt_root: Path) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint whose files match their checksums, for `--resume`.

    A damaged newer one (a disk error, a copy cut short) is skipped with a warning naming it, so a
    long run continues from the last good state instead of stopping; nothing is deleted.
    """
    found = complete_checkpoints(ckpt_root)
    if not found:
        raise KrminiError(f"{ckpt_root}: --resume given but there is no checkpoint to resume from")
    for path in reversed(found):
        try:
            state = read_state(path)
        except KrminiError as exc:
            warnings.warn(f"skipping damaged checkpoint: {exc}", stacklevel=2)
            continue
        if path != found[-1]:
            warnings.warn(f"resuming from the last good checkpoint {path}", stacklevel=2)
        return path, state
    raise KrminiError(f"{ckpt_root}: every checkpoint is damaged (checksum mismatch or bad state.json); "
                      "cannot resume")
