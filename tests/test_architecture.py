"""The package structure holds: no import circles (module-level or inside functions), every module
imports in isolation, entry points stay thin and no module grows past 500 lines."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
UTILITY = REPO / "utility"


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(UTILITY.rglob("*.py"))}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Every utility module ``path`` imports anywhere in its body (function-level imports too)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            # the longest known module a dotted name starts with (a.b.c -> a.b if c is an attribute)
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("utility"):
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = all_modules()
    known = set(mods)
    return {n: imports_of(p, n, known) for n, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in g:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_circle():
    """The checker itself: a two-module circle and a three-module circle are reported."""
    g = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert sorted(cycles(g)) == [["a", "b"], ["c", "d", "e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_relative_and_attribute_imports_resolve(tmp_path):
    known = {"utility.training.parallel", "utility.training", "utility.models", "utility.models.unet"}
    src = tmp_path / "x.py"
    src.write_text("from utility.training import parallel\nfrom utility.models.unet import UNet\n"
                   "def f():\n    import utility.models\n")
    assert imports_of(src, "utility.other", known) == {"utility.training", "utility.training.parallel",
                                                       "utility.models.unet", "utility.models"}


def test_no_import_circles_in_utility():
    found = cycles(graph())
    assert found == [], "import circles: " + "; ".join(" <-> ".join(c) for c in found)


ISOLATED_IMPORTS = r"""
import importlib, os, sys, traceback
import numpy, torch, torchvision, pydantic, yaml, sklearn.metrics  # third-party only, imported once
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:  # a child that has imported none of our modules
        try:
            importlib.import_module(name)
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        failed.append(name)
print("FAILED:" + ",".join(failed))
"""


def test_every_module_imports_in_isolation():
    """Each module imports on its own, none of ours loaded before it (no hidden order dependence)."""
    names = sorted(all_modules())
    proc = subprocess.run([sys.executable, "-c", ISOLATED_IMPORTS, *names], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FAILED:\n" in proc.stdout, proc.stdout + proc.stderr[-3000:]


def test_module_sizes():
    too_big = {n: len(p.read_text().splitlines()) for n, p in all_modules().items()}
    assert {n: k for n, k in too_big.items() if k > 500} == {}
    entry = {"pkgs/FTE/finetune.py", "pkgs/SimCLR/main.py", "QueueManager.py", "utility/runs/finetune.py",
             "utility/runs/pretrain.py"}
    lines = {e: len((REPO / e).read_text().splitlines()) for e in entry}
    assert {e: k for e, k in lines.items() if k >= 150} == {}
