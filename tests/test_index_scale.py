"""Issue 16: the scandir listing equals the former rglob listing, seeded subsets equal the former
per-sample grouping, compact columns behave as the lists they replace, and the persistent index
cache is reused, invalidated by a changed folder or labels file, and rebuilt (with a warning) when
its file is damaged."""
from __future__ import annotations

import csv as csv_module
import json
import os
import pickle
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from utility.config.tasks import TaskSpec, load_task
from utility.data.compact import MaskTargets, PathArray, concat, take
from utility.data.index import Split, index_task
from utility.data.index_cache import IndexCache, cached_listing
from utility.data.listing import find_images
from utility.data.splits import kfold_indices, stratified_fraction
from utility.errors import UserError


# ----------------------------------------------------------------------------- the former code, as reference

def old_find_images(folder: Path, formats) -> list[Path]:
    fmts = {f.lower() for f in formats}
    double = {f for f in fmts if f.count(".") > 1}
    out = []
    for p in folder.rglob("*"):
        name = p.name.lower()
        if p.is_file() and (p.suffix.lower() in fmts or any(name.endswith(d) for d in double)):
            out.append(p)
    return sorted(out)


def old_groups(strata, rng):
    groups = defaultdict(list)
    for i, s in enumerate(strata):
        groups[s].append(i)
    return {k: rng.permutation(np.asarray(v)) for k, v in sorted(groups.items(), key=lambda kv: str(kv[0]))}


def old_stratified_fraction(strata, fraction, seed):
    n = len(strata)
    if n == 0:
        return []
    rng = np.random.default_rng(seed)
    groups = old_groups(strata, rng)
    total = max(1, int(round(fraction * n)))
    quotas = {k: fraction * len(v) for k, v in groups.items()}
    take_ = {k: int(np.floor(q)) for k, q in quotas.items()}
    rest = total - sum(take_.values())
    keys = list(groups)
    tie = rng.random(len(keys))
    order = sorted(range(len(keys)), key=lambda i: (-(quotas[keys[i]] - take_[keys[i]]), tie[i]))
    for i in order[:max(rest, 0)]:
        take_[keys[i]] += 1
    return sorted(int(j) for k, v in groups.items() for j in v[: take_[k]])


def old_kfold(strata, k, fold, seed):
    rng = np.random.default_rng(seed)
    assign = np.empty(len(strata), dtype=np.int64)
    offset = 0
    for members in old_groups(strata, rng).values():
        assign[members] = (np.arange(len(members)) + offset) % k
        offset += len(members)
    return np.flatnonzero(assign == fold).tolist(), np.flatnonzero(assign != fold).tolist()


def old_strata(targets):
    return [t if isinstance(t, (int, np.integer)) else "".join("1" if v else "0" for v in t) for t in targets]


# ----------------------------------------------------------------------------- listing

FORMATS = [".png", ".JPEG", ".nii.gz", ".npy"]


def make_tree(root: Path) -> None:
    names = ["a.png", "A.PNG", "b.Png", "c.jpeg", "d.JPG", "e.txt", ".png", "x.", "v.NII.GZ", "w.nii",
             "a-b.png", "a0.npy", "sub/a.png", "sub/deep/er/z.npy", "sub/deep/er/Z.NPY", "a/x.png",
             "a0/y.png", "sp ace/ü.png", "sub/.hidden.png", "locked/secret.png", "locked/inner/s.png"]
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(b"")
    (root / "dir.png").mkdir()                        # a folder named like an image
    (root / "outside").mkdir()
    (root / "outside" / "o.png").write_bytes(b"")
    os.symlink(root / "a.png", root / "link_to_file.png")
    os.symlink(root / "outside", root / "link_to_dir")          # not entered (as rglob)
    os.symlink(root / "missing.png", root / "broken.png")       # excluded
    os.symlink(root / "loop.png", root / "loop.png")            # ELOOP: excluded


def test_listing_equals_former_rglob_listing(tmp_path, monkeypatch):
    root = tmp_path / "tree"
    make_tree(root)
    assert [str(p) for p in find_images(root, FORMATS)] == [str(p) for p in old_find_images(root, FORMATS)]
    assert find_images(root, FORMATS) == old_find_images(root, FORMATS)
    assert find_images(root / "sub", [".npy"]) == old_find_images(root / "sub", [".npy"])
    # an unreadable folder is skipped by both (simulated: the suite may run as root)
    real = os.scandir
    blocked = str(root / "locked")

    def scandir(path="."):
        if str(path) == blocked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    new, old = find_images(root, FORMATS), old_find_images(root, FORMATS)
    assert new == old and not any("locked" in str(p) for p in new)


def test_listing_unreadable_folder_for_real(tmp_path):
    """chmod 000 on a folder; as root the comparison runs in a child that dropped to user nobody."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="listing-"))
    try:
        os.chmod(base, 0o755)
        make_tree(base)
        os.chmod(base / "locked", 0)
        if os.geteuid() != 0:
            assert find_images(base, FORMATS) == old_find_images(base, FORMATS)
            return
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: no pytest machinery, just compare and report
            try:
                os.setgid(65534)
                os.setuid(65534)
                new = [str(p) for p in find_images(base, FORMATS)]
                old = [str(p) for p in old_find_images(base, FORMATS)]
                os.write(w, json.dumps([new, old]).encode())
            finally:
                os._exit(0)
        os.close(w)
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
        os.waitpid(pid, 0)
        new, old = json.loads(data)
        assert new == old and not any("locked" in p for p in new) and len(new) > 5
    finally:
        os.chmod(base / "locked", 0o755)
        import shutil
        shutil.rmtree(base)


def test_nifti_slice_expansion_equals_former(tmp_path):
    import nibabel as nib

    from utility.data.io import nifti_slices

    (tmp_path / "v" / "s").mkdir(parents=True)
    for name, shape in (("a.nii.gz", (4, 5, 3)), ("s/b.nii", (2, 3, 6))):
        nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), str(tmp_path / "v" / name))
    (tmp_path / "v" / "c.npy").write_bytes(b"")
    old = []
    for f in old_find_images(tmp_path / "v", [".nii.gz", ".nii", ".npy"]):
        old.extend(nifti_slices(f, 2) if f.name.endswith((".nii", ".nii.gz")) else [f])
    new = find_images(tmp_path / "v", [".nii.gz", ".nii", ".npy"], slice_axis=2)
    assert [str(p) for p in new] == [str(p) for p in old] and len(new) == 3 + 6 + 1


# ----------------------------------------------------------------------------- seeded subsets

@pytest.mark.parametrize("seed", [0, 1, 42])
def test_subsets_and_folds_select_the_same_samples_as_before(seed):
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 13, size=997)
    hot = (rng.random((997, 5)) < 0.3).astype(np.uint8)
    multi = Split("m", [f"/x/{i}.png" for i in range(997)], hot)
    for strata_old, strata_new in ((classes.tolist(), classes),
                                   (old_strata(list(hot.astype(np.float32))), multi.strata())):
        for frac in (0.5, 0.1, 0.01, 0.001):
            assert stratified_fraction(strata_new, frac, seed) == old_stratified_fraction(strata_old, frac, seed)
        for k in (3, 5):
            for fold in range(k):
                va, tr = old_kfold(strata_old, k, fold, seed)
                assert kfold_indices(strata_new, k, fold, seed) == (tr, va)


def make_cx8(root: Path, n: int) -> dict[str, str]:
    labels = {}
    rng = np.random.default_rng(3)
    names = ["Atelectasis", "Effusion", "No Finding", "Mass", "Nodule"]
    for i in range(n):
        name = f"{i:08d}_000.png"
        split = "test" if i % 5 == 0 else f"train_val/images_{i % 3:03d}"
        (root / "CX8" / split).mkdir(parents=True, exist_ok=True)
        (root / "CX8" / split / name).write_bytes(b"")
        labels[name] = "|".join(sorted(set(rng.choice(names, size=int(rng.integers(1, 3))))))
    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID"] + [f"{k},{v},0,{k[:8]}" for k, v in labels.items()]
    (root / "CX8" / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    return labels


def test_size_variant_and_folds_same_samples_as_former_pipeline(tmp_path):
    labels = make_cx8(tmp_path, 300)
    classes = load_task("CX8").classes
    # the former pipeline: rglob listing, one float vector per file, per-sample strata
    files = old_find_images(tmp_path / "CX8" / "train_val", [".png"])
    vecs = []
    for f in files:
        v = np.zeros(len(classes), np.float32)
        v[[classes.index(lab) for lab in labels[f.name].split("|")]] = 1
        vecs.append(v)
    val = old_stratified_fraction(old_strata(vecs), 0.1, 5)
    train = [i for i in range(len(files)) if i not in set(val)]
    small = old_stratified_fraction(old_strata([vecs[i] for i in train]), 0.1, 5)
    idx = index_task(load_task("CX8-S"), tmp_path, seed=5)
    assert [str(p) for p in idx.splits["val"].paths] == [str(files[i]) for i in val]
    assert [str(p) for p in idx.splits["train"].paths] == [str(files[train[i]]) for i in small]
    pool = [train[i] for i in range(len(train))] + val
    va_old, tr_old = old_kfold(old_strata([vecs[i] for i in pool]), 4, 2, 5)
    fold = index_task(load_task("CX8"), tmp_path, seed=5, folds=4, fold=2)
    assert [str(p) for p in fold.splits["val"].paths] == [str(files[pool[i]]) for i in va_old]
    assert [str(p) for p in fold.splits["train"].paths] == [str(files[pool[i]]) for i in tr_old]


def test_duplicate_csv_row_names_the_file(tmp_path):
    make_cx8(tmp_path, 20)
    csv_path = tmp_path / "CX8" / "Data_Entry_2017.csv"
    csv_path.write_text(csv_path.read_text() + "00000007_000.png,Mass,1\n")
    with pytest.raises(UserError, match=r"00000007_000.png.*2 rows for '00000007_000.png'"):
        index_task(load_task("CX8"), tmp_path, seed=0)


# ----------------------------------------------------------------------------- compact columns

def test_compact_columns_behave_like_lists_and_stay_small(tmp_path):
    strs = [f"n{c:08d}/n{c:08d}_{i}.JPEG" for c in range(20) for i in range(50)]
    pa = PathArray.from_strings(strs, "/data/imagenet-1k/train")
    paths = [Path("/data/imagenet-1k/train") / s for s in strs]
    assert list(pa) == paths and pa[7] == paths[7] and pa[-1] == paths[-1] and len(pa) == 1000
    idx = [5, 999, 0, 5]
    assert list(take(pa, idx)) == [paths[i] for i in idx]
    other = PathArray.from_strings(["x/y.png"], "/elsewhere")
    assert list(concat([pa, other])) == paths + [Path("/elsewhere/x/y.png")]
    assert pickle.loads(pickle.dumps(pa)) == pa
    masks = MaskTargets.from_tuples([("m1", "m2"), ("m3",), ()])
    assert list(take(masks, [2, 0])) == [(), ("m1", "m2")] and masks[1] == ("m3",)
    split = Split("s", pa, np.arange(1000) % 20)
    path_bytes = sum(len(s.encode()) for s in strs)
    assert split.nbytes - path_bytes <= 100 * len(split)
    assert split.subset([3, 1]).paths == [paths[3], paths[1]]


# ----------------------------------------------------------------------------- the persistent cache

def folder_task() -> TaskSpec:
    return TaskSpec.model_validate({"name": "toy", "root": "toy", "data_format": [".png"],
                                    "splits": {"train": {"dir": "train"}, "val": {"from": "train", "fraction": 0.2},
                                               "test": {"dir": "test"}}})


def make_toy(root: Path) -> None:
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (root / "toy" / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(6):
                (root / "toy" / split / c / f"{i}.png").write_bytes(b"")


def snapshot(idx) -> dict:
    return {k: ([str(p) for p in s.paths], np.asarray(s.targets).tolist()) for k, s in idx.splits.items()}


def test_cache_reused_invalidated_and_rebuilt_when_corrupt(tmp_path, capsys):
    make_toy(tmp_path)
    cache = IndexCache(tmp_path / "cache")
    cold = index_task(folder_task(), tmp_path, seed=0, cache=cache)
    assert cold.how.startswith("built (no cache file)")
    warm = index_task(folder_task(), tmp_path, seed=0, cache=cache)
    assert warm.how.startswith("from cache") and snapshot(warm) == snapshot(cold)
    assert snapshot(index_task(folder_task(), tmp_path, seed=0)) == snapshot(cold)  # same as without cache
    # a new image in a class folder: that folder's mtime changed -> listed again, the image is there
    (tmp_path / "toy" / "test" / "dog" / "new.png").write_bytes(b"")
    again = index_task(folder_task(), tmp_path, seed=0, cache=cache)
    assert "changed" in again.how and any(p.name == "new.png" for p in again.splits["test"].paths)
    # a removed image
    (tmp_path / "toy" / "train" / "cat" / "0.png").unlink()
    gone = index_task(folder_task(), tmp_path, seed=0, cache=cache)
    assert "changed" in gone.how and len(gone.splits["train"]) + len(gone.splits["val"]) == 11
    # damaged cache files are never trusted: rebuilt with a warning, same result
    (cache_file,) = list((tmp_path / "cache").glob("task-*.npz"))
    umask = os.umask(0)
    os.umask(umask)
    assert cache_file.stat().st_mode & 0o777 == 0o666 & ~umask  # a plain file others may read (shared cache)
    good = snapshot(index_task(folder_task(), tmp_path, seed=0, cache=cache))
    raw = bytearray(cache_file.read_bytes())
    for damage in (lambda b: b[: len(b) // 2], lambda b: b[:200] + bytes([b[200] ^ 0xFF]) + b[201:], lambda b: b"junk"):
        cache_file.write_bytes(bytes(damage(raw)))
        capsys.readouterr()
        rebuilt = index_task(folder_task(), tmp_path, seed=0, cache=cache)
        assert "corrupt" in rebuilt.how and snapshot(rebuilt) == good
        assert "warning: index cache" in capsys.readouterr().err
    # a payload byte flipped where the zip format does not look (stored arrays): the digest catches it
    with np.load(cache_file) as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays["test.blob"][0] ^= 1
    np.savez(cache_file, **arrays)
    assert "corrupt" in index_task(folder_task(), tmp_path, seed=0, cache=cache).how
    # reindex: true lists anew even when nothing changed
    assert index_task(folder_task(), tmp_path, seed=0, cache=IndexCache(tmp_path / "cache", reindex=True)
                      ).how.startswith("built (reindex: true)")


def test_cache_sees_an_edited_labels_csv_and_caches_pretraining_listings(tmp_path):
    make_cx8(tmp_path, 30)
    cache = IndexCache(tmp_path / "cache")
    index_task(load_task("CX8"), tmp_path, seed=0, cache=cache)
    csv_path = tmp_path / "CX8" / "Data_Entry_2017.csv"
    csv_path.write_text(csv_path.read_text().replace("00000003_000.png,", "00000003_000.png,Flu|"))
    with pytest.raises(UserError, match="00000003_000.png.*'Flu'"):
        index_task(load_task("CX8"), tmp_path, seed=0, cache=cache)
    folder = tmp_path / "CX8" / "train_val"
    first = cached_listing(folder, [".png"], None, cache)
    assert cache.last.startswith("built") and first == find_images(folder, [".png"])
    assert cached_listing(folder, [".png"], None, cache) == first and cache.last.startswith("from cache")
    (folder / "images_001" / "extra.png").write_bytes(b"")
    assert len(cached_listing(folder, [".png"], None, cache)) == len(first) + 1


# ----------------------------------------------------------------------------- start-up lines, end to end

@pytest.mark.e2e  # trains in-process
def test_finetune_startup_lines_log_and_cached_index(tiny_setup):
    """A run (in-process through run_entry) prints and logs where start-up time went and writes the index
    cache that the next run on the same data reads; tf_device auto without CUDA runs the loader-worker path."""
    from conftest import run_inproc
    from utility.runs.finetune import main

    s = tiny_setup
    r = run_inproc(main, ["-c", s["config"], "--name", "t/a", "--verbose", "true", "--data_root", s["data_root"],
                      "--output_root", s["out_root"]], s["cwd"])
    assert r.returncode == 0, r.stderr
    assert "start-up: index" in r.stdout and "built (no cache file)" in r.stdout
    assert "start-up: first batch" in r.stdout
    assert "per sample in the loader workers (albumentations); tf_device auto -> cpu" in r.stdout
    import csv as _csv
    import yaml
    run_dir = s["out_root"] / "finetuning" / "t" / "a"
    rows = list(_csv.DictReader((run_dir / "startup.log").open()))
    assert [r["phase"] for r in rows] == ["index", "cache planning", "splits", "augmentation", "first batch"]
    assert "train 12 samples / 12 subjects" in rows[2]["note"] and "val 4 samples / 4 subjects" in rows[2]["note"]
    assert all(float(r["seconds"]) >= 0 for r in rows if r["seconds"])
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["tf_device"] == "cpu"
    from utility.config.tasks import load_task as _load
    again = index_task(_load(str(s["task"])), s["data_root"], seed=0, cache=IndexCache(s["out_root"] / "index_cache"))
    assert again.how.startswith("from cache")


def old_read_label_table(path: Path, layout) -> dict[str, str]:
    """The former csv-module reader (the csv-module label reader before issue 16)."""
    delim = layout.delimiter or ("\t" if path.suffix.lower() in (".tsv", ".tab") else ",")
    with path.open(newline="") as fh:
        rows = list(csv_module.reader(fh, delimiter=delim))
    header = rows[0]
    has_header = layout.header if layout.header is not None else (
        isinstance(layout.path_column, str) or isinstance(layout.label_column, str)
        or not any(Path(h).suffix for h in header[:1]))
    pc = layout.path_column if isinstance(layout.path_column, int) else header.index(layout.path_column)
    lc = layout.label_column if isinstance(layout.label_column, int) else header.index(layout.label_column)
    table = {}
    for row in rows[1:] if has_header else rows:
        if len(row) <= max(pc, lc):
            continue
        p = Path(row[pc])
        key = p.name if layout.match == "basename" else (p.name.split(".")[0] if layout.match == "stem"
                                                        else p.as_posix())
        table[key] = row[lc].strip()
    return table


@pytest.mark.parametrize("text, layout", [
    ("Image Index,Finding Labels,x\na.png, Mass|Nodule ,1\nsub/b.png,No Finding,2\n\nc.png\n./d.png,Edema,3\n",
     {"match": "basename"}),
    ("a.png,cat\nx//b.png,dog\n\"q,uoted.png\",\"dog\"\n", {"match": "relpath"}),
    ("file\tlabel\textra\nsub/a.b.png\tcat\n/abs/c.png\tdog\tmore\tfields\n", {"match": "stem", "delimiter": "\t"}),
    ("id,file,label\n1,a.png,cat\n2,b.png\n3,c.png,dog\n", {"path_column": "file", "label_column": "label"}),
])
def test_label_table_reads_as_the_former_reader(tmp_path, text, layout):
    from utility.config.tasks import LayoutSpec
    from utility.data.labeltable import read_table

    spec = LayoutSpec.model_validate({"reader": "csv", "labels_file": "l.csv", **layout})
    (tmp_path / "l.csv").write_text(text)
    assert read_table(tmp_path / "l.csv", spec.model_dump_json()).as_dict() == old_read_label_table(tmp_path / "l.csv", spec)


def test_tf_device_auto_resolution(tmp_path, monkeypatch):
    import torch

    from utility.runs.startup import resolve_tf_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_tf_device("auto", "auto") == "cpu" and resolve_tf_device("gpu", "auto") == "gpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_tf_device("auto", "auto") == "gpu" and resolve_tf_device("auto", "cpu") == "cpu"
    assert resolve_tf_device("cpu", "cuda") == "cpu"
    (tmp_path / "config.yaml").write_text("name: x\ntf_device: cpu\n")  # a run being resumed keeps its path
    assert resolve_tf_device("auto", "auto", tmp_path) == "cpu"
    assert resolve_tf_device("gpu", "auto", tmp_path) == "gpu"


@pytest.mark.parametrize("formats", [[".png"], [".PNG", ".nii.gz", "npy", "."], [".tar.gz", ".gz"]])
def test_extension_rule_equals_pathlib_suffix_rule(formats):
    from utility.data.listing import _Walk

    names = ["a.png", "A.PNG", ".png", "..png", "x.", "a.nii.gz", ".nii.gz", "b.NII.GZ", "c.npy", "npy", "c.gz",
             "d.tar.gz", "e.TAR.GZ", "f.png.txt", "ü.Png", "k.\u212a", "plain", "."]
    fmts = {f.lower() for f in formats}
    double = {f for f in fmts if f.count(".") > 1}
    old = [n for n in names if Path(n).suffix.lower() in fmts or any(n.lower().endswith(d) for d in double)]
    w = _Walk(formats, None)
    assert w.matching(names) == old == [n for n in names if w.wanted(n)]
