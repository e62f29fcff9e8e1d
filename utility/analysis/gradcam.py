"""Class activation maps with the ``grad-cam`` package (Grad-CAM, Grad-CAM++, EigenCAM) on test images.

Classification: for every class, the first N test images of that class (multi-label: with that label
positive, so an image gets one map per positive label), each explained for its class. Segmentation:
for every foreground class, the first N test images whose mask holds the class, explained by the
summed class score over the predicted pixels of the class (the true pixels when none is predicted).
The target layer defaults to the deepest encoder block whose map is at least 7x7 at the input size (at 32
px a ResNet's layer4 is 1x1, which says nothing about where: layer2 is 4x4... so layer1 there), else the
block with the largest map, for ResNets and ViTs alike. A ViT block's tokens are reshaped to the patch grid
(the class/register tokens dropped), the reshape_transform the grad-cam package documents for ViTs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from utility.analysis.features import block_names
from utility.data.preprocess import conform_channels
from utility.errors import UserError

METHODS = ("gradcam", "gradcam++", "eigencam")
NOT_MAPS = ("head", "norm", "fc_norm", "pre_logits", "patch_embed")  # vectors, or ViT's channels-last stem
MIN_SIDE = 7


def cam_class(method: str) -> type:
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus

    return {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM}[method]


def _vit_of(model: nn.Module) -> Optional[nn.Module]:
    from utility.models.vit import is_vit

    enc = getattr(model, "encoder", None)
    return enc if enc is not None and is_vit(enc) else None


def token_reshape(model: nn.Module, sample: torch.Tensor) -> Optional[Callable]:
    """For a ViT: tokens [B, prefix + h*w, D] -> maps [B, D, h, w] (grad-cam's reshape_transform)."""
    vit = _vit_of(model)
    if vit is None:
        return None
    from utility.models.vit import tokens_to_grid

    p = int(vit.patch_embed.patch_size[0])
    grid = (sample.shape[-2] // p, sample.shape[-1] // p)
    return lambda t: tokens_to_grid(t, int(vit.num_prefix_tokens), grid)


@torch.no_grad()
def map_sides(model: nn.Module, names: list[str], sample: torch.Tensor) -> dict[str, tuple[int, int]]:
    """(h, w) of each named block's output map for ``sample`` [C, H, W] (ViT tokens: the patch grid)."""
    modules, sides = dict(model.named_modules()), {}
    reshape = token_reshape(model, sample)

    def hook(name: str) -> Callable:
        def f(_m: nn.Module, _i: Any, out: Any) -> None:
            t = out[-1] if isinstance(out, (list, tuple)) else out
            if t.ndim == 3 and reshape is not None:
                try:
                    t = reshape(t)
                except RuntimeError:
                    return
            if t.ndim == 4:
                sides[name] = (int(t.shape[-2]), int(t.shape[-1]))
        return f

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    was = model.training
    model.eval()
    try:
        model(sample[None].to(next(model.parameters()).device))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return sides


def default_layer(model: nn.Module, sample: torch.Tensor) -> str:
    """The deepest block whose map is at least 7x7, else the deepest of those with the largest map (ViT: its
    norm1)."""
    blocks = block_names(model)
    maps = [b for b in blocks if b.split(".")[-1] not in NOT_MAPS] or blocks
    sides = map_sides(model, maps, sample)
    if not sides:
        return maps[-1]
    big = [n for n in maps if n in sides and min(sides[n]) >= MIN_SIDE]
    if not big:
        largest = max(min(v) for v in sides.values())
        big = [n for n in maps if n in sides and min(sides[n]) == largest]
    # a ViT block's output patch tokens no longer reach the class token: explain the input of its attention
    # (norm1), the layer the grad-cam package's ViT tutorial uses
    inner = f"{big[-1]}.norm1"
    return inner if _vit_of(model) is not None and inner in dict(model.named_modules()) else big[-1]


def target_layer(model: nn.Module, name: Optional[str], sample: Optional[torch.Tensor] = None
                 ) -> tuple[str, nn.Module]:
    """The named module, or :func:`default_layer` for ``sample`` (without one: the encoder's last block
    with a map); an unknown name lists the valid ones."""
    blocks = block_names(model)
    maps = [b for b in blocks if b.split(".")[-1] not in NOT_MAPS] or blocks
    name = name or (default_layer(model, sample) if sample is not None else maps[-1])
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        near = [n for n in modules if n.count(".") <= blocks[-1].count(".") + 1 and n.startswith(tuple(blocks))]
        raise UserError(f"unknown Grad-CAM layer '{name}'; valid layers include {', '.join(near)} "
                        "(any name of model.named_modules())")
    return name, modules[name]


def compute_cams(model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: list[Any],
                 method: str = "gradcam") -> np.ndarray:
    """[B, H, W] maps in [0, 1] (each scaled to its own maximum) at the input resolution."""
    with cam_class(method)(model=model, target_layers=[layer], reshape_transform=token_reshape(model, images[0])) as cam:
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
