"""Features of a network on a split: pooled encoder embeddings (cached as .npz) and the pooled
output of every encoder block (for CKA and layer-wise kNN).

Pooling: a [B, C, H, W] map becomes its spatial mean [B, C]; a [B, N, C] token sequence its mean
over tokens; [B, C] stays. Batches go through the network in eval mode without gradients.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from utility.data.badfiles import drop_invalid
from utility.data.preprocess import conform_channels


def pool(t: Any) -> torch.Tensor:
    if isinstance(t, (list, tuple)):  # U-Net encoders return a list of maps: the deepest one
        t = t[-1]
    t = t.float()
    if t.ndim == 4:
        return t.mean(dim=(2, 3))
    if t.ndim == 3:
        return t.mean(dim=1)
    return t.flatten(1)


def encoder_core(model: nn.Module) -> nn.Module:
    return getattr(model, "encoder_core", None) or model.encoder  # type: ignore[return-value]


STAGE_LISTS = ("stages", "blocks", "layers", "features")  # timm containers whose children are the blocks


def block_names(model: nn.Module) -> list[str]:
    """Names (in ``model.named_modules()``) of the encoder's blocks with parameters, input to output:
    its top-level children (ResNet ``encoder.conv1, encoder.bn1, encoder.layer1 .. encoder.layer4``),
    a timm ``stages``/``blocks`` list opened into its members (``encoder.blocks.0`` ...)."""
    enc = encoder_core(model)
    prefix = next(n for n, m in model.named_modules() if m is enc)
    names = []
    for n, m in enc.named_children():
        if not any(True for _ in m.parameters()):
            continue
        if n in STAGE_LISTS and isinstance(m, (nn.Sequential, nn.ModuleList)):
            names += [f"{prefix}.{n}.{c}" for c, sub in m.named_children() if any(True for _ in sub.parameters())]
        else:
            names.append(f"{prefix}.{n}")
    return names


def batches(loader: Any, device: torch.device, in_channels: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
    """(images on the device, targets, dataset indices) of every readable sample, in loader order."""
    for batch in loader:
        batch = drop_invalid(batch, "analysis", None)
        if batch is None:
            continue
        x = conform_channels(batch["image"].to(device), in_channels)
        yield x, batch["target"], np.asarray(batch["index"])


@torch.no_grad()
def embeddings(model: nn.Module, loader: Any, device: torch.device, in_channels: int) -> dict[str, np.ndarray]:
    """{"features" [N, D] float32, "targets", "index"} of the pooled encoder output."""
    feats, targets, index = [], [], []
    enc = model.encoder  # type: ignore[attr-defined]
    for x, y, idx in batches(loader, device, in_channels):
        feats.append(pool(enc(x)).cpu().numpy())
        targets.append(y.numpy())
        index.append(idx)
    if not feats:
        return {"features": np.zeros((0, 0), np.float32), "targets": np.zeros(0), "index": np.zeros(0, int)}
    return {"features": np.concatenate(feats).astype(np.float32), "targets": np.concatenate(targets),
            "index": np.concatenate(index)}


class BlockTap:
    """Forward hooks that keep the pooled output of the named modules of the last forward pass."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        modules = dict(model.named_modules())
        self.out: dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Callable:
        def hook(_m: nn.Module, _inp: Any, output: Any) -> None:
            self.out[name] = pool(output)
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def block_batches(model: nn.Module, loader: Any, device: torch.device, in_channels: int,
                  names: list[str]) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Per batch: {block name: pooled features [B, C] (float32, on the device)} and the targets."""
    tap = BlockTap(model, names)
    try:
        for x, y, _ in batches(loader, device, in_channels):
            model.encoder(x)  # type: ignore[attr-defined]
            yield dict(tap.out), y
    finally:
        tap.close()


def block_features(model: nn.Module, loader: Any, device: torch.device, in_channels: int,
                   names: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """All of a split: {block: [N, C]} and the targets."""
    feats: dict[str, list[np.ndarray]] = {n: [] for n in names}
    ys = []
    for out, y in block_batches(model, loader, device, in_channels, names):
        for n in names:
            feats[n].append(out[n].cpu().numpy())
        ys.append(y.numpy())
    return {n: np.concatenate(v) for n, v in feats.items()}, np.concatenate(ys)


def cache_key(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def cached_embeddings(subject: Any, split: str, cache_dir: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Embeddings of ``split`` from ``cache_dir/<task>_<split>_<key>.npz``, computed and saved when
    absent. The key covers the weights file's hash, model, task, split contents and preprocessing, so a
    stale file is never read."""
    ds = subject.data.datasets[split]
    sp = subject.data.indexed.splits[split]
    weights = subject.weights_key()  # the SHA-256 of the weights file's content
    key = cache_key(weights, subject.cfg.model_name, subject.cfg.in_channels, subject.task.name,
                    split, repr(ds.prep), [str(p) for p in sp.paths], [np.asarray(t).tolist() for t in sp.targets])
    path = cache_dir / f"{subject.task.name}_{split}_{key}.npz"
    found = read_cached(path, key, weights) if path.is_file() else None
    if found is not None:
        return path, found
    model = subject.network()
    emb = embeddings(model, subject.loader(split), subject.device, subject.cfg.in_channels or 3)
    emb["paths"] = np.asarray([str(sp.paths[i]) for i in emb["index"]])
    emb["key"] = np.asarray(key)
    emb["weights_sha256"] = np.asarray(weights)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **emb)
    tmp.replace(path)
    return path, emb


def read_cached(path: Path, key: str, weights: str) -> dict[str, np.ndarray] | None:
    """A cache file's arrays if it holds what its name promises: its recorded key and the content
    hash of the weights must match (a renamed file of other weights is not trusted), and it must be
    whole. Otherwise None (with a note): the embeddings are computed again and the file replaced."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:  # truncated or not an .npz: zipfile/numpy raise many types
        print(f"note: embedding cache {path} is damaged ({type(exc).__name__}); computing it again", file=sys.stderr)
        return None
    if str(data.get("key", "")) != key or str(data.get("weights_sha256", "")) != weights or "index" not in data:
        print(f"note: embedding cache {path} was made from other weights or settings (renamed?); computing it "
              "again", file=sys.stderr)
        return None
    return data
