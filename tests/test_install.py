"""The checkout installs as a package: ``pip install -e .`` in a fresh venv gives ``utility`` importable from
anywhere and one console script per entry point; ``pip wheel .`` holds every subpackage; an entry script
run outside the project's environment says so in one line.

The fresh venv reuses this environment's packages through a ``.pth`` file, so nothing is downloaded and the
install takes seconds, while pip still checks every pinned requirement against what is installed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from conftest import HANG_GUARD_S

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = {"tli-finetune": "-c CONFIG.yaml", "tli-pretrain": "-c CONFIG.yaml", "tli-simclr": "-c CONFIG.yaml",
           "tli-knn-eval": "--encoder", "tli-queue": "--jobs", "tli-study": "-c", "tli-analyze": "embed"}

pytestmark = pytest.mark.e2e


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH: only what the venv installs is importable."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"CUDA_VISIBLE_DEVICES": ""}


def _pip(py: Path, *args: str, cwd: Path) -> None:
    proc = subprocess.run([str(py), "-m", "pip", *args, "--no-build-isolation", "--no-index", "-q"], cwd=cwd,
                          capture_output=True, text=True, timeout=HANG_GUARD_S, env=_clean_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with this checkout installed editable; its bin/ folder."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _pip(py, "install", "-e", str(REPO), cwd=env_dir)
    return env_dir / "bin"


def test_editable_install_gives_the_package_and_console_scripts(installed, tmp_path):
    probe = "import utility, utility.models; from utility.models import get_model; print(utility.__file__)"
    proc = subprocess.run([str(installed / "python"), "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                          env=_clean_env(), timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Path(proc.stdout.strip()) == REPO / "utility" / "__init__.py"
    for name, expected in SCRIPTS.items():
        proc = subprocess.run([str(installed / name), "--help"], cwd=tmp_path, capture_output=True, text=True,
                              env=_clean_env(), timeout=HANG_GUARD_S)
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
        assert "usage:" in proc.stdout and expected in proc.stdout, f"{name}: {proc.stdout[:500]}"


def test_the_wheel_holds_every_subpackage(tmp_path):
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside pyproject.toml
    shutil.copytree(REPO / "utility", src / "utility", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "requirements.txt", "requirements-dev.txt",
                 "requirements-trackers.txt"):
        shutil.copy(REPO / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=HANG_GUARD_S,
                          env=_clean_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {p.parent.relative_to(REPO).as_posix() for p in (REPO / "utility").rglob("__init__.py")}
    assert {f"{p}/__init__.py" for p in packages} <= names
    assert not any(n.startswith(("tests/", "pkgs/", "benchmarks/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert all(f"{name} = utility.console:" in text for name in SCRIPTS)


@pytest.mark.parametrize("script", ["pkgs/FTE/finetune.py", "pkgs/Study/study.py", "pkgs/SSL/pretrain.py"])
def test_entry_script_outside_the_environment_says_which_to_use(script, tmp_path):
    """``python -S``: no site-packages (neither the dependencies nor an install of this project)."""
    proc = subprocess.run([sys.executable, "-S", str(REPO / script), "--help"], cwd=tmp_path, capture_output=True,
                          text=True, env=_clean_env(), timeout=HANG_GUARD_S)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "'utility' not found" in lines[0] and "project's environment" in lines[0] and "pip install -e ." in lines[0]
