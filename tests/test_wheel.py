"""The wheel carries everything an installed `krmini` needs, and works from a fresh virtualenv.

Builds the wheel from a copy of the sources (pip fetches the build backend), checks it holds the
presets, the web chat page and the kernels' C++ sources, installs it with its dependencies into a
new virtualenv (torch pinned to the local CPU wheel; an unpinned torch would download GBs of CUDA),
and runs `krmini model-info` there from a directory outside the repository. Those two take
minutes (`make test-integration`); the first test is a quick check of the same layout in `make test`.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "krmini"
TORCH = "torch==2.13.0"


def run(cmd: list, cwd: Path, timeout: int = 1800) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def data_files() -> list[str]:
    """Non-Python files the package must ship, as paths inside the wheel."""
    files = list((PACKAGE / "presets").rglob("*.yaml")) + list((PACKAGE / "presets").rglob("*.json"))
    files += list((PACKAGE / "serve").glob("*.html"))
    files += list((PACKAGE / "infer").rglob("*.cpp"))
    return sorted(p.relative_to(PACKAGE.parent).as_posix() for p in files)


def test_package_data_covers_the_files_a_wheel_needs():
    """Quick: presets are real files in the package (package data skips links) and pyproject lists them."""
    assert not (PACKAGE / "presets").is_symlink()
    assert (REPO / "configs").resolve() == (PACKAGE / "presets").resolve()
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["krmini"]
    listed = {f"krmini/{name}" for pattern in patterns for name in glob.glob(pattern, root_dir=PACKAGE, recursive=True)}
    unlisted = [name for name in data_files() if name not in listed]
    assert not unlisted, f"pyproject.toml [tool.setuptools.package-data] matches none of {unlisted}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Build from a copy (as from a clean clone) so the build leaves nothing in the working tree;
    # symlinks stay links, so a preset folder that is only a link would show up as missing.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "src", src / "src", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", out], cwd=src)
    (built,) = out.glob("krmini-*.whl")
    return built


@pytest.mark.integration
def test_the_wheel_holds_presets_page_and_kernel_sources(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = data_files()
    for must in ("krmini/presets/tiny.yaml", "krmini/presets/small.yaml", "krmini/serve/index.html"):
        assert must in expected
    assert any(n.startswith("krmini/presets/data/") for n in expected)
    assert any(n.endswith(".cpp") for n in expected)
    missing = [n for n in expected if n not in names]
    assert not missing, f"{wheel.name} lacks {missing}"


@pytest.mark.integration
def test_an_installed_wheel_runs_outside_the_repo(wheel, tmp_path):
    from krmini.model.info import count_parameters
    from krmini.train.config import load_run_config

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "-q", TORCH], cwd=tmp_path)
    run([python, "-m", "pip", "install", "-q", f"{wheel}", TORCH], cwd=tmp_path)

    where = tmp_path / "elsewhere"
    where.mkdir()
    location = run([python, "-c", "import krmini; print(krmini.__file__)"], cwd=where).strip()
    assert Path(location).is_relative_to(venv), f"imported krmini from {location}, not from the new virtualenv"
    out = run([venv / "bin" / "krmini", "model-info", "tiny"], cwd=where, timeout=300)
    total = count_parameters(load_run_config("tiny").model)["total"]
    assert out.startswith("config: tiny\n"), out
    assert [line.split()[:2] for line in out.splitlines() if line.strip().startswith("total")] == \
        [["total", f"{total:,}"]], out  # 2,361,024 for tiny
