"""Where evaluation results live: JSON files under `<run>/eval/`, written staged (`krmini.runs`)."""

from __future__ import annotations

import json
from pathlib import Path

from krmini.errors import KrminiError
from krmini.runs import CHECKPOINTS_DIR, write_json_atomic

RESULTS_DIR = "eval"


def results_dir(run_or_ckpt: str | Path, ckpt: Path) -> Path:
    """`<run>/eval` for a run directory, `<checkpoint>/eval` for a checkpoint given directly."""
    run = Path(run_or_ckpt)
    return run / RESULTS_DIR if (run / CHECKPOINTS_DIR).is_dir() else ckpt / RESULTS_DIR


def write_json(path: Path, record: dict) -> Path:
    """Written under a temporary name, then renamed over the old file: never half a file."""
    return write_json_atomic(path, record)


def read_results(directory: Path) -> list[dict]:
    """Every result JSON in `directory`, sorted by file name (each with its `file` added)."""
    records = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise KrminiError(f"{path}: not valid JSON; delete it or re-run the evaluation") from None
        records.append({**record, "file": path.name})
    return records
