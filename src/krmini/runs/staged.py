"""Staged writes: build the output under a temporary sibling name, flush it, then rename it into place.

Every file or directory the project writes for later reading (checkpoints, quantized copies,
adapters, shards, manifests, eval results, reports, exports) goes through here, so one rule holds
everywhere: a reader sees the old output or the complete new one, never half of either.

    path.tmp   built here (a file, or a directory with all its files)
    fsync      every file, then the directory, so the data is on disk before the name is
    rename     os.replace onto `path` — atomic on POSIX within one file system

If the body raises (or the user presses Ctrl-C) the temporary is removed and `path` is untouched.
A process killed outright (SIGKILL, power loss) can leave `path.tmp` behind; the next write to the
same path clears it first, and readers never look at `*.tmp` names.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from krmini.errors import KrminiError

TMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    """Where `path` is built: a sibling, so the final rename never crosses file systems."""
    return path.with_name(path.name + TMP_SUFFIX)


def refuse_overlap(out: Path, inputs: Iterable[str | Path]) -> None:
    """Refuse an output that is, contains or lies inside one of its inputs: replacing it (`--force`)
    would delete what it is made from (`krmini export hf RUN RUN --force` once deleted the run)."""
    target = Path(out).resolve()
    for given in inputs:
        source = Path(given).resolve()
        if target == source or source.is_relative_to(target) or target.is_relative_to(source):
            raise KrminiError(f"{out}: is, contains or lies inside the input {given}; choose an output outside it "
                              "(inputs are never replaced, with or without --force)")


def check_output(path: str | Path, kind: str = "dir", inputs: Iterable[str | Path] = ()) -> None:
    """Refuse an output that overlaps an input, or is not of its `kind` ("dir": an existing file, or a
    file among its parents; "file": an existing directory) — before the work that produces it."""
    path = Path(path)
    refuse_overlap(path, inputs)
    if kind == "dir" and path.exists() and not path.is_dir():
        raise KrminiError(f"{path}: is a file; expected a directory")
    if kind == "file" and path.is_dir():
        raise KrminiError(f"{path}: is a directory; expected a file name")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise KrminiError(f"{parent}: is a file; expected a directory (in the path {path})")


def check_target(path: Path, force: bool, inputs: Iterable[str | Path] = (), kind: str = "dir") -> None:
    """`check_output`, and without `force` also refuse a non-empty directory or an existing file (one
    line, naming the path)."""
    check_output(path, kind, inputs)
    if force:
        return
    if path.is_dir() and any(path.iterdir()):
        raise KrminiError(f"{path}: directory is not empty; choose another path or pass --force to replace it")
    if path.exists() and not path.is_dir():
        raise KrminiError(f"{path}: already exists; choose another path or pass --force to replace it")


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Persist a directory's entries (the names made by a rename); a no-op where the OS refuses it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fsync_file(Path(dirpath) / name)
        fsync_dir(Path(dirpath))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def staged_dir(path: str | Path, force: bool = False, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield an empty temporary directory; when the body returns it replaces `path`.

    Without `force`, an existing non-empty `path` is refused before anything is written; a `path`
    that overlaps one of `inputs` is refused always.
    """
    path = Path(path)
    check_target(path, force, inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    with _building(tmp):
        yield tmp
    _remove(path)
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextmanager
def _building(tmp: Path) -> Iterator[None]:
    """`tmp` made empty to build in: synced to disk when the body returns, removed if it raises."""
    _remove(tmp)
    tmp.mkdir()
    try:
        yield
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def staged_files(directory: str | Path, replaces: Callable[[str], bool], last: str) -> Iterator[Path]:
    """Yield an empty temporary sibling of `directory` to build some of its files in; when the body
    returns they move into `directory`, whose other files stay (one machine's part of a data directory).

    A `directory` that does not exist becomes the temporary by one rename. In one that exists, the
    names `replaces` matches go first — the old `last` before all: it is the commit point, so a half
    moved directory never looks complete — then the new files move in, `last` at the end. If the body
    raises, the temporary is removed and `directory` is untouched (or still absent).
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise KrminiError(f"{directory}: exists and is not a directory; expected a directory to write into")
    tmp = directory.with_name(f"{directory.name}.{Path(last).stem}{TMP_SUFFIX}")  # one per part: parts may run at once
    directory.parent.mkdir(parents=True, exist_ok=True)
    with _building(tmp):
        yield tmp
    if not directory.exists():
        os.replace(tmp, directory)
        fsync_dir(directory.parent)
        return
    (directory / last).unlink(missing_ok=True)
    for old in directory.iterdir():
        if replaces(old.name) and not old.is_dir():
            old.unlink()
    for new in sorted(tmp.iterdir(), key=lambda f: f.name == last):
        os.replace(new, directory / new.name)
    fsync_dir(directory)
    tmp.rmdir()


@contextmanager
def staged_file(path: str | Path, force: bool = False, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary file path to write (and close); when the body returns it replaces `path`
    (checked against `inputs` as in `staged_dir`)."""
    path = Path(path)
    check_target(path, force, inputs, kind="file")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    _remove(tmp)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"{tmp}: the staged write produced no file")
        fsync_file(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Replace `path` with `data` (staged: never half a file)."""
    with staged_file(path, force=True) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, record: Any) -> Path:
    """Indented UTF-8 JSON (Korean kept readable, not \\u-escaped), ending in a newline."""
    return write_text_atomic(path, json.dumps(record, ensure_ascii=False, indent=2) + "\n")
