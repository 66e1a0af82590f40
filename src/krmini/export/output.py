"""Output paths for exports: refuse to overwrite unless asked, and never leave half an export.

A directory export is built in a temporary sibling and renamed into place when complete; a file
export is written under a temporary name and renamed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from krmini.errors import KrminiError


def check_target(path: Path, force: bool) -> None:
    """Refuse a non-empty directory or an existing file unless `force`."""
    if path.is_dir() and any(path.iterdir()) and not force:
        raise KrminiError(f"{path}: directory is not empty; choose another path or pass --force to replace it")
    if path.exists() and not path.is_dir() and not force:
        raise KrminiError(f"{path}: already exists; choose another path or pass --force to replace it")


@contextmanager
def staged_dir(path: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `path`, on failure it is removed."""
    check_target(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    os.replace(tmp, path)


@contextmanager
def staged_file(path: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary file path; on success it replaces `path`, on failure it is removed."""
    check_target(path, force)
    if path.is_dir():
        raise KrminiError(f"{path}: is a directory; expected a file name such as model.gguf")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
