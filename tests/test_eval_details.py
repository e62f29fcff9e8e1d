"""Evaluation details: the logistic-regression probe at its optimum along the warm-started C grid, the
biased linear CKA of Kornblith et al. (2019) beside the debiased one, and Grad-CAM's default layer (the
deepest block with a map of at least 7x7) for ResNets and ViTs, ViT maps through the token reshape."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from utility.analysis.cka import cka
from utility.analysis.gradcam import class_target, compute_cams, target_layer
from utility.analysis.probe import fit_grid
from utility.models import build_network


def test_logreg_probe_is_at_its_optimum_for_every_c():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 20))
    y = (x[:, :3] @ rng.normal(size=(3, 4))).argmax(1)  # 4 classes, nearly separable: slow at weak regularisation
    x = (x - x.mean(0)) / x.std(0)
    grid = (0.01, 1.0, 100.0)
    fitted = fit_grid("logreg", x, y, grid, False, 0)
    onehot = np.eye(4)[y]
    for c, est in fitted.items():
        p = est.predict_proba(x)
        grad_w = c * x.T @ (p - onehot) + est.coef_.T      # d/dW [C sum CE + ||W||^2 / 2]
        grad_b = c * (p - onehot).sum(0)
        assert np.abs(grad_w).max() / (c * len(x)) < 1e-5, c
        assert np.abs(grad_b).max() / (c * len(x)) < 1e-5, c


def test_biased_cka_is_kornbliths_formula():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(40, 6))
    b = a @ rng.normal(size=(6, 5)) + 0.5 * rng.normal(size=(40, 5))
    ac, bc = a - a.mean(0), b - b.mean(0)
    ref = np.linalg.norm(bc.T @ ac) ** 2 / (np.linalg.norm(ac.T @ ac) * np.linalg.norm(bc.T @ bc))
    assert cka([a], [b], "biased") == pytest.approx(ref, rel=1e-10)
    assert cka([a], [b]) != pytest.approx(ref, rel=1e-3)                 # the default stays the debiased one
    assert cka([a], [a * 3.0], "biased") == pytest.approx(1.0)


@pytest.mark.parametrize("size,layer", [(32, "encoder.layer1"), (64, "encoder.layer2"), (224, "encoder.layer4")])
def test_gradcam_default_layer_for_resnets(size, layer):
    model, _ = build_network("resnet18", 2, 3)
    assert target_layer(model, None, torch.zeros(3, size, size))[0] == layer


def test_gradcam_on_a_vit():
    tiny = "vit:img=16,patch=4,dim=32,depth=2,heads=2"
    torch.manual_seed(0)
    model, _ = build_network(tiny, 2, 1)
    assert target_layer(model, None, torch.zeros(1, 16, 16))[0] == "encoder.blocks.1.norm1"  # 4x4: the largest, deepest
    x = torch.rand(3, 1, 32, 32)
    name, layer = target_layer(model, None, x[0])
    assert name == "encoder.blocks.1.norm1"
    with torch.no_grad():
        pred = model.eval()(x).argmax(1).tolist()  # explained for the predicted class: a positive evidence exists
    cams = compute_cams(model, layer, x, [class_target(c) for c in pred], "gradcam")
    assert cams.shape == (3, 32, 32) and np.isfinite(cams).all() and cams.max() > 0
