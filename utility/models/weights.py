"""Weight files: read safely, split into encoder and head, load with every mismatch reported.

Weight files are plain dicts loaded with ``weights_only=True``. Accepted by ``model_path`` and
``get_model``:
- a pretraining encoder file (``encoder_pretrained.tar``): the encoder's state dict, keys like a
  torchvision ResNet without ``fc`` (``conv1.weight``, ``layer1.0...``), no ``module.`` prefix;
- a torchvision-style state dict (with ``fc.*``: the classifier is dropped);
- a finetuned model (``finetuned_model.tar``): keys ``encoder.*`` and ``head.*``;
- a resume checkpoint of ours (the ``model`` entry is used).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from utility.errors import UserError
from utility.models.encoders import Classifier

def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a weights file safely and unwrap the usual containers."""
    if not path.is_file():
        raise UserError(f"model_path not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-tensor objects
        first = (str(exc).splitlines() or [""])[0].split(". ")[0][:160]
        raise UserError(f"cannot load weights from {path}: not a PyTorch weights file (truncated, damaged, or "
                        f"another kind of file; {type(exc).__name__}: {first})") from None
    for wrapper in ("model", "state_dict", "encoder", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def split_state_dict(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(encoder part, head part) of any accepted file layout."""
    if any(k.startswith("encoder.") for k in sd):
        enc = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
        head = {k[len("head."):]: v for k, v in sd.items() if k.startswith("head.")}
        return enc, head
    enc = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    return enc, {}


def load_encoder_weights(encoder: nn.Module, enc_sd: Mapping[str, torch.Tensor], source: Path,
                         allow_partial: bool) -> list[str]:
    """Load into ``encoder``; report mismatches and fail on them unless partial loading is allowed."""
    own = encoder.state_dict()
    shape_bad = [k for k, v in enc_sd.items() if k in own and own[k].shape != v.shape]
    usable = {k: v for k, v in enc_sd.items() if k in own and k not in shape_bad}
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in enc_sd if k not in own]
    problems = []
    if missing:
        problems.append(f"{len(missing)} encoder weights missing from the file (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys in the file (e.g. {unexpected[0]})")
    if shape_bad:
        k = shape_bad[0]
        problems.append(f"{len(shape_bad)} shape mismatches (e.g. {k}: file {tuple(enc_sd[k].shape)}, "
                        f"model {tuple(own[k].shape)})")
    if problems and (not allow_partial or not usable):
        raise UserError(f"{source} does not fit this encoder: " + "; ".join(problems)
                        + ". Is model_name right? (allow_partial_load: true loads what fits)")
    encoder.load_state_dict(usable, strict=False)
    return problems


def load_into_classifier(model: Classifier, path: Path, allow_partial: bool) -> list[str]:
    """Encoder weights always; head weights too when the file has a head of the same shape."""
    enc, head = split_state_dict(read_state_dict(path))
    notes = load_encoder_weights(model.encoder, enc, path, allow_partial)
    if head:
        own = model.head.state_dict()
        if all(k in head and head[k].shape == v.shape for k, v in own.items()):
            model.head.load_state_dict({k: head[k] for k in own})
        else:
            notes.append("the file's head has another number of classes; a new head is trained")
    return notes
