"""recipe: predecessor through the real entry points (tiny data, CPU, in-process through ``run_entry`` as
the scripts call it): what config.yaml records, the notice printed once, snapshot names, init_encoder
provenance."""
from __future__ import annotations

import pytest
import torch
import yaml

from conftest import run_inproc, write_class_image, write_yaml


@pytest.mark.e2e  # trains in-process
def test_finetune_records_recipe_and_resolved_defaults(tiny_setup):
    from utility.runs.finetune import main

    cfg = yaml.safe_load(tiny_setup["config"].read_text())
    cfg.update({"recipe": "predecessor", "w_m": None, "scheduler": "decay", "data_root": str(tiny_setup["data_root"]),
                "output_root": str(tiny_setup["out_root"])})
    write_yaml(tiny_setup["config"], cfg)
    proc = run_inproc(main, ["-c", tiny_setup["config"]], tiny_setup["cwd"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("recipe: predecessor in force (config has the predecessor's w_m)") == 1
    saved = yaml.safe_load((tiny_setup["out_root"] / "finetuning" / "t" / "run" / "config.yaml").read_text())
    assert saved["recipe"] == "predecessor" and saved["decay_per_epoch"] == 0.99


@pytest.mark.e2e  # trains in-process
def test_pretraining_snapshots_and_init_encoder(tmp_path):
    from utility.runs.pretrain import main

    data = tmp_path / "imgs"
    for i in range(8):  # one step of 8 per epoch
        write_class_image(data / f"i{i:02d}.png", i % 3, size=24, seed=i)
    first = tmp_path / "first.tar"
    torch.manual_seed(0)
    import torchvision
    enc = torchvision.models.resnet18()
    enc.fc = torch.nn.Identity()
    torch.save(enc.state_dict(), first)
    cfg = {"name": "IxR_2", "dataset_base_dir": str(data), "data_format": ".png", "resnet": "resnet50",
           "encoder_network": "resnet18", "image_size": 16, "shape_desired": [24, 24], "batch_size": 8, "epochs": 3,
           "num_workers": 0, "optimizer": "Adam", "lr": 1e-3, "projection_dim": 16, "enc_save_frequency": 2,
           "device": "cpu", "verbose": False, "recipe": "predecessor", "init_encoder": str(first),
           "output_root": str(tmp_path / "out")}
    write_yaml(tmp_path / "p.yaml", cfg)
    proc = run_inproc(main, ["-c", tmp_path / "p.yaml"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "out" / "pretraining" / "IxR_2"
    # 0-based epochs 0, 1, 2 with enc_save_frequency 2: encoder_0 and encoder_2 (modern: encoder_2 only)
    assert sorted(p.name for p in run.glob("encoder_*.tar")) == ["encoder_0.tar", "encoder_2.tar", "encoder_pretrained.tar"]
    prov = yaml.safe_load((run / "provenance.yaml").read_text())
    assert prov["init_encoder"] == str(first.resolve())
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["resnet"] == "resnet18" and saved["recipe"] == "predecessor" and saved["lr_rule"] == "predecessor"
