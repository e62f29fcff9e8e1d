"""The package structure holds: the layers of docs/ARCHITECTURE.md (imports only point down), no import
circles (module-level or inside functions), every module imports in isolation, entry points stay thin
and no module grows past 500 lines."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from conftest import HANG_GUARD_S

REPO = Path(__file__).resolve().parent.parent
UTILITY = REPO / "utility"


# Packages of utility/, lowest layer first (docs/ARCHITECTURE.md). A package imports its own modules and
# those of lower layers only; "base" is the single-file modules (errors, paths, entry, distributed, ...).
LAYERS: list[set[str]] = [{"base"}, {"config"}, {"data", "models", "metrics"}, {"training"},
                          {"tracking", "methods"}, {"runs"}, {"study", "analysis"}, {"console"}]
# The queue stands apart: it knows nothing of training (base only), and only these use it.
QUEUE_USERS = {"study", "console"}


def module_name(path: Path, root: Path = REPO) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules(root: Path = REPO) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted((root / "utility").rglob("*.py"))}


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


def graph(root: Path = REPO) -> dict[str, set[str]]:
    mods = all_modules(root)
    known = set(mods)
    return {n: imports_of(p, n, known) for n, p in mods.items()}


def package_of(module: str) -> str:
    """utility.data.loader -> data; utility.errors (a single-file module) -> base; utility.console -> console."""
    parts = module.split(".")
    if len(parts) > 1 and ((UTILITY / parts[1]).is_dir() or parts[1] == "console"):
        return parts[1]
    return "base"


def layer_violations(g: dict[str, set[str]]) -> list[str]:
    """Every import that points up, sideways within a layer, or into/out of the queue where it may not."""
    rank = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
    rank["queue"] = 0.5  # above base, beside everything else
    out = []
    for src, targets in sorted(g.items()):
        a = package_of(src)
        for dst in sorted(targets):
            b = package_of(dst)
            if a == b:
                continue
            if a not in rank or b not in rank:
                out.append(f"{src} -> {dst}: package not in LAYERS")
            elif b == "queue":
                if a not in QUEUE_USERS:
                    out.append(f"{src} -> {dst}: only {sorted(QUEUE_USERS)} may use the queue")
            elif a == "queue" and b != "base" or a != "queue" and rank[b] >= rank[a]:
                out.append(f"{src} -> {dst}: {a} may not import {b}")
    return out


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


def test_imports_follow_the_layers():
    found = layer_violations(graph())
    assert found == [], "imports against the layers of docs/ARCHITECTURE.md:\n" + "\n".join(found)


def test_layer_check_fails_on_a_breaking_import(tmp_path):
    """A copy of the package with one import that points up (data -> training) and one from the queue
    into training: exactly those are reported; the real tree's own imports stay clean."""
    import shutil

    shutil.copytree(UTILITY, tmp_path / "utility", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "utility" / "data" / "upward.py").write_text("from utility.training.engine import Trainer\n")
    (tmp_path / "utility" / "queue" / "upward.py").write_text("def f():\n    import utility.training.session\n")
    found = layer_violations(graph(tmp_path))
    assert found == ["utility.data.upward -> utility.training.engine: data may not import training",
                     "utility.queue.upward -> utility.training.session: queue may not import training"]
    g = {"utility.study.plan": {"utility.queue.jobsfile"}, "utility.runs.x": {"utility.queue.state"},
         "utility.data.a": {"utility.models.b"}, "utility.methods.m": {"utility.data.a", "utility.errors"}}
    assert layer_violations(g) == ["utility.data.a -> utility.models.b: data may not import models",
                                   "utility.runs.x -> utility.queue.state: only ['console', 'study'] may use the queue"]


def test_no_import_circles_in_utility():
    found = cycles(graph())
    assert found == [], "import circles: " + "; ".join(" <-> ".join(c) for c in found)


ISOLATED_IMPORTS = r"""
import importlib, os, sys, traceback
preload, ours = sys.argv[1].split(","), sys.argv[2:]
for name in preload:  # third-party and standard modules, imported once before forking
    try:
        importlib.import_module(name)
    except Exception:  # an optional extra that is not installed: the child will say if it matters
        pass
assert not [m for m in sys.modules if m == "utility" or m.startswith("utility.")]
failed = []
for name in ours:
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


def external_imports() -> set[str]:
    """Top-level names of every non-utility module that utility/ imports at module level."""
    out: set[str] = set()
    for path in all_modules().values():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                out |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                out.add(node.module.split(".")[0])
    return {n for n in out if n != "utility" and n != "__future__"}


def test_every_module_imports_in_isolation():
    """Each module imports on its own, none of ours loaded before it (no hidden order dependence).
    The libraries they use are imported once in the parent, so each forked child runs only our code."""
    names = sorted(all_modules())
    proc = subprocess.run([sys.executable, "-c", ISOLATED_IMPORTS, ",".join(sorted(external_imports())), *names],
                          cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FAILED:\n" in proc.stdout, proc.stdout + proc.stderr[-3000:]


def test_module_sizes():
    too_big = {n: len(p.read_text().splitlines()) for n, p in all_modules().items()}
    assert {n: k for n, k in too_big.items() if k > 500} == {}
    entry = {"pkgs/FTE/finetune.py", "pkgs/SimCLR/main.py", "QueueManager.py", "utility/runs/finetune.py",
             "utility/runs/pretrain.py"}
    lines = {e: len((REPO / e).read_text().splitlines()) for e in entry}
    assert {e: k for e, k in lines.items() if k >= 150} == {}
