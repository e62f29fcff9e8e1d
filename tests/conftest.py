"""Shared pytest fixtures: tiny generated image data, task YAMLs and running the real entry points.

Everything here is CPU-only and writes into ``tmp_path``. Fixtures return plain functions so a
test can build as many datasets / runs as it needs::

    def test_something(tmp_path, make_folder_dataset, write_task_yaml, run_finetune):
        make_folder_dataset(tmp_path / "data" / "tiny", ["a", "b"], 6)
        task = write_task_yaml(tmp_path / "tiny.yaml", root="tiny")
        proc = run_finetune(["-c", cfg, "--task", task, "--data_root", tmp_path / "data"], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr

The same functions are importable for module-level helpers: ``from conftest import write_png``.
``run_inproc(main, args, cwd)`` runs an entry point in this process (user errors, short runs), and the
session fixture ``finished_run`` is one tiny finished finetuning run for the tests that only read one.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
FINETUNE = REPO / "pkgs" / "FTE" / "finetune.py"
# entry points started as child processes import this checkout's `utility` even where it is not installed
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


# ----------------------------------------------------------------------------- images

def class_pattern(cls: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """A learnable uint8 [size, size] image for class ``cls``.

    The class is the orientation of bright bars (0 horizontal, 1 vertical, 2 diagonal,
    3 anti-diagonal) and, beyond 4 classes, their number (1 + cls // 4). Orientation survives
    flips, small crops and per-image min-max normalisation, so any class count stays learnable.
    Low-amplitude noise (seeded) makes every image distinct.
    """
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 40, size=(size, size)).astype(np.float32)
    orient, n_bars = cls % 4, 1 + cls // 4
    yy, xx = np.mgrid[0:size, 0:size]
    width = max(1, size // 8)
    for b in range(n_bars):
        offset = (b + 1) * size // (n_bars + 1)
        if orient == 0:
            mask = np.abs(yy - offset) < width
        elif orient == 1:
            mask = np.abs(xx - offset) < width
        elif orient == 2:
            mask = np.abs((yy - xx) - (offset - size // 2)) < width
        else:
            mask = np.abs((yy + xx) - (offset + size // 2)) < width
        img[mask] = 200 + rng.integers(0, 55)
    return img.clip(0, 255).astype(np.uint8)


def write_png(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 [H, W] (grayscale) or [H, W, 3] (RGB) array as PNG, creating parent folders.
    The format follows the suffix, so ``x.JPEG`` writes a JPEG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def write_class_image(path: Path, cls: int, size: int = 16, seed: int = 0, rgb: bool = False) -> Path:
    """``class_pattern`` written to ``path`` (grayscale, or the same pattern in 3 channels)."""
    arr = class_pattern(cls, size, seed)
    if rgb:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return write_png(path, arr)


def make_folder_dataset(root: Path, classes: Sequence[str], n_per_class: int | Mapping[str, int],
                        splits: Iterable[str] = ("train", "test"), size: int = 16,
                        ext: str = ".png", rgb: bool = False) -> dict[str, list[Path]]:
    """Folder-per-class layout ``root/<split>/<class>/<class>_<i>.png`` with learnable images.

    ``n_per_class`` is one count for every class or a {class: count} mapping (class imbalance).
    The pattern of a class is its position in ``classes``. Returns {split: sorted paths}.
    """
    root = Path(root)
    out: dict[str, list[Path]] = {}
    for s_i, split in enumerate(splits):
        paths = []
        for c_i, cls in enumerate(classes):
            n = n_per_class[cls] if isinstance(n_per_class, Mapping) else n_per_class
            for i in range(n):
                p = root / split / cls / f"{cls}_{split}_{i:04d}{ext}"
                paths.append(write_class_image(p, c_i, size, seed=hash((s_i, c_i, i)) % 2**32, rgb=rgb))
        out[split] = sorted(paths)
    return out


# ----------------------------------------------------------------------------- YAML files

def write_yaml(path: Path, data: Mapping[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False))
    return path


def task_dict(name: str = "tiny", root: str = "tiny", **overrides: Any) -> dict[str, Any]:
    """A minimal folder-layout multiclass task (train/ and test/ folders, val carved out of train,
    16x16, naive normalizer, no augmentation). Keyword arguments replace top-level keys."""
    data: dict[str, Any] = {
        "name": name,
        "type": "multiclass",
        "root": root,
        "data_format": [".png"],
        "layout": {"reader": "folders"},
        "splits": {"train": {"dir": "train"}, "val": {"from": "train", "fraction": 0.25},
                   "test": {"dir": "test"}},
        "loss": "ce",
        "normalizer": "naive",
        "shape_desired": [16, 16],
        "augmentation": "none",
        "primary_metric": "accuracy",
    }
    data.update(overrides)
    return data


def small_run_config(name: str = "t/run", task: str | Path = "tiny", **overrides: Any) -> dict[str, Any]:
    """FTE config keys for a fast CPU run: resnet18, 16x16, 1 epoch, batch 8, no workers."""
    data: dict[str, Any] = {
        "name": name, "task": str(task), "model_name": "resnet18", "device": "cpu", "seed": 0,
        "epochs": 1, "batch_size": 8, "num_workers": 0, "shape_desired": [16, 16],
        "optimizer": "AdamW", "lr": 0.001, "scheduler": None, "verbose": False,
    }
    data.update(overrides)
    return data


# ----------------------------------------------------------------------------- subprocesses

def run_finetune(args: Sequence[Any], cwd: Path, timeout: Optional[float] = None, cpu_only: bool = True,
                 env: Optional[Mapping[str, str]] = None) -> subprocess.CompletedProcess:
    """``python pkgs/FTE/finetune.py *args`` exactly as a user runs it, from ``cwd`` (use a folder
    other than the repository to prove runs work from anywhere). Output is captured as text.
    ``cpu_only`` hides CUDA devices so the test behaves the same on a GPU machine."""
    full_env = dict(os.environ)
    full_env.setdefault("OMP_NUM_THREADS", "2")
    if cpu_only:
        full_env["CUDA_VISIBLE_DEVICES"] = ""
    full_env.update(env or {})
    cmd = [sys.executable, str(FINETUNE), *map(str, args)]
    return subprocess.run(cmd, cwd=str(cwd), capture_output=True, text=True, timeout=timeout or HANG_GUARD_S,
                          env=full_env)


def run_inproc(main: Any, args: Sequence[Any], cwd: Path, cpu_only: bool = True) -> subprocess.CompletedProcess:
    """An entry point's ``main`` through ``utility.entry.run_entry`` in this process, as
    ``run_finetune`` runs it in a child: from ``cwd``, stdout/stderr captured as text, the exit code
    returned in a CompletedProcess. No interpreter start and no torch import per call: for user errors and
    short runs whose checks do not depend on the process (its thread count is this process's; runs that
    prove reproducibility, signals or a kill stay child processes). ``cpu_only`` makes CUDA look absent,
    as CUDA_VISIBLE_DEVICES="" does. Restores the cwd and resets ``CrashLog.path`` afterwards."""
    import contextlib
    import io
    from unittest import mock

    import torch

    from utility.entry import CrashLog, run_entry

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    old_cwd = os.getcwd()
    no_cuda = mock.patch.object(torch.cuda, "is_available", return_value=False) if cpu_only \
        else contextlib.nullcontext()
    try:
        os.chdir(cwd)
        with no_cuda, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run_entry(main, argv)
    finally:
        os.chdir(old_cwd)
        CrashLog.path = None
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


# Deadlines are hang guards only, never a speed test: generous, and a busy machine may raise them further.
HANG_GUARD_S = float(os.environ.get("TEST_HANG_GUARD_S", "1800"))


def spawn_workers(fn: Any, init_file: Path, *args: Any, nprocs: int = 2) -> None:
    """``fn(rank, str(init_file), *args)`` in ``nprocs`` spawned processes (a gloo group through the file
    ``init_file``); fails, killing them, only when they have not finished within HANG_GUARD_S (a hang)."""
    import time

    import torch.multiprocessing as mp

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ctx = mp.start_processes(fn, args=(str(init_file), *args), nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + HANG_GUARD_S
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.kill()
            pytest.fail(f"{getattr(fn, '__name__', fn)}: the {nprocs} workers did not finish within "
                        f"{HANG_GUARD_S:.0f} s: a hang (deadlock?)")


def kill_when(cmd: Sequence[Any], cwd: Path, ready: Any, env: Optional[Mapping[str, str]] = None) -> int:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` is true (a checkpoint exists, a log has rows);
    returns its exit status (-9 when killed; another one when it ended first)."""
    import signal
    import time

    proc = subprocess.Popen([str(c) for c in cmd], cwd=str(cwd), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(env) if env is not None else None)
    deadline = time.monotonic() + HANG_GUARD_S
    try:
        while proc.poll() is None:
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                break
            if time.monotonic() > deadline:
                pytest.fail(f"{cmd[1] if len(cmd) > 1 else cmd[0]}: not ready and not ended within "
                            f"{HANG_GUARD_S:.0f} s: a hang")
            time.sleep(0.02)
        return proc.wait(timeout=HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def snapshot(folder: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file under ``folder`` (to prove nothing was touched)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(autouse=True)
def _torch_anomaly_mode_restored():
    """A run started in-process with ``debug: true`` turns on autograd anomaly detection for the whole
    process (the entry points are processes of their own, the tests are not): put it back after each
    test, so a later in-process run sees the mode it would see as a command (a NaN loss stays the run's
    one-line stop, not an anomaly traceback)."""
    import torch

    before = torch.is_anomaly_enabled()
    yield
    torch.autograd.set_detect_anomaly(before)


@pytest.fixture
def repo_root() -> Path:
    """The repository root (tests never write into it)."""
    return REPO


@pytest.fixture(name="make_folder_dataset")
def make_folder_dataset_fixture():
    """``make_folder_dataset(root, classes, n_per_class, splits=("train","test"), size=16)``."""
    return make_folder_dataset


@pytest.fixture(name="write_task_yaml")
def write_task_yaml_fixture(tmp_path):
    """``write_task_yaml(path=None, **keys) -> Path``: a minimal task YAML (see ``task_dict``);
    default path ``tmp_path/tasks/<name>.yaml``."""
    def write(path: Optional[Path] = None, **keys: Any) -> Path:
        data = task_dict(**keys)
        return write_yaml(Path(path) if path else tmp_path / "tasks" / f"{data['name']}.yaml", data)
    return write


@pytest.fixture
def task_yaml(write_task_yaml) -> Path:
    """A minimal folder-layout task YAML (name/root ``tiny``) in tmp_path/tasks/tiny.yaml."""
    return write_task_yaml()


@pytest.fixture(name="run_finetune")
def run_finetune_fixture():
    """``run_finetune(args, cwd, timeout=None) -> CompletedProcess`` (see the module function)."""
    return run_finetune


@pytest.fixture
def tiny_setup(tmp_path, make_folder_dataset, write_task_yaml):
    """A ready-to-run folder dataset + task + run config in tmp_path.

    Returns a dict: data_root, out_root, task (YAML path), config (YAML path), cwd (an empty
    folder that is not the repository), paths ({split: files}).
    """
    data_root = tmp_path / "data"
    paths = make_folder_dataset(data_root / "tiny", ["bar_h", "bar_v"], 8)
    task = write_task_yaml(root="tiny")
    config = write_yaml(tmp_path / "cfg" / "run.yaml", small_run_config(task=task))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    return {"data_root": data_root, "out_root": tmp_path / "out", "task": task, "config": config,
            "cwd": cwd, "paths": paths}


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> dict[str, Path]:
    """One tiny finished finetuning run (resnet18, 1 epoch, 16 px, 2 classes x 8 images), made once per
    session in-process, for the tests that only read a finished run. Never change it: a test that
    modifies a run copies it first (shutil.copytree). Returns root, config, task, data_root, cwd, dir."""
    from utility.runs.finetune import main as finetune_main

    root = tmp_path_factory.mktemp("finished_run")
    make_folder_dataset(root / "data" / "tiny", ["bar_h", "bar_v"], 8)
    task = write_yaml(root / "tasks" / "tiny.yaml", task_dict())
    config = write_yaml(root / "run.yaml", small_run_config(task=task, data_root=str(root / "data"),
                                                            output_root=str(root / "out")))
    cwd = root / "cwd"
    cwd.mkdir()
    proc = run_inproc(finetune_main, ["-c", config], cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"root": root, "config": config, "task": task, "data_root": root / "data", "cwd": cwd,
            "dir": root / "out" / "finetuning" / "t" / "run"}


# ----------------------------------------------------------------------------- test tiers (markers)

DDP_FILES = {"test_ddp.py", "test_simclr_ddp.py", "test_ssl_ddp.py"}
# what starts a child process (an entry point, the queue, a spawn) or runs a training entry point in-process:
# such a test is e2e, not unit
SPAWN_HINTS = ("subprocess", "sys.executable", "run_finetune", "run_queue", "start_queue", "Popen", "mp.spawn",
               "spawn(", "os.fork", "QM,", "run_analyze", "run_study", "run_entry_point",
               "finetune_main", "pretrain_main")  # in-process entry points that train: e2e too
TIERS = ("unit", "e2e", "ddp", "queue", "slurm", "slow")


def _test_functions(fn: Any) -> list[Any]:
    """``fn`` and the functions of tests/ (this file, test modules) it names: the helpers it calls."""
    import inspect

    out = [fn]
    module_globals = getattr(fn, "__globals__", {})
    for name in getattr(getattr(fn, "__code__", None), "co_names", ()):
        f = module_globals.get(name)
        if inspect.isfunction(f) and Path(inspect.getsourcefile(f) or "").parent == Path(__file__).parent:
            out.append(f)
    return out


def _spawns(item: pytest.Item) -> bool:
    """The test, a fixture it uses, or a tests/ helper either calls starts a child process."""
    import inspect

    fn = getattr(item, "function", None)
    if fn is None:
        return False
    if any(f in SPAWN_HINTS for f in getattr(item, "fixturenames", ())):
        return True
    funcs = _test_functions(fn)
    info = getattr(item, "_fixtureinfo", None)
    for defs in (info.name2fixturedefs.values() if info is not None else ()):
        funcs += _test_functions(defs[-1].func)
    for f in funcs:
        try:
            text = inspect.getsource(f)
        except (OSError, TypeError):
            continue
        if any(h in text for h in SPAWN_HINTS):
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test gets its tier: ddp, queue (+ slurm) by file, e2e when it starts a child process, else
    unit (in-process; ``make test-fast`` runs these). A marker written on a test wins."""
    for item in items:
        name = item.path.name
        own = {m.name for m in item.iter_markers()} & set(TIERS)
        if name in DDP_FILES:
            own.add("ddp")
        if name.startswith("test_queue"):
            own.add("queue")
        if name == "test_queue_slurm.py":
            own.add("slurm")
        if not own and _spawns(item):
            own.add("e2e")
        for tier in own or {"unit"}:
            item.add_marker(getattr(pytest.mark, tier))
