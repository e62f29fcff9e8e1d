"""The adversarial suite's machinery: a workspace of user-owned inputs (tiny data, a task, a config,
weights) and an output root, one case = (input, expected exit code, message fragment), run in-process
through ``utility.entry.run_entry`` exactly as the entry scripts call it. Every case also proves that
nothing the user owns changed and that no file appeared outside the output root."""
from __future__ import annotations

import io
import os
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from conftest import make_folder_dataset, small_run_config, task_dict, write_yaml

BOMB = "".join(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}" if i else "x"] * 9) + "]\n" for i in range(9))


@dataclass
class Workspace:
    """``user``: what the user owns (must not change); ``out``: the only place outputs may appear."""

    root: Path
    user: Path = field(init=False)
    out: Path = field(init=False)

    def __post_init__(self) -> None:
        self.user, self.out = self.root / "user", self.root / "out"
        self.data = self.user / "data"
        make_folder_dataset(self.data / "tiny", ["bar_h", "bar_v"], 4)
        self.task = write_yaml(self.user / "tasks" / "tiny.yaml", task_dict())
        self.config = self.write_config()

    def cfg(self, **over: Any) -> dict[str, Any]:
        keys = small_run_config(name="adv/run", task=str(self.task), data_root=str(self.data),
                                output_root=str(self.out), batch_size=4)
        return {**keys, **over}

    def write_config(self, filename: str = "cfg.yaml", **over: Any) -> Path:
        return write_yaml(self.user / filename, self.cfg(**over))

    def file(self, name: str, content: str | bytes) -> Path:
        p = self.user / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return p

    def pretrain_config(self, **over: Any) -> Path:
        keys = {"name": "adv/pre", "dataset_base_dir": [str(self.data / "tiny" / "train")], "resnet": "resnet18",
                "batch_size": 4, "epochs": 1, "device": "cpu", "num_workers": 0, "image_size": 16,
                "output_root": str(self.out), "verbose": False, **over}
        return write_yaml(self.user / "pre.yaml", keys)


@dataclass
class Case:
    """One adversarial input: ``build(ws) -> argv`` writes what it needs under ws.user."""

    id: str
    build: Callable[[Workspace], list[str]]
    rc: int
    fragment: str
    check: Optional[Callable[[Workspace, str], None]] = None  # extra outcome assertions

    def __repr__(self) -> str:
        return self.id


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def outside(root: Path, out: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and out not in p.parents and not p.is_relative_to(root / "user")}


def run_main(main: Callable[[list[str]], Any], argv: list[str]) -> tuple[int, str]:
    """``run_entry(main, argv)`` in this process: (exit code, stdout + stderr)."""
    from utility.entry import CrashLog, run_entry

    CrashLog.path = None
    buf = io.StringIO()
    try:
        with redirect_stdout(buf), redirect_stderr(buf):
            try:
                rc = run_entry(main, argv)
            except SystemExit as exc:  # argparse's own refusals
                rc = exc.code if isinstance(exc.code, int) else 2
    finally:
        CrashLog.path = None
    return rc, buf.getvalue()


def check(case: Case, main: Callable[[list[str]], Any], root: Path) -> tuple[Workspace, str]:
    """Run ``case`` and assert: exit code, one short error line holding the fragment, no traceback,
    the user's files unchanged, nothing new outside the output root."""
    ws = Workspace(root)
    argv = case.build(ws)
    before, cwd = files(ws.user), os.getcwd()
    extra_before = outside(root, ws.out)
    os.chdir(root)
    try:
        rc, text = run_main(main, argv)
    finally:
        os.chdir(cwd)
    assert rc == case.rc, f"{case.id}: exit {rc}, expected {case.rc}\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    if case.rc == 2:
        errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
        assert errors and len(errors[0]) < 1200, text[-3000:]
        assert case.fragment in errors[0], f"{case.fragment!r} not in {errors[0]!r}"
    else:
        assert case.fragment in text, text[-3000:]
    assert files(ws.user) == before, f"{case.id}: user files changed"
    assert outside(root, ws.out) == extra_before, f"{case.id}: files outside the output root"
    if case.check is not None:
        case.check(ws, text)
    return ws, text


def yaml_text(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False)
