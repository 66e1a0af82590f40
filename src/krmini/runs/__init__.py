"""The run format: file names, checkpoint resolution, checksums, and staged (all-or-nothing) writes.

This is a foundation package — it imports only `krmini.errors` and `krmini.config` — so every
stage that reads or writes a run (train, infer, chat, eval, export, data) agrees on one layout
and one way of writing it, instead of each keeping its own copy of the names and the rename dance.
See `layout` for the directory tree, `state` for checksums, `staged` for how files are written.
"""

from krmini.runs.layout import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_FILE,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    LATEST,
    MODEL_FILE,
    OPTIM_FILE,
    STATE_FILE,
    TOKENIZER_DIR,
    complete_checkpoints,
    lora_section,
    resolve_checkpoint,
    run_dir,
    step_name,
)
from krmini.runs.staged import (
    check_output,
    check_target,
    fsync_dir,
    refuse_overlap,
    staged_dir,
    staged_file,
    staged_files,
    temp_path,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from krmini.runs.state import (
    checkpoint_files,
    corrupt_file,
    is_intact,
    last_good_checkpoint,
    read_json,
    read_state,
    sha256_file,
    write_state,
)

__all__ = [
    "ADAPTER_CONFIG", "ADAPTER_DIR", "ADAPTER_FILE", "CHECKPOINTS_DIR", "CONFIG_FILE", "LATEST", "MODEL_FILE",
    "OPTIM_FILE", "STATE_FILE", "TOKENIZER_DIR", "check_output", "check_target", "checkpoint_files", "complete_checkpoints", "corrupt_file",
    "fsync_dir", "is_intact", "last_good_checkpoint", "lora_section", "read_json", "read_state", "refuse_overlap", "resolve_checkpoint", "run_dir",
    "sha256_file", "staged_dir", "staged_file", "staged_files", "step_name", "temp_path", "write_bytes_atomic",
    "write_json_atomic", "write_state", "write_text_atomic",
]
