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
        if path.is_symlink():
            raise UserError(f"model_path {path} is a broken symlink or a symlink loop; expected a weights file")
        raise UserError(f"model_path not found: {path} (a relative path is looked up in the current directory, then "
                        "in the repository; after `make demo` the demo's SimCLR encoder is "
                        "logs_and_checkpoints/pretraining/demo/SimCLR/encoder_pretrained.tar)")
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
    bad = [k for k, v in obj.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # NaN weights train to the end with NaN metrics: refuse them on load
        raise UserError(f"{path} holds NaN/inf values in {len(bad)} tensor(s), e.g. '{bad[0]}'; refused (these "
                        "weights are damaged or come from a run whose loss diverged)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


# Keys of accepted files that are deliberately not part of the plain network: the predecessor's loss
# buffers (class weights of its loss module) and a SimCLR checkpoint's projection head.
NOT_NETWORK = ("loss_criterion.", "projector.")


def split_state_dict(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(encoder part, head part) of any accepted file layout. Keys of a finetuned file outside
    ``encoder.``/``head.`` (and :data:`NOT_NETWORK`) stay in the encoder part as ``<key>`` so they are
    reported as unexpected, never dropped unseen."""
    if any(k.startswith("encoder.") for k in sd):
        enc = {k[len("encoder."):] if k.startswith("encoder.") else k: v for k, v in sd.items()
               if not k.startswith(("head.", *NOT_NETWORK))}
        head = {k[len("head."):]: v for k, v in sd.items() if k.startswith("head.")}
        return enc, head
    enc = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    return enc, {}


def key_list(keys: list[str], limit: int = 6) -> str:
    """``a, b, c`` (the first ``limit`` and how many in all), for one-paragraph errors."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_matching(module: nn.Module, sd: Mapping[str, torch.Tensor], source: Path, allow_partial: bool,
                  what: str = "encoder", prefix: str = "") -> list[str]:
    """Load ``sd`` into ``module`` key for key. Any missing, unexpected or differently shaped key is a
    UserError naming the keys, unless ``allow_partial`` (then what fits is loaded and the returned
    notes list every key not loaded). ``prefix`` is how the keys are named in messages."""
    own = module.state_dict()
    shape_bad = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    usable = {k: v for k, v in sd.items() if k in own and k not in shape_bad}
    missing = [k for k in own if k not in usable and k not in shape_bad and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    named = lambda ks: [prefix + k for k in ks]  # noqa: E731
    problems = []
    if missing:
        problems.append(f"{len(missing)} {what} weights missing from the file ({key_list(named(missing))})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys in the file ({key_list(named(unexpected))})")
    if shape_bad:
        k = shape_bad[0]
        problems.append(f"{len(shape_bad)} shape mismatches ({key_list(named(shape_bad))}; e.g. {prefix}{k}: "
                        f"file {tuple(sd[k].shape)}, model {tuple(own[k].shape)})")
    if problems and (not allow_partial or not usable):
        raise UserError(f"{source} does not fit this {what}: " + "; ".join(problems)
                        + ". Is model_name right? (allow_partial_load: true loads what fits)")
    module.load_state_dict(usable, strict=False)
    not_loaded = named(missing + shape_bad)
    if problems:
        problems.append(f"not loaded (left as initialised): {', '.join(not_loaded) or 'none'}")
        if unexpected:
            problems.append(f"ignored from the file: {', '.join(named(unexpected))}")
    return problems


def load_encoder_weights(encoder: nn.Module, enc_sd: Mapping[str, torch.Tensor], source: Path,
                         allow_partial: bool) -> list[str]:
    """Load into ``encoder``; report mismatches and fail on them unless partial loading is allowed."""
    return load_matching(encoder, enc_sd, source, allow_partial, "encoder")


def load_into_classifier(model: Classifier, path: Path, allow_partial: bool,
                         sd: Mapping[str, torch.Tensor] | None = None) -> list[str]:
    """Encoder weights always; head weights too when the file has a head of the same shape.

    The predecessor's finetuned classifier has a head without bias (``head.weight`` only): it loads
    with our head's bias set to 0, so the outputs equal the predecessor's model. A head of another
    number of classes is not loaded (a new head is trained; the returned note names its keys)."""
    enc, head = split_state_dict(read_state_dict(path) if sd is None else sd)
    notes = load_encoder_weights(model.encoder, enc, path, allow_partial)
    if head:
        own = model.head.state_dict()
        if set(head) == {"weight"} and "bias" in own:
            head = {**head, "bias": torch.zeros_like(own["bias"])}  # the predecessor's bias-free head
        if set(head) == set(own) and all(head[k].shape == v.shape for k, v in own.items()):
            model.head.load_state_dict(head)
        else:
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in head.items())
            notes.append(f"the file's head ({shapes}) has another number of classes or layout; a new head is "
                         f"trained: not loaded: {', '.join('head.' + k for k in head)}")
    return notes
