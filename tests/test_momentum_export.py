"""Which encoder a momentum method hands on, and where its target starts (in-process pretraining on tiny
generated images): DINO exports the teacher by default (the paper evaluates the teacher) and the student on
request, in encoder_pretrained.tar and the snapshots alike; with ``init_encoder`` the EMA target starts
from the loaded weights, not from the random ones it was copied from."""
from __future__ import annotations

import pytest
import torch

from conftest import run_inproc, write_class_image, write_yaml

VIT = "vit:img=16,patch=4,dim=32,depth=2,heads=2,pool=avg"


def images(root, n=8):
    for i in range(n):
        write_class_image(root / f"i{i:02d}.png", i % 3, size=16, seed=i)
    return root


def pretrain(tmp_path, name, **over):
    from utility.runs.pretrain import main

    cfg = {"name": name, "dataset_base_dir": str(images(tmp_path / "imgs")), "data_format": ".png",
           "resnet": VIT, "image_size": 16, "shape_desired": [16, 16], "batch_size": 4, "epochs": 2,
           "num_workers": 0, "optimizer": "AdamW", "lr": 1e-3, "enc_save_frequency": 1, "device": "cpu",
           "verbose": False, "seed": 3, "output_root": str(tmp_path / "out"), **over}
    write_yaml(tmp_path / f"{name}.yaml", cfg)
    proc = run_inproc(main, ["-c", tmp_path / f"{name}.yaml"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "out" / "pretraining" / name
    model = torch.load(run / "checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]
    part = lambda prefix: {k[len(prefix):]: v for k, v in model.items() if k.startswith(prefix)}  # noqa: E731
    return run, part("encoder."), part("target_encoder.")


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


DINO = {"out_dim": 16, "hidden": 16, "bottleneck": 8, "local_crops": 0, "tau_base": 0.5}


@pytest.mark.e2e
@pytest.mark.parametrize("export", ["teacher", "student"])
def test_dino_hands_on_the_teacher_unless_told_otherwise(tmp_path, export):
    settings = DINO if export == "teacher" else {**DINO, "export": "student"}  # teacher is the default
    run, student, teacher = pretrain(tmp_path, f"d_{export}", method="dino", method_settings=settings)
    assert not same(student, teacher)  # tau 0.5: the two differ after 4 steps
    want = teacher if export == "teacher" else student
    for f in ("encoder_pretrained.tar", "encoder_2.tar"):  # the hand-on file and the last snapshot
        assert same(torch.load(run / f, map_location="cpu", weights_only=True), want), f


@pytest.mark.e2e
@pytest.mark.parametrize("method,settings", [("byol", {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 16}),
                                             ("dino", DINO)])
def test_init_encoder_also_starts_the_momentum_target(tmp_path, method, settings):
    from utility.models import build_encoder

    torch.manual_seed(11)
    given = build_encoder(VIT)[0].state_dict()
    torch.save(given, tmp_path / "init.tar")
    # lr 1e-12: the online weights stay the loaded ones (to float precision), so the EMA target does too if
    # and only if it started from them (a random start stays a mix of random and loaded weights)
    run, student, teacher = pretrain(tmp_path, f"i_{method}", method=method, method_settings=settings, lr=1e-12,
                                     weight_decay=0.0, init_encoder=str(tmp_path / "init.tar"))
    for k, v in given.items():
        torch.testing.assert_close(student[k], v, rtol=0, atol=1e-6)
        torch.testing.assert_close(teacher[k], v, rtol=0, atol=1e-6, msg=lambda m: f"target {k}: {m}")
