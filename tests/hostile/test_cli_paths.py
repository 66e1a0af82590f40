"""Every path argument of every command, given something hostile: a missing path, the wrong kind (a
directory for a file, a file for a directory), an unreadable one, an output inside what the command
reads. Each is one error line naming the path, no traceback, and nothing created or destroyed."""

from __future__ import annotations

import builtins
import ctypes
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.hostile.paths import SPEC, argv_for, cases, slots, write_inputs
from tests.hostile.walk import path_arguments, run_cli, snapshot

ROOT = Path(__file__).resolve().parents[2]
CASES = cases()
PROGRESS = re.compile(r"^(?!krmini).*\[\d\d:\d\d")  # a tqdm bar drawn before the failure: progress, not an error


def test_every_path_argument_has_a_slot():
    named = {(command, s.dest) for command, templates in SPEC.items() for t in templates for s in slots(t)}
    assert named == path_arguments(), (f"missing from SPEC: {sorted(path_arguments() - named)}; "
                                       f"SPEC names what the parser lacks: {sorted(named - path_arguments())}")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_run, chat_run, lora_run):
    return write_inputs(tmp_path_factory.mktemp("inputs"), tiny_run, chat_run, lora_run)


def check(case, code, out, err, hostile: Path, work: Path, before: dict) -> None:
    assert isinstance(code, int) and code in (1, 2), f"exit {code}\nstdout: {out[-800:]}\nstderr: {err[-3000:]}"
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("krmini: warning:")
             and not PROGRESS.search(line)]
    assert len(lines) == 1, f"expected one error line:\n{err}"
    assert lines[0].startswith("krmini"), lines[0]
    # the line names the hostile path (an output inside an input may be named by that input instead)
    names = {str(hostile), *(str(p) for p in before)} if case.what == "inside-input" else {str(hostile)}
    assert any(n in lines[0] for n in names), f"{lines[0]!r} names none of {sorted(names)}"
    for path, snap in before.items():
        assert snapshot(path) == snap, f"{path} changed"
    assert not (work / "new-out").exists() and not (work / "new-out.json").exists(), "an output was created"


def prepared(case, inputs, work: Path):
    argv, hostile, watched = argv_for(case, inputs, work, free_port())
    return argv, hostile, {p: snapshot(p) for p in {*watched, hostile} if p.exists()}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if c.what != "unreadable"])
def test_hostile_path(case, inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(builtins, "input", lambda prompt="": (_ for _ in ()).throw(EOFError))
    uvicorn = pytest.importorskip("uvicorn") if case.command == "serve" else None
    if uvicorn:
        monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started"))
    argv, hostile, before = prepared(case, inputs, tmp_path)
    code, out, err = run_cli(argv, capsys, monkeypatch)
    check(case, code, out, err, hostile, tmp_path, before)


# ---- unreadable: file permissions must bind the process, and root's do not ---------------------------

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def drop_permission_override() -> None:
    """In the child, before exec: root without the capabilities that ignore file permissions."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def bound_by_permissions(probe: Path) -> tuple[bool, str]:
    """Can a child process be made that chmod 000 keeps out? (root: drop the override capabilities;
    running as a plain user already is one; staying root keeps the venv and tmp dirs reachable)."""
    probe.write_text("x", encoding="utf-8")
    probe.chmod(0)
    preexec = drop_permission_override if os.geteuid() == 0 else None
    try:
        proc = subprocess.run([sys.executable, "-c", f"open({str(probe)!r}).read()"], preexec_fn=preexec,
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"cannot start a process without CAP_DAC_OVERRIDE: {exc}"
    if proc.returncode == 0:
        return False, "a chmod 000 file stays readable to child processes here (no way to drop root's override)"
    return "PermissionError" in proc.stderr, proc.stderr.strip()[-300:]


@pytest.fixture(scope="module")
def unreadable_outcomes(inputs, tmp_path_factory):
    """Every unreadable case run in one child process: {case id: (outcome, hostile path, work, before)}."""
    work_root = tmp_path_factory.mktemp("unreadable")
    ok, why = bound_by_permissions(work_root / "probe")
    if not ok:
        pytest.skip(f"unreadable-file cases: {why}")
    prepared_cases = {}
    for case in (c for c in CASES if c.what == "unreadable"):
        work = work_root / case.id.replace(":", "-").replace(" ", "_")
        work.mkdir()
        argv, hostile, before = prepared(case, inputs, work)
        hostile.chmod(0)
        prepared_cases[case.id] = (argv, hostile, work, before)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "OMP_NUM_THREADS": "1",
           "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1"}
    preexec = drop_permission_override if os.geteuid() == 0 else None
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.hostile.runner"], cwd=work_root, env=env,
                              input=json.dumps([a for a, *_ in prepared_cases.values()]), capture_output=True,
                              text=True, preexec_fn=preexec, timeout=600)
    finally:
        for _, hostile, _, _ in prepared_cases.values():
            hostile.chmod(0o755 if hostile.is_dir() else 0o644)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(prepared_cases), proc.stderr[-3000:]
    return {cid: (r, *rest[1:]) for (cid, rest), r in zip(prepared_cases.items(), results, strict=True)}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if c.what == "unreadable"])
def test_unreadable_path(case, unreadable_outcomes):
    result, hostile, work, before = unreadable_outcomes[case.id]
    check(case, result["code"], result["out"], result["err"], hostile, work, before)
