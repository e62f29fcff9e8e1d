"""Subjects (issue 20 items 1-3): every split keeps a subject's samples on one side (carve-outs,
k-fold, size variants, random_subset) on generated tasks with uneven subject sizes and a rare class;
stratification within tolerance; same seed same splits; subject rules (regex, column, reader);
leakage checks (refusal, allow_subject_overlap, identical files) and splits.csv.gz."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from utility.config.schemas import FTEConfig
from utility.config.tasks import TaskSpec
from utility.data.index import index_task
from utility.data.index_cache import IndexCache
from utility.data.splits import grouped_fraction, grouped_kfold, grouped_random_subset
from utility.errors import UserError
from utility.runs.split_audit import audit_splits
from utility.runs.startup import Startup

CLASSES = ["common", "middle", "rare"]
# patients per class (the rare class has 4) and 1..9 slices each (uneven)
PATIENTS = {"common": 40, "middle": 16, "rare": 4}


def make_patients(root: Path, split: str = "all", start: int = 0, seed: int = 0) -> dict[str, str]:
    """root/<split>/<class>/p<id>_s<k>.png (tiny non-images: the folders reader reads no pixels);
    returns {patient: class}."""
    rng = np.random.default_rng(seed)
    out, pid = {}, start
    for cls, n in PATIENTS.items():
        for _ in range(n):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for k in range(int(rng.integers(1, 10))):
                (d / f"p{pid:03d}_s{k}.png").write_bytes(f"{split}{pid}_{k}".encode())  # distinct content
            out[f"{pid:03d}"] = cls
            pid += 1
    return out


def spec(**over) -> TaskSpec:
    data = {"name": "pat", "root": "pat", "classes": CLASSES, "layout": {"reader": "folders"},
            "splits": {"train": {"dir": "all"}, "test": {"from": "train", "fraction": 0.2},
                       "val": {"from": "train", "fraction": 0.25}},
            "subject": {"regex": r"/p(\d+)_s\d+\.png$"}}
    data.update(over)
    return TaskSpec.model_validate(data)


def disjoint(splits) -> None:
    ids = {k: set(s.subject_ids().tolist()) for k, s in splits.items()}
    names = list(ids)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not ids[a] & ids[b], (a, b, sorted(ids[a] & ids[b])[:3])


@pytest.fixture(scope="module")
def pat_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("subj")
    make_patients(root / "pat")
    return root


def test_carve_outs_and_size_variant_keep_subjects_together(pat_root):
    idx = index_task(spec(), pat_root, seed=3)
    s = idx.splits
    disjoint(s)
    total = sum(PATIENTS.values())
    assert sum(x.subject_count() for x in s.values()) == total
    # a fraction of the subjects, stratified by the subjects' class within one subject per class
    assert s["test"].subject_count() == round(0.2 * total)
    for cls_i, cls in enumerate(CLASSES):
        n_cls = PATIENTS[cls]
        got = len(np.unique(s["test"].subject_ids()[s["test"].targets == cls_i]))
        assert abs(got - 0.2 * n_cls) <= 1, (cls, got)
    small = index_task(spec(), pat_root, seed=3, train_fraction=0.25)
    disjoint(small.splits)
    tr_full, tr_small = s["train"], small.splits["train"]
    assert tr_small.subject_count() == round(0.25 * tr_full.subject_count())
    assert set(tr_small.subject_ids().tolist()) <= set(tr_full.subject_ids().tolist())
    # each chosen subject comes with all its samples
    full_counts = pd.Series(tr_full.subject_ids()).value_counts()
    small_counts = pd.Series(tr_small.subject_ids()).value_counts()
    assert (small_counts == full_counts[small_counts.index]).all()
    # same seed, same split; another seed, another one
    again = index_task(spec(), pat_root, seed=3).splits
    assert all(again[k].paths == s[k].paths for k in s)
    other = index_task(spec(), pat_root, seed=4).splits
    assert other["test"].paths != s["test"].paths


def test_kfold_is_grouped_and_stratified(pat_root):
    k = 4
    vals = []
    for fold in range(k):
        idx = index_task(spec(), pat_root, seed=1, folds=k, fold=fold)
        disjoint(idx.splits)
        vals.append(set(idx.splits["val"].subject_ids().tolist()))
        again = index_task(spec(), pat_root, seed=1, folds=k, fold=fold)
        assert again.splits["val"].paths == idx.splits["val"].paths
    pool = index_task(spec(), pat_root, seed=1)
    pool_ids = set(pool.splits["train"].subject_ids().tolist()) | set(pool.splits["val"].subject_ids().tolist())
    assert set().union(*vals) == pool_ids and sum(len(v) for v in vals) == len(pool_ids)  # a partition
    # stratified: every fold holds about 1/k of each class's samples
    strata = np.array([0] * 50 + [1] * 30 + [2] * 8)
    groups = np.repeat(np.arange(30), [1, 2, 3, 4, 5, 1, 2, 3, 4, 5] * 2 + [2, 3, 3, 2, 3, 3, 2, 3, 3, 4])[:88]
    strata = strata[: len(groups)]
    for fold in range(k):
        tr, va = grouped_kfold(strata, groups, k, fold, seed=0)
        assert not set(groups[tr]) & set(groups[va])
        for c in (0, 1):
            share = np.mean(strata[va] == c) if len(va) else 0
            assert abs(np.sum(strata[va] == c) - np.sum(strata == c) / k) <= 5, (fold, c, share)


def test_one_sample_per_subject_selects_as_before():
    from utility.data.splits import kfold_indices, stratified_fraction

    strata = np.random.default_rng(0).integers(0, 4, 200)
    groups = np.arange(200)[::-1]
    assert grouped_fraction(strata, groups, 0.3, 5) == stratified_fraction(strata, 0.3, 5)
    assert grouped_kfold(strata, groups, 5, 2, 5) == kfold_indices(strata, 5, 2, 5)
    before = np.sort(np.random.default_rng(7).choice(200, size=60, replace=False))
    assert np.array_equal(grouped_random_subset(None, 200, 0.3, 7), before)


def test_random_subset_takes_whole_subjects():
    groups = np.repeat(np.arange(50), np.arange(50) % 7 + 1)
    got = grouped_random_subset(groups, len(groups), 0.2, seed=11)
    chosen = np.unique(groups[got])
    assert len(chosen) == 10
    assert np.array_equal(got, np.flatnonzero(np.isin(groups, chosen)))
    assert np.array_equal(got, grouped_random_subset(groups, len(groups), 0.2, seed=11))


def test_subjects_cached_compactly_and_column_rule(tmp_path):
    root = tmp_path / "data"
    make_patients(root / "pat")
    cache = IndexCache(tmp_path / "cache")
    first = index_task(spec(), root, seed=0, cache=cache)
    second = index_task(spec(), root, seed=0, cache=cache)
    assert "from cache" in second.how
    for k in first.splits:
        assert np.array_equal(first.splits[k].subject_ids(), second.splits[k].subject_ids())
        assert first.splits[k].subjects.codes.dtype == np.int32  # 4 bytes per sample + one vocabulary
    # a labels-table column: the patient id written in a CSV
    files = sorted((root / "pat" / "all").rglob("*.png"))
    rows = ["file,label,Patient ID"] + [f"{f.name},{f.parent.name},P{f.name[1:4]}" for f in files]
    (root / "pat" / "labels.csv").write_text("\n".join(rows) + "\n")
    task = spec(layout={"reader": "csv", "labels_file": "labels.csv"}, subject={"column": "Patient ID"})
    idx = index_task(task, root, seed=3)
    disjoint(idx.splits)
    ref = index_task(spec(), root, seed=3)
    assert np.array_equal(np.char.add("P", ref.splits["test"].subject_ids()), idx.splits["test"].subject_ids())
    with pytest.raises(UserError, match=r"no subject \(subject regex"):
        index_task(spec(subject={"regex": r"/q(\d+)_"}), root, seed=0)


def test_task_rules_are_validated():
    with pytest.raises(ValueError, match="exactly one of column, regex, dicom, reader"):
        spec(subject={"regex": "a", "column": "b"})
    with pytest.raises(ValueError, match="does not compile"):
        spec(subject={"regex": "("})
    with pytest.raises(ValueError, match="subject.column needs layout.labels_file"):
        spec(subject={"column": "Patient ID"})


def _cfg(**over) -> FTEConfig:
    return FTEConfig.model_validate({"name": "t", "task": "x", **over})


def test_overlapping_folders_refused_then_allowed(tmp_path):
    root = tmp_path / "data"
    make_patients(root / "pat", "train")
    make_patients(root / "pat", "test", start=55, seed=1)  # patients 055..059 also in train
    (root / "pat" / "train" / "common" / "p000_s0.png").write_bytes(b"identical bytes")
    (root / "pat" / "test" / "common" / "p300_s0.png").write_bytes(b"identical bytes")
    task = spec(splits={"train": {"dir": "train"}, "val": {"from": "train", "fraction": 0.2},
                        "test": {"dir": "test"}})
    idx = index_task(task, root, seed=0)
    run = tmp_path / "run"
    with pytest.raises(UserError) as exc:
        audit_splits(_cfg(), idx, run, Startup(False))
    msg = str(exc.value)
    assert "5 subject(s) are in more than one of the splits, e.g. 055 (" in msg and "056 (" in msg
    assert "allow_subject_overlap: true" in msg and "\n" not in msg
    assert not run.exists()  # nothing written for a refused run
    found = audit_splits(_cfg(allow_subject_overlap=True), idx, run, Startup(False))
    assert found[0].startswith("warning: 5 subject(s)")
    text = (run / "leakage.txt").read_text()
    assert "1 group(s) of identical image files" in text and "p300_s0.png" in text
    with gzip.open(run / "splits.csv.gz", "rt") as fh:
        df = pd.read_csv(fh, dtype=str)
    assert list(df.columns) == ["path", "subject", "split"]
    assert len(df) == sum(len(s) for s in idx.splits.values())
    assert df[df.split == "test"].path.iloc[0].startswith("test/")
    assert set(df[df.split == "val"].subject) == set(idx.splits["val"].subject_ids().tolist())
    sizes = pd.read_csv(run / "split_sizes.csv")
    assert sizes.set_index("split").loc["test", "subjects"] == idx.splits["test"].subject_count()


def test_no_rule_each_sample_its_own_subject(tmp_path, capsys):
    root = tmp_path / "data"
    make_patients(root / "pat")
    idx = index_task(spec(subject=None), root, seed=0)
    s = idx.splits["train"]
    assert s.subjects is None and s.subject_count() == len(s)
    assert s.subject_ids()[0].startswith("all/")
    audit_splits(_cfg(check_duplicates=False), idx, tmp_path / "r", Startup(False))
    audit_splits(_cfg(check_duplicates=False), idx, tmp_path / "r2", Startup(False))
    assert capsys.readouterr().out.count("names no subject rule") == 1  # said once


def test_pretraining_random_subset_takes_whole_subjects(tmp_path):
    from utility.config.schemas import PretrainConfig
    from utility.runs.pretrain_data import unlabeled_split

    make_patients(tmp_path / "pat")
    base = {"name": "p", "dataset_base_dir": [str(tmp_path / "pat" / "all")], "data_format": ".png",
            "random_subset": 0.25, "seed": 2}
    plain = unlabeled_split(PretrainConfig.model_validate(base))
    n_all = len(unlabeled_split(PretrainConfig.model_validate({**base, "random_subset": 1.0})))
    assert len(plain) == round(0.25 * n_all)  # no rule: a quarter of the images, as before
    grouped = unlabeled_split(PretrainConfig.model_validate({**base, "subject_regex": r"p(\d+)_s"}))
    ids = grouped.subject_ids()
    assert grouped.subject_count() == round(0.25 * sum(PATIENTS.values()))
    names = [p.name for p in (tmp_path / "pat" / "all").rglob("*.png")]
    per_subject = pd.Series([n[1:4] for n in names]).value_counts()
    assert (pd.Series(ids).value_counts() == per_subject[pd.Series(ids).value_counts().index]).all()


def test_study_flags_contaminated_and_val_overlapping_sources(tmp_path):
    """A source pretrained on the task folder holds its test files (contaminated, refused unless allowed);
    one on train/ holds the val carve-out only (flagged); one on copies of test images under other
    names is caught by content; status, summary.csv and the report show it."""
    import csv

    from conftest import make_folder_dataset, small_run_config, task_dict, write_yaml
    from utility.study import contamination
    from utility.study.cli import report, status
    from utility.study.plan import make_plan
    from utility.study.spec import load_study

    data = tmp_path / "data"
    paths = make_folder_dataset(data / "tiny", ["a", "b"], 4)
    copies = tmp_path / "copies"
    copies.mkdir()
    for i, p in enumerate(paths["test"][:3]):
        (copies / f"renamed_{i}.png").write_bytes(p.read_bytes())
    task = write_yaml(tmp_path / "tasks" / "tiny.yaml", task_dict())
    ft = write_yaml(tmp_path / "ft.yaml", small_run_config(name="base", task=str(task), data_root=str(data)))

    def pre(name, folder):
        return {"config": str(write_yaml(tmp_path / f"{name}.yaml", {"name": name, "dataset_base_dir": str(folder),
                                                                      "resnet": "resnet18", "device": "cpu"}))}

    study = {"name": "leak", "pretrain": {"Scratch": None, "All": pre("all", data / "tiny"),
                                          "Train": pre("train", data / "tiny" / "train"), "Copies": pre("c", copies)},
             "finetune": {"config": str(ft)}, "tasks": [str(task)], "repeats": {"seeds": [0]},
             "output_root": str(tmp_path / "out"), "config_dir": str(tmp_path / "cfgs")}
    plan = make_plan(load_study(write_yaml(tmp_path / "study.yaml", study)))
    with pytest.raises(UserError, match=r"All on .*tiny.yaml: contaminated \(its pretraining data hold 8 test and "
                                        r"2 val files of the task\).*and 1 more; set allow_contamination: true"):
        contamination.refuse_or_flag(plan, allowed=False)
    found = {f.source: f for f in contamination.refuse_or_flag(plan, allowed=True)}
    assert found["All"].status == "contaminated" and found["All"].test_files == 8
    assert found["Train"].status == "val overlap" and (found["Train"].test_files, found["Train"].val_files) == (0, 2)
    assert found["Copies"].status == "contaminated" and found["Copies"].test_files == 3  # by content hash
    assert "Train on" in status(plan) and "val overlap" in status(plan)
    for r in plan.runs:  # fake completed runs so summary.csv has rows
        rd = plan.output_root / "finetuning" / r.name
        rd.mkdir(parents=True)
        (rd / "test.log").write_text("accuracy,epoch,model\n0.5,1,last\n")
        (rd / "split_sizes.csv").write_text("split,samples,subjects\ntrain,6,3\nval,2,1\ntest,8,8\n")
    report(plan, quiet=True)
    with (plan.study_dir / "results.csv").open() as fh:
        res = list(csv.DictReader(fh))
    assert list(res[0])[-6:] == ["train_samples", "train_subjects", "val_samples", "val_subjects", "test_samples",
                                 "test_subjects"]
    assert (res[0]["train_samples"], res[0]["train_subjects"], res[0]["test_subjects"]) == ("6", "3", "8")
    with (plan.study_dir / "summary.csv").open() as fh:
        rows = {r["source"]: r["contamination"] for r in csv.DictReader(fh)}
    assert rows == {"Scratch": "", "All": "contaminated", "Train": "val overlap", "Copies": "contaminated"}
    assert "Data overlap" in (plan.study_dir / "report.html").read_text()


def test_finetune_refuses_overlapping_folders_with_one_line(tmp_path, make_folder_dataset):
    """The entry point (in-process through run_entry): a patient in train/ and test/ -> exit 2, one line
    naming count and examples."""
    from conftest import run_inproc, small_run_config, task_dict, write_yaml
    from utility.runs.finetune import main

    make_folder_dataset(tmp_path / "data" / "tiny", ["a", "b"], 4)  # <class>_<split>_<i>.png: i is the patient
    task = write_yaml(tmp_path / "tiny.yaml", task_dict(subject={"regex": r"_(\d+)\.png$"}))
    cfg = write_yaml(tmp_path / "run.yaml", small_run_config(task=task, data_root=str(tmp_path / "data"),
                                                             output_root=str(tmp_path / "out")))
    r = run_inproc(main, ["-c", cfg], tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "4 subject(s) are in more than one of the splits, e.g. 0000 (" in lines[0]
    assert "allow_subject_overlap: true" in lines[0]
    assert not (tmp_path / "out" / "finetuning" / "t" / "run" / "train.log").exists()
