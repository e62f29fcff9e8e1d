"""Task presets, size variants, and indexing of the predecessor's on-disk layouts (generated data)."""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import make_folder_dataset, task_dict, write_class_image, write_yaml
import utility.config.tasks as tasks_mod
from utility.data.index import index_task
from utility.data.splits import kfold_indices, stratified_fraction
from utility.data.targets import register_target_reader
from utility.errors import UserError
from utility.config.tasks import TaskSpec, load_task

CX8_CLASSES = ["Cardiomegaly", "Emphysema", "Effusion", "No Finding", "Hernia", "Infiltration", "Mass",
               "Nodule", "Atelectasis", "Pneumothorax", "Pleural_Thickening", "Pneumonia", "Fibrosis",
               "Edema", "Consolidation"]


def names(split) -> list[str]:
    return [p.name for p in split.paths]


# ----------------------------------------------------------------------------- presets and variants

@pytest.mark.parametrize("name, n_classes, kind, stride", [
    ("digits", None, "multiclass", 1), ("CX8", 15, "multilabel", 1), ("ImageNet-1k", None, "multiclass", 1),
    ("ImageNet-100", None, "multiclass", 10), ("ImageNet-10", None, "multiclass", 100)])
def test_presets_load(name, n_classes, kind, stride):
    t = load_task(name)
    assert t.name == name and t.type == kind and t.train_fraction is None
    assert t.layout.class_stride == stride
    assert {"train", "val", "test"} <= set(t.splits)
    if n_classes:
        assert t.classes == CX8_CLASSES and t.loss == "bce"
    if name.startswith("ImageNet"):
        assert t.root == "imagenet-1k" and t.layout.reader == "imagenet"  # variants reuse the folders


@pytest.mark.parametrize("name, base, fraction", [
    ("CX8-S", "CX8", 0.1), ("CX8-M", "CX8", 0.5), ("CX8-XS", "CX8", 0.01), ("CX8-XXS", "CX8", 0.001),
    ("ImageNet-1kXS", "ImageNet-1k", 0.01), ("ImageNet-10S", "ImageNet-10", 0.1),
    ("ImageNet-100M", "ImageNet-100", 0.5), ("digits-S", "digits", 0.1)])
def test_size_variants_resolve(name, base, fraction):
    t = load_task(name)
    b = load_task(base)
    assert t.train_fraction == fraction
    assert t.name == name
    assert t.root == b.root and t.layout == b.layout and t.classes == b.classes and t.splits == b.splits


@pytest.fixture
def tasks_dir(tmp_path, monkeypatch):
    """A private task-preset folder (copies of the real presets + test tasks)."""
    d = tmp_path / "task_presets"
    shutil.copytree(tasks_mod.TASKS_DIR, d)
    monkeypatch.setattr(tasks_mod, "TASKS_DIR", d)
    return d


def test_exact_name_ending_in_size_letter_is_not_mangled(tasks_dir):
    write_yaml(tasks_dir / "BraTS.yaml", task_dict(name="BraTS", root="BraTS"))
    t = load_task("BraTS")
    assert t.name == "BraTS" and t.root == "BraTS" and t.train_fraction is None
    s = load_task("BraTS-S")
    assert s.root == "BraTS" and s.train_fraction == 0.1
    xs = load_task("BraTSXS")
    assert xs.root == "BraTS" and xs.train_fraction == 0.01
    m = load_task("BraTS-M")
    assert m.train_fraction == 0.5


def test_exact_name_wins_over_variant_of_another_task(tasks_dir):
    # both "Toy" and "ToyS" exist: "ToyS" is its own task, not Toy at 10 %
    write_yaml(tasks_dir / "Toy.yaml", task_dict(name="Toy", root="toy"))
    write_yaml(tasks_dir / "ToyS.yaml", task_dict(name="ToyS", root="toy_small"))
    t = load_task("ToyS")
    assert t.root == "toy_small" and t.train_fraction is None
    assert load_task("Toy-S").train_fraction == 0.1


def test_task_yaml_path_ending_in_s_is_not_a_variant(tmp_path):
    p = write_yaml(tmp_path / "MyTaskS.yaml", task_dict(name="MyTaskS", root="mine"))
    t = load_task(str(p))
    assert t.name == "MyTaskS" and t.train_fraction is None and t.source_file == str(p.resolve())


def test_unknown_task_suggests_closest():
    with pytest.raises(UserError) as info:
        load_task("CX9")
    msg = str(info.value)
    assert "'CX9'" in msg and "did you mean 'CX8'" in msg and "digits" in msg
    with pytest.raises(UserError, match="did you mean 'ImageNet-1k'"):
        load_task("Imagenet-1k")


def test_invalid_task_yaml_names_file_and_key(tmp_path):
    bad = task_dict(name="bad")
    bad["splits"] = {"train": {"dir": "train"}, "test": {"dir": "test"}}
    p = write_yaml(tmp_path / "bad.yaml", bad)
    with pytest.raises(UserError) as info:
        load_task(str(p))
    assert "bad.yaml" in str(info.value) and "val" in str(info.value)


# ----------------------------------------------------------------------------- folder layout

def folder_task(**overrides) -> TaskSpec:
    return TaskSpec.model_validate(task_dict(**overrides))


def test_folder_layout_classes_sorted_and_targets(tmp_path):
    files = make_folder_dataset(tmp_path / "tiny", ["zebra", "apple", "mango"], 4, size=8)
    idx = index_task(folder_task(), tmp_path, seed=0)
    assert idx.classes == ["apple", "mango", "zebra"]
    for split in ("train", "val"):
        for p, t in zip(idx.splits[split].paths, idx.splits[split].targets):
            assert idx.classes[t] == p.parent.name
    assert sorted(idx.splits["test"].paths) == files["test"]
    assert [idx.classes[t] for t in idx.splits["test"].targets] == [p.parent.name for p in idx.splits["test"].paths]


def test_carve_out_val_exact_disjoint_stratified(tmp_path):
    counts = {"a": 40, "b": 12, "c": 8}
    files = make_folder_dataset(tmp_path / "tiny", list(counts), counts, splits=("train", "test"), size=8)
    idx = index_task(folder_task(), tmp_path, seed=3)
    train, val = idx.splits["train"], idx.splits["val"]
    n = sum(counts.values())
    assert len(val) == round(0.25 * n) == 15
    assert len(train) == n - 15
    assert not set(train.paths) & set(val.paths)
    assert sorted(train.paths + val.paths) == files["train"]
    per_class = Counter(idx.classes[t] for t in val.targets)
    assert per_class == {"a": 10, "b": 3, "c": 2}  # 25 % of every class
    # the carve-out is seeded: same seed same val set, another seed another one
    assert index_task(folder_task(), tmp_path, seed=3).splits["val"].paths == val.paths
    assert index_task(folder_task(), tmp_path, seed=4).splits["val"].paths != val.paths


def test_missing_data_folder_and_empty_split(tmp_path):
    with pytest.raises(UserError, match="data folder not found: .*nowhere.*tiny"):
        index_task(folder_task(), tmp_path / "nowhere", seed=0)
    make_folder_dataset(tmp_path / "tiny", ["a", "b"], 3, splits=("train",), size=8)
    (tmp_path / "tiny" / "test").mkdir()
    with pytest.raises(UserError, match=r"split 'test' is empty \(no \.png files"):
        index_task(folder_task(), tmp_path, seed=0)


def test_data_format_override_selects_files(tmp_path):
    make_folder_dataset(tmp_path / "tiny", ["a", "b"], 3, size=8)
    make_folder_dataset(tmp_path / "tiny", ["a", "b"], 2, size=8, ext=".bmp")
    assert len(index_task(folder_task(), tmp_path, seed=0).splits["test"]) == 6
    assert len(index_task(folder_task(), tmp_path, seed=0, formats=[".bmp"]).splits["test"]) == 4


# ----------------------------------------------------------------------------- CSV layout (CX8)

def make_cx8(root: Path, n_train_val: int, n_test: int = 6) -> dict[str, str]:
    """CX8/train_val/sub/*.png, CX8/test/*.png and Data_Entry_2017.csv; returns {file: labels}."""
    cx = root / "CX8"
    labels: dict[str, str] = {}
    combos = ["No Finding", "Cardiomegaly|Effusion", "Mass", "Atelectasis|Effusion|Nodule", "Hernia"]
    for i in range(n_train_val):
        name = f"{i:08d}_000.png"
        write_class_image(cx / "train_val" / f"sub{i % 2}" / name, i % 2, size=8)
        labels[name] = combos[i % len(combos)]
    for i in range(n_test):
        name = f"{90000000 + i:08d}_000.png"
        write_class_image(cx / "test" / name, 0, size=8)
        labels[name] = combos[i % len(combos)]
    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age"]
    rows += [f"{k},{v},0,{j},50" for j, (k, v) in enumerate(labels.items())]
    (cx / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    return labels


def test_cx8_multilabel_multi_hot(tmp_path):
    labels = make_cx8(tmp_path, 20)
    idx = index_task(load_task("CX8"), tmp_path, seed=0)
    assert idx.classes == CX8_CLASSES
    assert len(idx.splits["val"]) == 2 and len(idx.splits["train"]) == 18 and len(idx.splits["test"]) == 6
    vec = {}
    for s in idx.splits.values():
        for p, t in zip(s.paths, s.targets):
            vec[p.name] = t
    assert len(vec) == 26
    expect = np.zeros(15, dtype=np.float32)
    expect[[CX8_CLASSES.index("Atelectasis"), CX8_CLASSES.index("Effusion"), CX8_CLASSES.index("Nodule")]] = 1
    assert labels["00000003_000.png"] == "Atelectasis|Effusion|Nodule"
    np.testing.assert_array_equal(vec["00000003_000.png"], expect)
    one = np.zeros(15, dtype=np.float32)
    one[3] = 1  # No Finding
    np.testing.assert_array_equal(vec["00000000_000.png"], one)
    np.testing.assert_array_equal(vec["90000001_000.png"],
                                  np.eye(15, dtype=np.float32)[0] + np.eye(15, dtype=np.float32)[2])
    for name, t in vec.items():
        assert sorted(CX8_CLASSES[i] for i in np.flatnonzero(t)) == sorted(labels[name].split("|"))


def test_cx8_unknown_label_names_file_and_label(tmp_path):
    make_cx8(tmp_path, 6)
    csv_path = tmp_path / "CX8" / "Data_Entry_2017.csv"
    csv_path.write_text(csv_path.read_text().replace("00000002_000.png,Mass", "00000002_000.png,Mass|Flu"))
    with pytest.raises(UserError) as info:
        index_task(load_task("CX8"), tmp_path, seed=0)
    assert "00000002_000.png" in str(info.value) and "'Flu'" in str(info.value)


def test_cx8_image_without_row_names_file(tmp_path):
    make_cx8(tmp_path, 6)
    write_class_image(tmp_path / "CX8" / "test" / "orphan.png", 0, size=8)
    with pytest.raises(UserError, match="orphan.png has no row in Data_Entry_2017.csv"):
        index_task(load_task("CX8"), tmp_path, seed=0)


def test_size_variant_reduces_train_and_is_seeded(tmp_path):
    make_cx8(tmp_path, 100)
    full = index_task(load_task("CX8"), tmp_path, seed=1)
    n = len(full.splits["train"])
    assert n == 90 and len(full.splits["val"]) == 10
    small = index_task(load_task("CX8-S"), tmp_path, seed=1)
    assert len(small.splits["train"]) == round(0.1 * n) == 9
    assert set(small.splits["train"].paths) < set(full.splits["train"].paths)
    assert small.splits["val"].paths == full.splits["val"].paths  # val and test keep their size
    assert small.splits["test"].paths == full.splits["test"].paths
    medium = index_task(load_task("CX8-M"), tmp_path, seed=1)
    assert len(medium.splits["train"]) == 45
    again = index_task(load_task("CX8-S"), tmp_path, seed=1)
    assert again.splits["train"].paths == small.splits["train"].paths
    other = index_task(load_task("CX8-S"), tmp_path, seed=2)
    assert len(other.splits["train"]) == 9
    assert other.splits["train"].paths != small.splits["train"].paths
    # train_fraction from the run config wins over the variant's
    cfg_frac = index_task(load_task("CX8-S"), tmp_path, seed=1, train_fraction=0.5)
    assert len(cfg_frac.splits["train"]) == 45


# ----------------------------------------------------------------------------- ImageNet layout

def make_imagenet(root: Path, n_wnids: int = 20, per_class: int = 2) -> list[str]:
    d = root / "imagenet-1k"
    wnids = [f"n{1440764 + 1000 * i:08d}" for i in range(n_wnids)]
    (d).mkdir(parents=True)
    (d / "LOC_synset_mapping.txt").write_text("".join(f"{w} class number {i}, thing\n" for i, w in enumerate(wnids)))
    for c, w in enumerate(wnids):
        for j in range(per_class):
            write_class_image(d / "train" / w / f"{w}_{j}.JPEG", c % 4, size=8, rgb=True)
    rows = ["ImageId,PredictionString"]
    k = 1
    for split in ("our_val", "our_test"):
        for c, w in enumerate(wnids):
            img_id = f"ILSVRC2012_val_{k:08d}"
            write_class_image(d / split / f"{img_id}.JPEG", c % 4, size=8, rgb=True)
            other = wnids[(c + 1) % n_wnids]
            rows.append(f"{img_id},{w} 12 34 56 78 {other} 1 2 3 4")  # the first box's wnid is the label
            k += 1
    (d / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return wnids


def test_imagenet_layout_full(tmp_path):
    wnids = make_imagenet(tmp_path)
    idx = index_task(load_task("ImageNet-1k"), tmp_path, seed=0)
    assert idx.classes == wnids
    assert len(idx.splits["train"]) == 40 and len(idx.splits["val"]) == 20 and len(idx.splits["test"]) == 20
    for p, t in zip(idx.splits["train"].paths, idx.splits["train"].targets):
        assert wnids[t] == p.parent.name
    val = dict(zip(names(idx.splits["val"]), idx.splits["val"].targets))
    assert val["ILSVRC2012_val_00000001.JPEG"] == 0
    assert val["ILSVRC2012_val_00000007.JPEG"] == 6
    test = dict(zip(names(idx.splits["test"]), idx.splits["test"].targets))
    assert test["ILSVRC2012_val_00000021.JPEG"] == 0 and test["ILSVRC2012_val_00000040.JPEG"] == 19


def test_imagenet_class_stride_keeps_every_nth_class(tmp_path):
    wnids = make_imagenet(tmp_path)
    idx = index_task(load_task("ImageNet-100"), tmp_path, seed=0)  # stride 10 of 20 -> 2 classes
    assert idx.classes == [wnids[0], wnids[10]]
    assert idx.num_classes == 2
    train = idx.splits["train"]
    assert len(train) == 4
    assert sorted({p.parent.name for p in train.paths}) == [wnids[0], wnids[10]]
    assert all(idx.classes[t] == p.parent.name for p, t in zip(train.paths, train.targets))
    assert dict(zip(names(idx.splits["val"]), idx.splits["val"].targets)) == {
        "ILSVRC2012_val_00000001.JPEG": 0, "ILSVRC2012_val_00000011.JPEG": 1}
    assert dict(zip(names(idx.splits["test"]), idx.splits["test"].targets)) == {
        "ILSVRC2012_val_00000021.JPEG": 0, "ILSVRC2012_val_00000031.JPEG": 1}


def test_imagenet_size_variant_of_subset(tmp_path):
    make_imagenet(tmp_path, per_class=10)
    idx = index_task(load_task("ImageNet-10S"), tmp_path, seed=0)  # stride 100 of 20 -> 1 class, 10 %
    assert idx.num_classes == 1
    assert len(idx.splits["train"]) == 1


# ----------------------------------------------------------------------------- k-fold

def test_kfold_partitions_train_plus_val(tmp_path):
    counts = {"a": 14, "b": 9, "c": 7}
    make_folder_dataset(tmp_path / "tiny", list(counts), counts, size=8)
    base = index_task(folder_task(), tmp_path, seed=5)
    pool = set(base.splits["train"].paths) | set(base.splits["val"].paths)
    assert len(pool) == 30
    vals = []
    for fold in range(3):
        idx = index_task(folder_task(), tmp_path, seed=5, folds=3, fold=fold)
        tr, va = set(idx.splits["train"].paths), set(idx.splits["val"].paths)
        assert not tr & va
        assert tr | va == pool
        assert len(va) == 10
        assert idx.splits["test"].paths == base.splits["test"].paths
        # stratified: each class's share of val within one sample of its share of the pool
        per_class = Counter(p.parent.name for p in va)
        for c, n in counts.items():
            assert abs(per_class[c] - n / 3) < 1 + 1e-9
        vals.append(va)
    assert not (vals[0] & vals[1]) and not (vals[0] & vals[2]) and not (vals[1] & vals[2])
    assert vals[0] | vals[1] | vals[2] == pool


def test_kfold_with_size_variant_reduces_only_train(tmp_path):
    make_folder_dataset(tmp_path / "tiny", ["a", "b"], 20, size=8)
    idx = index_task(folder_task(), tmp_path, seed=0, folds=4, fold=1, train_fraction=0.5)
    assert len(idx.splits["val"]) == 10 and len(idx.splits["train"]) == 15


# ----------------------------------------------------------------------------- split functions

@pytest.mark.parametrize("fraction", [0.001, 0.1, 0.33, 0.5, 0.9])
def test_stratified_fraction_properties(fraction):
    strata = ["a"] * 50 + ["b"] * 30 + ["c"] * 17 + ["d"] * 3
    take = stratified_fraction(strata, fraction, seed=7)
    assert take == sorted(set(take))
    assert len(take) == max(1, round(fraction * 100))
    assert all(0 <= i < 100 for i in take)
    got = Counter(strata[i] for i in take)
    for s, n in Counter(strata).items():
        assert abs(got[s] - fraction * n) < 1 + 1e-9  # proportional (largest remainder)
    assert stratified_fraction(strata, fraction, seed=7) == take


def test_stratified_fraction_seed_and_edge_cases():
    strata = list(range(5)) * 20
    assert stratified_fraction(strata, 0.2, 1) != stratified_fraction(strata, 0.2, 2)
    assert stratified_fraction([], 0.5, 0) == []
    assert stratified_fraction(["x"] * 3, 0.01, 0) in ([0], [1], [2])  # at least one sample


@pytest.mark.parametrize("k", [2, 3, 5])
def test_kfold_indices_properties(k):
    strata = ["a"] * 23 + ["b"] * 11 + ["c"] * 4
    n = len(strata)
    seen = []
    for fold in range(k):
        tr, va = kfold_indices(strata, k, fold, seed=11)
        assert sorted(tr + va) == list(range(n))
        assert not set(tr) & set(va)
        assert abs(len(va) - n / k) < 1 + 1e-9  # balanced fold sizes
        seen.extend(va)
        assert kfold_indices(strata, k, fold, seed=11) == (tr, va)
    assert sorted(seen) == list(range(n))
    with pytest.raises(ValueError):
        kfold_indices(strata, k, k, seed=0)


# ----------------------------------------------------------------------------- custom readers

def make_flat(root: Path, labels: list[str]) -> None:
    for split in ("train", "test"):
        for i, lab in enumerate(labels):
            write_class_image(root / split / f"{lab}__{i:03d}.png", i % 2, size=8)


def flat_task(reader: str, **kw) -> TaskSpec:
    return TaskSpec.model_validate(task_dict(name="flat", root="flat", layout={"reader": reader}, **kw))


def test_registered_target_reader(tmp_path):
    @register_target_reader("test_name_prefix_reader")
    def reader(path, ctx):
        assert ctx.data_dir == tmp_path / "flat" and ctx.split_dir.name in ("train", "test")
        return path.name.split("__")[0]

    make_flat(tmp_path / "flat", ["cat", "dog"] * 6)
    idx = index_task(flat_task("test_name_prefix_reader"), tmp_path, seed=0)
    assert idx.classes == ["cat", "dog"]
    for s in idx.splits.values():
        assert [idx.classes[t] for t in s.targets] == [p.name.split("__")[0] for p in s.paths]


def test_target_reader_from_file_path(tmp_path):
    mod = tmp_path / "pkg_readers_for_test.py"
    mod.write_text("def by_index(path, ctx):\n    return int(path.name.split('__')[0][-1])\n")
    make_flat(tmp_path / "flat", ["c0", "c1", "c2"] * 4)
    idx = index_task(flat_task(f"{mod}:by_index", classes=["zero", "one", "two"]), tmp_path, seed=0)
    assert idx.classes == ["zero", "one", "two"]
    test = dict(zip(names(idx.splits["test"]), idx.splits["test"].targets))
    assert test["c0__000.png"] == 0 and test["c1__001.png"] == 1 and test["c2__002.png"] == 2
    # relative to the task file
    task = flat_task("pkg_readers_for_test.py:by_index", classes=["zero", "one", "two"],
                     source_file=str(tmp_path / "task.yaml"))
    assert list(index_task(task, tmp_path, seed=0).splits["test"].targets) == list(idx.splits["test"].targets)


def test_target_reader_outside_the_project_is_refused(tmp_path, monkeypatch):
    """A task file naming any importable function (os:system) ran it; now only registered readers,
    modules of the repository and files named by path are taken, and nothing else is imported."""
    make_flat(tmp_path / "flat", ["a", "b"] * 3)
    with pytest.raises(UserError, match="'os:system'.*not part of this project"):
        index_task(flat_task("os:system"), tmp_path, seed=0)
    (tmp_path / "outside_mod_for_test.py").write_text("raise SystemExit('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match="not part of this project"):
        index_task(flat_task("outside_mod_for_test:f"), tmp_path, seed=0)
    with pytest.raises(UserError, match="not part of this project"):
        index_task(flat_task("numpy:load"), tmp_path, seed=0)  # installed packages neither
    # a module of the repository is project code: taken
    from utility.data.targets import folder_target, get_target_reader
    assert get_target_reader("utility.data.targets:folder_target") is folder_target


def test_unknown_reader_and_unimportable_module(tmp_path):
    make_flat(tmp_path / "flat", ["a", "b"] * 3)
    with pytest.raises(UserError, match="unknown target reader 'nope'.*folders"):
        index_task(flat_task("nope"), tmp_path, seed=0)
    with pytest.raises(UserError, match="cannot import module 'no_such_module_xyz'"):
        index_task(flat_task("no_such_module_xyz:f"), tmp_path, seed=0)


@pytest.mark.parametrize("label, ok", [("1", True), ("2", False), ("bird", False), ("dog", True)])
def test_csv_multiclass_label_names_and_indices(tmp_path, label, ok):
    root = tmp_path / "pets"
    rows = ["file,label"]
    for split in ("train", "test"):
        for i in range(8):
            write_class_image(root / split / f"{split}_{i}.png", i % 2, size=8)
            rows.append(f"{split}_{i}.png,{['cat', 'dog'][i % 2]}")
    rows[3] = f"train_2.png,{label}"
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    task = TaskSpec.model_validate(task_dict(name="pets", root="pets", classes=["cat", "dog"],
                                             layout={"reader": "csv", "labels_file": "labels.csv"}))
    if ok:
        idx = index_task(task, tmp_path, seed=0)
        got = {p.name: t for s in idx.splits.values() for p, t in zip(s.paths, s.targets)}
        assert got["train_2.png"] == 1 and got["train_1.png"] == 1 and got["train_0.png"] == 0
    else:
        with pytest.raises(UserError) as info:
            index_task(task, tmp_path, seed=0)
        assert "train_2.png" in str(info.value) and repr(label) in str(info.value)
        assert "cat, dog" in str(info.value)
