"""pkgs/Analysis/analyze.py on one tiny finetuning run: two commands as subprocesses (probe, gradcam),
the others in-process through the same entry (run_entry), results checked against
scikit-learn on the files the commands saved, bad inputs refused with exit 2 and nothing written."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, precision_recall_curve, roc_curve
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from conftest import HANG_GUARD_S, make_folder_dataset, small_run_config, snapshot, task_dict, write_yaml

REPO = Path(__file__).resolve().parent.parent
ANALYZE = REPO / "pkgs" / "Analysis" / "analyze.py"

from utility.analysis.cli import main as analyze_main
from utility.entry import run_entry
from utility.runs.finetune import main as finetune_main

CLASSES = ["a", "b", "c"]


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One finished 1-epoch resnet18 run on 16 px images of 3 classes (made in-process)."""
    root = tmp_path_factory.mktemp("analysis")
    make_folder_dataset(root / "data" / "tiny", CLASSES, 6)
    task = write_yaml(root / "tiny.yaml", task_dict())
    cfg = small_run_config(task=task, data_root=str(root / "data"), output_root=str(root / "out"))
    write_yaml(root / "run.yaml", cfg)
    assert run_entry(finetune_main, ["-c", str(root / "run.yaml")]) == 0
    write_yaml(root / "other.yaml", {**cfg, "name": "t/never_run", "epochs": 3})
    return {"root": root, "dir": root / "out" / "finetuning" / "t" / "run", "task": task}


def analyze(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, str(ANALYZE), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=HANG_GUARD_S, env=env)


def inproc(*args) -> int:
    return run_entry(analyze_main, [str(a) for a in args])


def embeddings(run_dir: Path) -> dict[str, dict]:
    out = {}
    for s in ("train", "val", "test"):
        (f,) = (run_dir / "analysis" / "embed").glob(f"tiny_{s}_*.npz")
        with np.load(f) as z:
            out[s] = {k: z[k] for k in z.files}
    return out


def test_probe_and_knn_equal_sklearn_on_the_saved_embeddings(run):
    proc = analyze("probe", "--run", run["dir"], "--probes", "logreg", "--C", "0.01", "1", cwd=run["root"])
    assert proc.returncode == 0, proc.stderr
    emb = embeddings(run["dir"])
    assert emb["train"]["features"].shape[1] == 512 and len(emb["test"]["paths"]) == 18
    assert sorted(Path(p).parent.name for p in emb["test"]["paths"]) == sorted(CLASSES * 6)
    rows = read_rows(run["dir"] / "analysis" / "probe" / "probe.csv")
    test = [r for r in rows if r["split"] == "test"][0]
    scaler = StandardScaler().fit(emb["train"]["features"])
    ref = LogisticRegression(C=float(test["C"]), max_iter=2000).fit(scaler.transform(emb["train"]["features"]),
                                                                  emb["train"]["targets"])
    pred = ref.predict(scaler.transform(emb["test"]["features"]))
    assert float(test["accuracy"]) == pytest.approx(accuracy_score(emb["test"]["targets"], pred))

    before = snapshot(run["dir"] / "analysis" / "embed")
    assert inproc("embed", "--run", run["dir"], "--weights", "random", "--splits", "test") == 0
    after = snapshot(run["dir"] / "analysis" / "embed")
    assert len(after) == len(before) + 1 and all(after[k] == v for k, v in before.items())  # other weights, other key
    before = after
    assert inproc("knn", "--run", run["dir"], "--k", "3", "7", "--temperature", "0.1") == 0
    assert snapshot(run["dir"] / "analysis" / "embed") == before  # served from the cache
    rows = read_rows(run["dir"] / "analysis" / "knn" / "knn.csv")
    assert [(r["split"], r["k"]) for r in rows] == [("val", "3"), ("val", "7"), ("test", "3"), ("test", "7")]
    for r in rows:
        knn = KNeighborsClassifier(n_neighbors=int(r["k"]), metric="cosine", algorithm="brute",
                                   weights=lambda d: np.exp((1 - d) / 0.1))
        knn.fit(emb["train"]["features"], emb["train"]["targets"])
        q = emb[r["split"]]
        assert float(r["accuracy"]) == pytest.approx(accuracy_score(q["targets"], knn.predict(q["features"])))


def test_gradcam_writes_a_grid_and_one_file_per_image(run):
    out = run["root"] / "gc"
    proc = analyze("gradcam", "--run", run["dir"], "--images", "2", "--layer", "encoder.layer1",
                   "--method", "gradcam++", "--out", out, cwd=run["root"])
    assert proc.returncode == 0, proc.stderr
    rows = read_rows(out / "gradcam.csv")
    assert [r["class"] for r in rows] == ["a", "a", "b", "b", "c", "c"]
    assert all((out / r["image"]).is_file() and Path(r["file"]).parent.name == r["class"] for r in rows)
    assert (out / "grid.png").stat().st_size > 1000
    with np.load(out / "cams.npz") as z:
        assert z["cams"].shape == (6, 16, 16) and 0 <= z["cams"].min() and z["cams"].max() <= 1


def test_curves_equal_sklearn_on_the_runs_predictions(run):
    assert inproc("curves", "--run", run["dir"], "--recall", "0.9", "0.5") == 0
    pred = read_rows(run["dir"] / "predictions_test_last.csv")
    out = run["dir"] / "analysis" / "curves"
    par = read_rows(out / "precision_at_recall.csv")
    roc = read_rows(out / "roc_points.csv")
    for c in CLASSES:
        y = np.array([r["target"] == c for r in pred], dtype=int)
        s = np.array([float(r[f"prob_{c}"]) for r in pred])
        fpr, tpr, _ = roc_curve(y, s)
        mine = [r for r in roc if r["class"] == c]
        np.testing.assert_allclose([float(r["fpr"]) for r in mine], fpr)
        np.testing.assert_allclose([float(r["tpr"]) for r in mine], tpr)
        p, rec, t = precision_recall_curve(y, s)
        for want in (0.9, 0.5):
            row = [r for r in par if r["class"] == c and float(r["target_recall"]) == want][0]
            ok = np.flatnonzero(rec[:-1] >= want)
            assert float(row["precision"]) == pytest.approx(p[ok].max())
            assert float(row["threshold"]) == pytest.approx(t[ok][p[ok] == p[ok].max()].max())
    for png in ("roc.png", "pr.png", "confusion.png", "reliability.png"):
        assert (out / png).is_file()
    assert "ece" in read_rows(out / "summary.csv")[-1]


def test_predict_cka_l2_importance_layer_knn_lr_find(run):
    rd = run["dir"]
    assert inproc("predict", "--run", rd, "--split", "val", "--out", run["root"] / "pv") == 0
    pred = read_rows(run["root"] / "pv" / "predictions_val.csv")
    metrics = read_rows(run["root"] / "pv" / "metrics_val.csv")[0]
    assert float(metrics["accuracy"]) == pytest.approx(np.mean([r["target"] == r["predicted"] for r in pred]))

    assert inproc("cka", "--run", rd, "--other", rd, "--batch_size", "6") == 0
    cka = read_rows(rd / "analysis" / "cka" / "cka.csv")
    assert [r["block"] for r in cka][-1] == "encoder.layer4"
    assert all(float(r[r["block"]]) == pytest.approx(1.0, abs=1e-6) for r in cka)

    assert inproc("l2", rd / "finetuned_model.tar", rd / "finetuned_model.tar") == 0
    assert all(float(r["l2"]) == 0.0 for r in read_rows(rd / "analysis" / "l2" / "l2.csv"))

    assert inproc("importance", "--run", rd, "--init", rd / "finetuned_model.tar", "--split", "val") == 0
    imp = read_rows(rd / "analysis" / "importance" / "importance.csv")
    assert len(imp) == 8 and all(float(r["drop"]) == 0.0 for r in imp)

    assert inproc("layer-knn", "--run", rd, "--k", "3", "--split", "val") == 0
    assert [r["block"].split(".")[-1] for r in read_rows(rd / "analysis" / "layer-knn" / "layer_knn.csv")] == \
        ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]

    cfg_before = (run["root"] / "other.yaml").read_bytes()
    assert inproc("lr-find", "--config", run["root"] / "other.yaml", "--steps", "6", "--start_lr", "1e-4",
                  "--end_lr", "1") == 0
    lr = read_rows(run["root"] / "out" / "analysis" / "t" / "never_run" / "lr-find" / "lr_find.csv")
    np.testing.assert_allclose([float(r["lr"]) for r in lr], np.geomspace(1e-4, 1, 6)[:len(lr)])
    assert (run["root"] / "other.yaml").read_bytes() == cfg_before
    assert not (run["root"] / "out" / "finetuning" / "t" / "never_run").exists()


def test_bad_inputs_exit_2_with_one_message_and_write_nothing(run, capsys, tmp_path):
    rd, out = run["dir"], tmp_path / "never"
    enc = tmp_path / "encoder.tar"
    sd = torch.load(rd / "finetuned_model.tar", weights_only=True)
    torch.save({k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}, enc)
    seg_task = write_yaml(tmp_path / "seg.yaml", task_dict(name="seg", type="segmentation", classes=["bg", "fg"]))
    cases = [
        (["knn", "--weights", rd / "finetuned_model.tar", "--task", run["task"], "--model_name", "resnet34",
          "--data_root", run["root"] / "data"], "does not fit"),
        (["probe", "--weights", enc, "--task", seg_task, "--model_name", "resnet18"], "image-level labels"),
        (["predict", "--run", rd, "--split", "holdout"], "unknown split 'holdout'"),
        (["predict", "--weights", enc, "--task", run["task"], "--model_name", "resnet18",
          "--data_root", run["root"] / "data"], "only an encoder"),
        (["gradcam", "--run", rd, "--layer", "encoder.layer9"], "encoder.layer4"),
        (["gradcam", "--run", rd, "--images", "7"], "more images"),
        (["cka", "--run", rd], "--other"),
        (["l2", rd / "finetuned_model.tar"], "two weight files"),
    ]
    before = snapshot(rd)
    for argv, message in cases:
        assert inproc(*argv, "--out", out) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("error:") == 1, (argv, err)
        assert not out.exists()
    assert snapshot(rd) == before
