"""Target readers: a function that says what the label of one image is.

Built in: ``folders`` (the class is the first folder below the split dir), ``csv`` (a CSV/TSV of
path + label(s), multi-label joined by ``|``), ``imagenet`` (train/<wnid>/ folders, val/test labels
from a solution CSV). A custom reader is one registered function::

    from utility.data.targets import register_target_reader

    @register_target_reader("my_reader")
    def my_reader(path, ctx):   # ctx.split_dir, ctx.data_dir, ctx.task -> class name/index or list
        ...

and the task YAML says ``layout: {reader: my_reader}`` (or ``reader: my_module:my_reader``, which
imports ``my_module`` of this repository first, or ``reader: my_reader.py:my_reader``, a file next to
the task file). Modules outside the project are refused: a task file must not run ``os:system``.
"""
from __future__ import annotations

import csv
import importlib
import importlib.util
from types import ModuleType
from functools import lru_cache
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

from utility.config.tasks import LayoutSpec, TaskSpec
from utility.data.labeltable import read_table
from utility.errors import UserError
from utility.paths import REPO_ROOT
from utility.registry import Registry

@dataclass(frozen=True)
class ReaderContext:
    """What a target reader may need besides the image path."""

    task: TaskSpec
    data_dir: Path      # the task's root folder (labels files live here)
    split_dir: Path     # the folder the image was found under (== data_dir for list/csv splits)


TargetReader = Callable[[Path, ReaderContext], Any]
_READERS: Registry[TargetReader] = Registry(
    "target reader", lambda name, known: f"unknown target reader '{name}'; registered: {', '.join(sorted(known))}")


def register_target_reader(name: str) -> Callable[[TargetReader], TargetReader]:
    return _READERS.register(name)


def get_target_reader(name: str, task_file: str | None = None) -> TargetReader:
    """The reader a task's ``layout.reader`` names: a registered name, ``module:function`` with a
    module of this repository, or ``path/to/file.py:function`` (relative to the task file). A task
    file can thus run code, but only code the user put in the project or named by its path: an
    installed or standard module (``os:system``) is refused before it is imported."""
    if name in _READERS:
        return _READERS[name]
    if ":" in name:
        module, _, attr = name.rpartition(":")
        mod = _import_reader_module(name, module, task_file)
        if attr in _READERS:
            return _READERS[attr]
        fn = getattr(mod, attr, None)
        if callable(fn):
            return fn
        raise UserError(f"target reader '{name}': {module} has no function '{attr}'")
    return _READERS.find(name)


def _in_project(origin: str | None) -> bool:
    if not origin or not Path(origin).is_absolute():  # 'frozen', 'built-in': the standard library
        return False
    try:
        rel = Path(origin).resolve().relative_to(REPO_ROOT)
    except ValueError:
        return False
    return not any(p == "site-packages" or p.startswith((".venv", "venv")) for p in rel.parts)


def _import_reader_module(name: str, module: str, task_file: str | None) -> ModuleType:
    allowed = ("name a registered reader, a module of this repository (utility.data.my_reader:fn) "
               "or a file (readers/my_reader.py:fn, relative to the task file)")
    if module.endswith(".py"):
        path = Path(module).expanduser()
        if not path.is_absolute() and task_file:
            path = Path(task_file).parent / path
        if not path.is_file():
            raise UserError(f"target reader '{name}': file {path} not found")
        spec = importlib.util.spec_from_file_location(f"_task_reader_{path.stem}", path)
    else:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError) as exc:
            raise UserError(f"target reader '{name}': cannot import module '{module}' ({exc})") from None
        if spec is None:
            raise UserError(f"target reader '{name}': cannot import module '{module}' (not found)")
        if not _in_project(spec.origin):
            raise UserError(f"target reader '{name}': module '{module}' is not part of this project "
                            f"({spec.origin or 'built in'}); {allowed}")
        try:
            return importlib.import_module(module)  # project code: imported once, as usual
        except Exception as exc:
            raise UserError(f"target reader '{name}': importing '{module}' failed: {type(exc).__name__}: {exc}") from None
    if spec is None or spec.loader is None:
        raise UserError(f"target reader '{name}': cannot import '{module}'")
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as exc:  # the user's module: its failure is theirs to fix
        raise UserError(f"target reader '{name}': importing '{module}' failed: {type(exc).__name__}: {exc}") from None
    return mod


def reader_code_file(task: TaskSpec) -> Path | None:
    """The Python file the task's reader would import and run, None for a built-in reader."""
    name = task.layout.reader
    if name in _READERS or ":" not in name:
        return None
    module = name.rpartition(":")[0]
    if module.endswith(".py"):
        path = Path(module).expanduser()
        if not path.is_absolute() and task.source_file:
            path = Path(task.source_file).parent / path
        return path.resolve()
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None  # nothing would be imported: get_target_reader refuses it later
    return Path(spec.origin).resolve() if spec is not None and spec.origin and Path(spec.origin).is_absolute() else None


def refuse_run_code(task: TaskSpec, source: Path, trusted: bool) -> None:
    """Reading someone's run (its config.yaml names the task) must not run code that came with it:
    a reader in a .py file, or a module outside this project's own packages, needs the user's
    explicit ``--trust-run-code``; the message names the file that would have been imported."""
    code = reader_code_file(task)
    if trusted or code is None:
        return
    own = (REPO_ROOT / "utility").resolve()
    if code.suffix == ".py" and code.is_relative_to(own) and not task.layout.reader.split(":")[0].endswith(".py"):
        return
    raise UserError(f"{source} names task {task.name} whose reader '{task.layout.reader}' would import and "
                    f"run {code}; refused: check that file, then pass --trust-run-code to allow it")


@register_target_reader("folders")
def folder_target(path: Path, ctx: ReaderContext) -> str:
    rel = path.relative_to(ctx.split_dir)
    if len(rel.parts) < 2:
        raise UserError(f"{path}: with the 'folders' layout every image must be inside a class folder "
                        f"of {ctx.split_dir}")
    return rel.parts[0]


def key_for(path: Path, layout: LayoutSpec, root: Path | None = None) -> str:
    if layout.match == "basename":
        return path.name
    if layout.match == "stem":
        return path.name.split(".")[0]
    if root is not None and path.is_absolute():
        path = path.relative_to(root)
    return path.as_posix()


def task_file(task: TaskSpec, data_dir: Path, name: str | None, key: str) -> Path:
    if name is None:
        raise UserError(f"task {task.name}: layout.{key} is required for reader '{task.layout.reader}'")
    return data_dir / name


def csv_row(path: Path, ctx: ReaderContext) -> str:
    """The raw label-column text of ``path``'s row in the task's labels file."""
    task = ctx.task
    table = read_table(task_file(task, ctx.data_dir, task.layout.labels_file, "labels_file"),
                       task.layout.model_dump_json())
    key = key_for(path, task.layout, ctx.data_dir)
    table.check_unique([key], [str(path)])
    pos = int(table.lookup([key])[0])
    if pos < 0:
        raise LookupError(f"{path.name} has no row in {task.layout.labels_file}")
    return table.labels[pos]


@register_target_reader("csv")
def csv_target(path: Path, ctx: ReaderContext) -> Any:
    task = ctx.task
    raw = csv_row(path, ctx)
    if task.type == "multilabel":
        return [s for s in raw.split(task.layout.label_separator) if s]
    return raw


@register_target_reader("imagenet")
def imagenet_target(path: Path, ctx: ReaderContext) -> str:
    parent = path.parent.name
    if parent.startswith("n") and parent[1:].isdigit():
        return parent
    task = ctx.task
    sol = _solution_table(task_file(task, ctx.data_dir, task.layout.solution_file, "solution_file"))
    stem = path.name.split(".")[0]
    if stem not in sol:
        raise LookupError(f"{path.name} has no row in {task.layout.solution_file}")
    return sol[stem]


@lru_cache(maxsize=4)
def _solution_table(path: Path) -> dict[str, str]:
    """LOC_val_solution.csv: ImageId,PredictionString ('n01751748 x y x y ...') -> first wnid."""
    if not path.is_file():
        raise UserError(f"ImageNet solution file not found: {path}")
    out: dict[str, str] = {}
    with path.open(newline="") as fh:
        for row in csv.reader(fh):
            if len(row) >= 2 and row[1].strip() and row[0] != "ImageId":
                out[row[0].strip()] = row[1].split()[0]
    return out


def read_synsets(path: Path) -> list[str]:
    """LOC_synset_mapping.txt: 'n01440764 tench, Tinca tinca' per line -> wnids in file order."""
    if not path.is_file():
        raise UserError(f"ImageNet class list not found: {path}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
