"""Class activation maps with the ``grad-cam`` package (Grad-CAM, Grad-CAM++, EigenCAM) on test images.

Classification: for every class, the first N test images of that class (multi-label: with that label
positive, so an image gets one map per positive label), each explained for its class. Segmentation:
for every foreground class, the first N test images whose mask holds the class, explained by the
summed class score over the predicted pixels of the class (the true pixels when none is predicted).
The target layer defaults to the encoder's last block with a spatial output (ResNet: ``encoder.layer4``);
CNN encoders (ViTs' token outputs would need a reshape, not provided).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from utility.analysis.features import block_names
from utility.data.preprocess import conform_channels
from utility.errors import UserError

METHODS = ("gradcam", "gradcam++", "eigencam")
NOT_MAPS = ("head", "norm", "fc_norm", "pre_logits")  # final blocks of timm encoders that output vectors


def cam_class(method: str) -> type:
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus

    return {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM}[method]


def target_layer(model: nn.Module, name: Optional[str]) -> tuple[str, nn.Module]:
    """The named module, or the encoder's last block; an unknown name lists the valid ones."""
    blocks = block_names(model)
    maps = [b for b in blocks if b.split(".")[-1] not in NOT_MAPS] or blocks
    name = name or maps[-1]
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        near = [n for n in modules if n.count(".") <= blocks[-1].count(".") + 1 and n.startswith(tuple(blocks))]
        raise UserError(f"unknown Grad-CAM layer '{name}'; valid layers include {', '.join(near)} "
                        "(any name of model.named_modules())")
    return name, modules[name]


def compute_cams(model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: list[Any],
                 method: str = "gradcam") -> np.ndarray:
    """[B, H, W] maps in [0, 1] (each scaled to its own maximum) at the input resolution."""
    with cam_class(method)(model=model, target_layers=[layer]) as cam:
        return cam(input_tensor=images, targets=targets)


def class_target(c: int) -> Any:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return ClassifierOutputTarget(c)


def seg_target(model: nn.Module, image: torch.Tensor, truth: np.ndarray, c: int) -> Any:
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    with torch.no_grad():
        pred = model(image[None]).argmax(dim=1)[0].cpu().numpy()
    mask = pred == c if (pred == c).any() else truth == c
    return SemanticSegmentationTarget(c, mask.astype(np.float32))


def pick_images(subject: Any, per_class: int, split: str = "test") -> dict[int, list[int]]:
    """{class: the first ``per_class`` indices of the split that show it}; too few is an error."""
    ds = subject.data.datasets[split]
    sp = subject.data.indexed.splits[split]
    classes = subject.classes
    first = 1 if subject.segmentation else 0  # background gets no map
    shown: dict[int, list[int]] = {c: [] for c in range(first, len(classes))}
    for i in range(len(sp)):
        if subject.segmentation:
            present = set(np.unique(np.asarray(ds[i]["target"])).tolist())
        elif subject.multilabel:
            present = set(np.flatnonzero(np.asarray(sp.targets[i])).tolist())
        else:
            present = {int(sp.targets[i])}
        for c in present:
            if c in shown and len(shown[c]) < per_class:
                shown[c].append(i)
        if all(len(v) >= per_class for v in shown.values()):
            break
    short = {classes[c]: len(v) for c, v in shown.items() if len(v) < per_class}
    if short:
        have = ", ".join(f"{k}: {v}" for k, v in list(short.items())[:5])
        raise UserError(f"--images {per_class} asks for more images per class than the {split} split has "
                        f"({have}); use --images {max(1, min(short.values()))} or fewer")
    return shown


def display(x: torch.Tensor) -> np.ndarray:
    """An input tensor [C, H, W] as RGB [H, W, 3] in [0, 1] (grayscale repeated, min-max scaled)."""
    a = x.detach().float().cpu().numpy()
    a = a[:3] if a.shape[0] >= 3 else np.repeat(a[:1], 3, axis=0)
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return a.transpose(1, 2, 0).astype(np.float32)


def overlay(img: np.ndarray, cam: np.ndarray) -> np.ndarray:
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(img, cam, use_rgb=True, image_weight=0.55).astype(np.float32) / 255.0


def run_gradcam(subject: Any, model: nn.Module, layer: nn.Module, shown: dict[int, list[int]], method: str,
                split: str = "test") -> list[dict]:
    """One record per (class, image): index, file, the map and the overlay."""
    ds = subject.data.datasets[split]
    sp = subject.data.indexed.splits[split]
    in_ch = subject.cfg.in_channels or 3
    records = []
    for c, idx in shown.items():
        items = [ds[i] for i in idx]
        x = conform_channels(torch.stack([it["image"] for it in items]), in_ch).to(subject.device)
        if subject.segmentation:
            targets = [seg_target(model, x[k], np.asarray(items[k]["target"]), c) for k in range(len(idx))]
        else:
            targets = [class_target(c)] * len(idx)
        cams = compute_cams(model, layer, x, targets, method)
        for k, i in enumerate(idx):
            img = display(x[k])
            records.append({"class": subject.classes[c], "index": i, "file": str(sp.paths[i]), "cam": cams[k],
                            "overlay": overlay(img, cams[k])})
    return records


def save_records(records: list[dict], out: Path, method: str, layer_name: str) -> list[dict]:
    """grid.png, images/<class>_<k>_<stem>.png (upscaled to >= 128 px), cams.npz, and the CSV rows."""
    from PIL import Image

    from utility.analysis.plots import image_grid

    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, by_class = [], {}
    for r in records:
        by_class.setdefault(r["class"], []).append(r["overlay"])
        k = len(by_class[r["class"]]) - 1
        h, w = r["cam"].shape
        scale = max(1, 128 // max(h, w))
        img = Image.fromarray((r["overlay"] * 255).astype(np.uint8)).resize((w * scale, h * scale), Image.NEAREST)
        name = f"{r['class']}_{k}_{Path(r['file']).stem}.png"
        img.save(out / "images" / name)
        y, x = np.unravel_index(int(np.argmax(r["cam"])), r["cam"].shape)
        rows.append({"class": r["class"], "k": k, "index": r["index"], "file": r["file"], "image": f"images/{name}",
                     "max_y": int(y), "max_x": int(x)})
    image_grid(out / "grid.png", list(by_class.values()), list(by_class), f"{method} at {layer_name}")
    np.savez_compressed(out / "cams.npz", cams=np.stack([r["cam"] for r in records]),
                        index=np.array([r["index"] for r in records]), classes=np.array([r["class"] for r in records]))
    return rows
