"""The analysis library in-process on tiny arrays and models, against references written here
(scikit-learn, numpy): kNN, probes, curves, calibration, CKA, L2, importance, Grad-CAM, LR finder."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, precision_recall_curve, roc_auc_score, roc_curve
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler
from torch import nn


from utility.analysis import curves as cv
from utility.analysis.cka import cka
from utility.analysis.gradcam import class_target, compute_cams, display, target_layer
from utility.analysis.knn import weighted_knn
from utility.analysis.layers import importance_rows, l2_rows
from utility.analysis.lrfind import lr_at, smooth, suggest
from utility.analysis.probe import C_GRID, probe_rows
from utility.errors import UserError
from utility.models.encoders import Classifier


def clusters(n: int, classes: int, dim: int, rng: np.random.Generator, spread: float = 1.5):
    centres = rng.normal(size=(classes, dim)) * 2
    y = np.arange(n) % classes
    return (centres[y] + rng.normal(size=(n, dim)) * spread).astype(np.float32), y


def cosine_temperature(temperature: float):
    """sklearn weight function: distances are cosine distances 1 - cos."""
    return lambda d: np.exp((1.0 - d) / temperature)


@pytest.mark.parametrize("k", [5, 30])
def test_weighted_knn_equals_sklearn(k):
    rng = np.random.default_rng(0)
    xtr, ytr = clusters(60, 3, 8, rng)
    xq, yq = clusters(25, 3, 8, rng)
    ours = weighted_knn(xtr, ytr, xq, k, 0.1, 3)
    ref = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                               weights=cosine_temperature(0.1)).fit(xtr, ytr)
    np.testing.assert_allclose(ours, ref.predict_proba(xq), rtol=1e-6, atol=1e-9)
    assert accuracy_score(yq, ours.argmax(1)) == accuracy_score(yq, ref.predict(xq))


def test_weighted_knn_multilabel_equals_sklearn_per_label():
    rng = np.random.default_rng(1)
    xtr, xq = rng.normal(size=(40, 6)), rng.normal(size=(10, 6))
    ytr = (rng.random((40, 3)) < 0.4).astype(int)
    ours = weighted_knn(xtr, ytr, xq, 7, 0.2, 3, multilabel=True)
    ref = KNeighborsClassifier(n_neighbors=7, metric="cosine", algorithm="brute",
                               weights=cosine_temperature(0.2)).fit(xtr, ytr)
    for j, p in enumerate(ref.predict_proba(xq)):
        np.testing.assert_allclose(ours[:, j], p[:, 1], rtol=1e-6, atol=1e-9)


def test_logistic_probe_equals_sklearn_with_c_chosen_on_val():
    rng = np.random.default_rng(2)
    emb = {}
    for s, n in (("train", 60), ("val", 30), ("test", 30)):
        x, y = clusters(n, 3, 10, rng, spread=3.0)
        emb[s] = {"features": x, "targets": y}
    rows = probe_rows(emb, ["a", "b", "c"], False, "accuracy", "max", kinds=["logreg"], seed=0)
    scaler = StandardScaler().fit(emb["train"]["features"])
    z = {s: scaler.transform(e["features"]) for s, e in emb.items()}
    val_acc = [accuracy_score(emb["val"]["targets"],
                              LogisticRegression(C=c, max_iter=2000).fit(z["train"], emb["train"]["targets"])
                              .predict(z["val"])) for c in C_GRID]
    chosen = C_GRID[int(np.argmax(val_acc))]
    test_row = [r for r in rows if r["split"] == "test"][0]
    assert test_row["C"] == chosen
    for r, acc in zip([r for r in rows if r["split"] == "val"], val_acc):
        assert r["accuracy"] == pytest.approx(acc)
    ref = LogisticRegression(C=chosen, max_iter=2000).fit(z["train"], emb["train"]["targets"])
    probs = ref.predict_proba(z["test"])
    assert test_row["accuracy"] == pytest.approx(accuracy_score(emb["test"]["targets"], probs.argmax(1)))
    assert test_row["auc_macro"] == pytest.approx(
        roc_auc_score(emb["test"]["targets"], probs, multi_class="ovr", average="macro"), abs=1e-6)


def test_svm_and_multilabel_probes_report_the_task_metrics():
    rng = np.random.default_rng(3)
    emb = {s: {"features": rng.normal(size=(40, 5)).astype(np.float32),
               "targets": (rng.random((40, 2)) < 0.5).astype(np.float32)} for s in ("train", "val", "test")}
    emb["train"]["features"][:, 0] += 3 * emb["train"]["targets"][:, 0]
    rows = probe_rows(emb, ["x", "y"], True, "auc_avg_overall", "max", grid=[0.1, 1.0])
    assert {r["probe"] for r in rows} == {"logreg", "svm"}
    assert all("auc_x" in r and "f1_y" in r for r in rows)
    assert sum(r["chosen"] for r in rows if r["split"] == "val") == 2


def scores(multilabel: bool) -> cv.Scores:
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(3), size=50)
    if multilabel:
        return cv.Scores(probs, (rng.random((50, 3)) < probs).astype(int), ["a", "b", "c"], True)
    return cv.Scores(probs, np.array([rng.choice(3, p=p) for p in probs]), ["a", "b", "c"], False)


@pytest.mark.parametrize("multilabel", [False, True])
def test_curve_points_and_precision_at_recall_equal_sklearn(multilabel):
    s = scores(multilabel)
    roc, pr = cv.roc_points(s), cv.pr_points(s)
    par = cv.precision_at_recall_rows(s, [0.999, 0.9, 0.5])
    for c, name in enumerate(s.classes):
        y = (s.targets[:, c] if multilabel else s.targets == c).astype(int)
        fpr, tpr, thr = roc_curve(y, s.probs[:, c])
        mine = [r for r in roc if r["class"] == name]
        np.testing.assert_allclose([r["fpr"] for r in mine], fpr)
        np.testing.assert_allclose([r["tpr"] for r in mine], tpr)
        np.testing.assert_allclose([r["threshold"] for r in mine], thr)
        p, r_, t = precision_recall_curve(y, s.probs[:, c])
        mine = [r for r in pr if r["class"] == name]
        np.testing.assert_allclose([r["precision"] for r in mine], p)
        np.testing.assert_allclose([r["recall"] for r in mine], r_)
        for want in (0.999, 0.9, 0.5):
            ok = [i for i in range(len(t)) if r_[i] >= want]
            best = max(p[i] for i in ok)
            i = max((i for i in ok if p[i] == best), key=lambda i: t[i])
            row = [x for x in par if x["class"] == name and x["target_recall"] == want][0]
            assert (row["precision"], row["recall"], row["threshold"]) == pytest.approx((p[i], r_[i], t[i]))


def test_calibration_ece_equals_numpy_reference():
    s = scores(False)
    bins, ece = cv.calibration(s, 10)
    conf, correct = s.probs.max(1), s.probs.argmax(1) == s.targets
    ref = 0.0
    for lo, hi in zip(np.linspace(0, 1, 11)[:-1], np.linspace(0, 1, 11)[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ref += m.mean() * abs(correct[m].mean() - conf[m].mean())
    assert ece == pytest.approx(ref)
    assert sum(b["count"] for b in bins) == 50


def test_read_predictions_round_trip_and_unknown_class(tmp_path):
    p = tmp_path / "pred.csv"
    p.write_text("file,target,predicted,prob_a,prob_b\nx.png,b,b,0.2,0.8\ny.png,a,b,0.4,0.6\n")
    s = cv.read_predictions(p, False, ["a", "b"])
    assert s.targets.tolist() == [1, 0] and s.probs[0, 1] == pytest.approx(0.8)
    p.write_text("file,target,predicted,prob_a,prob_b\nx.png,zebra,b,0.2,0.8\n")
    with pytest.raises(UserError, match="zebra"):
        cv.read_predictions(p, False, ["a", "b"])


def hsic_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased HSIC (Song et al. 2012) of linear kernels, written out with numpy."""
    n = x.shape[0]
    k, l = x @ x.T, y @ y.T
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones((n, 1))
    val = np.trace(k @ l) + (one.T @ k @ one).item() * (one.T @ l @ one).item() / ((n - 1) * (n - 2)) \
        - 2 / (n - 2) * (one.T @ k @ l @ one).item()
    return val / (n * (n - 3))


def cka_reference(xs: list[np.ndarray], ys: list[np.ndarray]) -> float:
    xy = sum(hsic_reference(x, y) for x, y in zip(xs, ys))
    xx = sum(hsic_reference(x, x) for x in xs)
    yy = sum(hsic_reference(y, y) for y in ys)
    return xy / np.sqrt(xx * yy)


def test_minibatch_cka_equals_numpy_and_invariances():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(64, 10))
    y = x @ rng.normal(size=(10, 7)) + rng.normal(size=(64, 7))
    split = lambda a: [a[i:i + 16] for i in range(0, 64, 16)]  # noqa: E731
    value = cka(split(x), split(y))
    assert value == pytest.approx(cka_reference(split(x), split(y)), rel=1e-10)
    assert 0.05 < value < 0.99
    assert cka(split(x), split(x)) == pytest.approx(1.0, abs=1e-12)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    assert cka(split(x @ q * 3.7), split(y)) == pytest.approx(value, rel=1e-9)
    assert cka(split(x), split(y * 0.01)) == pytest.approx(value, rel=1e-9)
    assert cka(split(x), split(rng.normal(size=(64, 7)))) < 0.3


def test_l2_of_identical_files_is_zero_and_of_a_change_is_its_norm():
    net = Classifier(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten()), 4, 2)
    a = {k: v.clone() for k, v in net.state_dict().items()}
    rows, only = l2_rows(a, a)
    assert all(r["l2"] == 0 and r["relative"] == 0 for r in rows) and only == []
    b = {k: v.clone() for k, v in a.items()}
    delta = torch.randn_like(b["encoder.0.weight"])
    b["encoder.0.weight"] += delta
    rows, _ = l2_rows(a, b)
    by = {r["block"]: r for r in rows}
    assert by["encoder.0"]["l2"] == pytest.approx(float(delta.double().norm()))
    norm0 = float(torch.cat([a["encoder.0.weight"].flatten(), a["encoder.0.bias"].flatten()]).double().norm())
    assert by["encoder.0"]["relative"] == pytest.approx(float(delta.double().norm()) / norm0)
    assert by["encoder.1"]["l2"] == 0 and by["head"]["l2"] == 0
    enc_only = {k[len("encoder."):]: v for k, v in a.items() if k.startswith("encoder.")}
    rows, only = l2_rows(enc_only, a)  # an encoder file against a finetuned model: only the head differs in keys
    assert rows[-1]["l2"] == 0 and only == ["head.bias", "head.weight"]


def tiny_classifier(in_ch: int = 1, width: int = 8) -> Classifier:
    enc = nn.Sequential(nn.Conv2d(in_ch, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(enc, width, 2)


def test_importance_of_a_block_reinitialised_to_itself_is_zero():
    torch.manual_seed(0)
    model = tiny_classifier()
    x = torch.randn(32, 1, 12, 12)
    y = model(x).argmax(1)

    def score(m):
        with torch.no_grad():
            return {"accuracy": float((m(x).argmax(1) == y).float().mean())}

    rows = importance_rows(model, ["encoder.0", "encoder.2", "head"], model.state_dict(), score, "accuracy", "max", 0)
    assert [r["drop"] for r in rows] == [0.0, 0.0, 0.0, 0.0] and rows[0][ "accuracy"] == 1.0
    rows = importance_rows(model, ["encoder.0", "head"], None, score, "accuracy", "max", 0)
    assert any(r["drop"] > 0 for r in rows[1:])  # a random block changes the predictions
    assert torch.equal(model.head.weight, model.state_dict()["head.weight"])  # the model itself is untouched


def patch_images(n: int, rng: np.random.Generator, size: int = 20, patch: int = 5):
    """Noise; class 1 adds one bright patch at a random place. Returns images, labels, patch corners."""
    x = rng.uniform(0, 0.5, size=(n, 1, size, size)).astype(np.float32)
    y = np.arange(n) % 2
    corners = rng.integers(0, size - patch, size=(n, 2))
    for i in np.flatnonzero(y == 1):
        r, c = corners[i]
        x[i, 0, r:r + patch, c:c + patch] = 1.0
    return torch.from_numpy(x), torch.from_numpy(y), corners


def test_gradcam_maximum_lies_in_the_bright_patch():
    rng = np.random.default_rng(6)
    torch.manual_seed(6)
    model = tiny_classifier()
    x, y, _ = patch_images(64, rng)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    xt, yt, corners = patch_images(40, rng)
    assert float((model(xt).argmax(1) == yt).float().mean()) > 0.9
    name, layer = target_layer(model, None)
    assert name == "encoder.2"  # the encoder's last block with weights
    pos = torch.nonzero(yt == 1).flatten()
    cams = compute_cams(model, layer, xt[pos], [class_target(1)] * len(pos), "gradcam")
    assert cams.shape == (len(pos), 20, 20)
    inside = 0
    for cam, i in zip(cams, pos.tolist()):
        r, c = np.unravel_index(cam.argmax(), cam.shape)
        inside += corners[i][0] <= r < corners[i][0] + 5 and corners[i][1] <= c < corners[i][1] + 5
    assert inside >= 0.8 * len(pos)
    with pytest.raises(UserError, match="encoder.0"):
        target_layer(model, "encoder.layer9")
    rgb = display(xt[pos[0]])  # a grayscale input is shown as gray RGB in [0, 1]
    assert rgb.shape == (20, 20, 3) and rgb.min() == 0 and rgb.max() == 1
    assert np.array_equal(rgb[..., 0], rgb[..., 2])


def test_lr_finder_schedule_smoothing_and_suggestion():
    lrs = np.array([lr_at(i, 50, 1e-6, 1.0) for i in range(50)])
    np.testing.assert_allclose(lrs, np.geomspace(1e-6, 1.0, 50))
    raw = [1.0, 2.0, 3.0]
    avg, ref = 0.0, []
    for i, v in enumerate(raw):
        avg = 0.9 * avg + 0.1 * v
        ref.append(avg / (1 - 0.9 ** (i + 1)))
    np.testing.assert_allclose(smooth(raw, 0.9), ref)
    loss = 2.0 - np.tanh(np.log10(lrs) + 3)  # falls fastest at lr = 1e-3
    assert suggest(lrs, loss) == pytest.approx(1e-3, rel=0.35)
