"""The run format (krmini.runs): staged writes, checksums, and how a path becomes a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from krmini.errors import KrminiError
from krmini.runs import (
    LATEST,
    MODEL_FILE,
    STATE_FILE,
    complete_checkpoints,
    last_good_checkpoint,
    read_state,
    resolve_checkpoint,
    staged_dir,
    staged_file,
    staged_files,
    write_json_atomic,
    write_state,
    write_text_atomic,
)


class Boom(Exception):
    pass


def test_staged_dir_replaces_whole_or_leaves_target_untouched(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old", encoding="utf-8")
    with pytest.raises(Boom), staged_dir(target, force=True) as tmp:
        (tmp / "new.txt").write_text("half", encoding="utf-8")
        raise Boom
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the temporary is gone
    with staged_dir(target, force=True) as tmp:
        (tmp / "new.txt").write_text("new", encoding="utf-8")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_staged_file_failure_keeps_old_content(tmp_path):
    target = tmp_path / "a.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(Boom), staged_file(target, force=True) as tmp:
        tmp.write_text("{trunc", encoding="utf-8")
        raise Boom
    assert json.loads(target.read_text(encoding="utf-8")) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    write_text_atomic(target, "한국어\n")
    assert target.read_text(encoding="utf-8") == "한국어\n"


def test_staged_writes_refuse_existing_targets_without_force(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("keep", encoding="utf-8")
    with pytest.raises(KrminiError, match=r"d: directory is not empty.*--force"), staged_dir(tmp_path / "d"):
        pytest.fail("the body must not run")
    (tmp_path / "f").write_text("keep", encoding="utf-8")
    with pytest.raises(KrminiError, match=r"f: already exists.*--force"), staged_file(tmp_path / "f"):
        pytest.fail("the body must not run")
    assert (tmp_path / "d" / "x").read_text(encoding="utf-8") == "keep"
    assert (tmp_path / "f").read_text(encoding="utf-8") == "keep"


@pytest.mark.parametrize("force", [False, True])
def test_a_file_write_onto_a_directory_is_refused_without_suggesting_force(tmp_path, force):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("keep", encoding="utf-8")
    with pytest.raises(KrminiError) as caught, staged_file(tmp_path / "d", force=force):
        pytest.fail("the body must not run")
    assert str(caught.value) == f"{tmp_path / 'd'}: is a directory; expected a file name"
    assert (tmp_path / "d" / "x").read_text(encoding="utf-8") == "keep"


def test_staged_files_move_in_last_and_keep_the_other_files(tmp_path):
    data = tmp_path / "data"
    with staged_files(data, lambda n: n.startswith("a_"), "m.json") as tmp:
        (tmp / "a_0").write_text("new 0", encoding="utf-8")
        (tmp / "m.json").write_text("{}", encoding="utf-8")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["data"]  # absent before: one rename
    (data / "a_1").write_text("stale", encoding="utf-8")
    (data / "b_0").write_text("other part", encoding="utf-8")
    with pytest.raises(Boom), staged_files(data, lambda n: n.startswith("a_"), "m.json") as tmp:
        (tmp / "a_0").write_text("half", encoding="utf-8")
        raise Boom
    assert sorted(f.name for f in data.iterdir()) == ["a_0", "a_1", "b_0", "m.json"]  # untouched
    assert (data / "a_0").read_text(encoding="utf-8") == "new 0"
    with staged_files(data, lambda n: n.startswith("a_"), "m.json") as tmp:
        (tmp / "a_0").write_text("newer 0", encoding="utf-8")
        (tmp / "m.json").write_text('{"v": 2}', encoding="utf-8")
    assert {f.name: f.read_text(encoding="utf-8") for f in data.iterdir()} == {
        "a_0": "newer 0", "b_0": "other part", "m.json": '{"v": 2}'}  # a_1 was this output's: gone
    assert sorted(f.name for f in tmp_path.iterdir()) == ["data"]
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(KrminiError, match="file: exists and is not a directory"), \
            staged_files(tmp_path / "file", lambda n: True, "m.json"):
        pytest.fail("the body must not run")


def test_interrupted_write_leftover_is_cleared_and_never_read(tmp_path):
    """A SIGKILL mid-write leaves `name.tmp`; readers skip it and the next write replaces it."""
    root = tmp_path / "checkpoints"
    _checkpoint(root, 1)
    (root / "step_00000002.tmp").mkdir()
    (root / "step_00000002.tmp" / STATE_FILE).write_text("{}", encoding="utf-8")
    assert [p.name for p in complete_checkpoints(root)] == ["step_00000001"]
    with staged_dir(root / "step_00000002", force=True) as tmp:
        assert list(tmp.iterdir()) == []
    assert not (root / "step_00000002.tmp").exists()


def _checkpoint(root: Path, step: int, payload: bytes = b"weights") -> Path:
    path = root / f"step_{step:08d}"
    with staged_dir(path, force=True) as tmp:
        (tmp / MODEL_FILE).write_bytes(payload * 100)
        write_state(tmp, {"step": step}, (MODEL_FILE,))
    write_text_atomic(root / LATEST, path.name)
    return path


def test_checksum_detects_a_flipped_byte_and_names_the_last_good(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    good, bad = _checkpoint(root, 1), _checkpoint(root, 2)
    assert read_state(bad)["checksums"][MODEL_FILE] == read_state(good)["checksums"][MODEL_FILE]
    data = bytearray((bad / MODEL_FILE).read_bytes())
    data[350] ^= 0x01
    (bad / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(KrminiError, match=f"{bad / MODEL_FILE}: corrupt or truncated.*last good checkpoint: {good}"):
        read_state(bad)
    assert read_state(bad, verify=False)["step"] == 2
    with pytest.warns(UserWarning) as caught:
        assert last_good_checkpoint(root)[0] == good
    assert [str(w.message).split(":")[0] for w in caught] == ["skipping damaged checkpoint",
                                                              f"resuming from the last good checkpoint {good}"]
    (bad / STATE_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(KrminiError, match=f"{bad / STATE_FILE}: corrupt \\(not valid JSON: Expecting property name"):
        read_state(bad)


def test_resolution_of_run_checkpoints_folder_checkpoint_and_latest(tmp_path):
    run = tmp_path / "run"
    first, second = _checkpoint(run / "checkpoints", 1), _checkpoint(run / "checkpoints", 2)
    assert resolve_checkpoint(run) == second  # run directory → latest
    assert resolve_checkpoint(run / "checkpoints") == second
    assert resolve_checkpoint(first) == first  # a checkpoint directory is itself
    write_text_atomic(run / "checkpoints" / LATEST, first.name)
    assert resolve_checkpoint(run) == first  # `latest` decides, not the sort order
    (run / "checkpoints" / LATEST).unlink()
    assert resolve_checkpoint(run) == second  # without `latest`: the newest complete one
    with pytest.raises(KrminiError, match=f"{tmp_path / 'empty'}: no checkpoint found"):
        resolve_checkpoint(tmp_path / "empty")


def test_runs_is_a_foundation_package():
    """runs/ may import only krmini.errors and krmini.config, so every stage can depend on it."""
    import ast

    import krmini.runs

    for source in Path(krmini.runs.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                if name.startswith("krmini"):
                    assert name.split(".")[1] in {"errors", "config", "runs"}, f"{source.name} imports {name}"
