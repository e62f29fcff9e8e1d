"""The predecessor's U-Net decoder (``unet_decoder: predecessor``), so its finetuned U-Net files load exactly.

The predecessor built its segmentation network with the ``backboned_unet`` package (mkisantal/backboned-unet)
and stored it under ``unet.``: ``unet.backbone.*`` (a torchvision ResNet), ``unet.upsample_blocks.<i>.*`` and
``unet.final_conv.*``. That decoder differs from smp's (transposed-conv upsampling, other widths, a last
block at full resolution without a skip), so smp cannot hold those weights; this is our own
implementation of that architecture with the same module names, so the files load key for key and
our own files of this variant have the predecessor's layout.

Architecture (facts of backboned_unet): skips are the backbone's ``relu`` (1/2), ``layer1`` (1/4),
``layer2`` (1/8) and ``layer3`` (1/16) outputs; ``layer4`` (1/32) enters the decoder. Block i
(``decoder_filters`` (256, 128, 64, 32, 16) by default) upsamples x2 and meets the skip of the matching
resolution (the last block has none):
- parametric (default): ``up`` ConvTranspose2d(k4, s2, p1) -> ``bn1`` -> ReLU -> concat skip ->
  ``conv2`` 3x3 -> ``bn2`` -> ReLU;
- bilinear: interpolate x2 -> concat skip -> ``conv1`` 3x3 -> ``bn1`` -> ReLU -> ``conv2`` -> ``bn2`` -> ReLU.
Convolutions have a bias only without BatchNorm; ``final_conv`` is a 1x1 convolution with bias.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from utility.errors import UserError
from utility.models.encoders import TORCHVISION_ENCODERS, FreezableEncoder, build_encoder

DEFAULT_FILTERS = (256, 128, 64, 32, 16)
SKIPS = ("layer3", "layer2", "layer1", "relu", None)  # deepest first, as the decoder meets them
# never part of the network's output: the backbone's unused classifier (the loss buffers ``loss_criterion.*``
# are left out by predecessor_unet_state)
IGNORED_PREFIXES = ("backbone.fc.",)


class UpBlock(nn.Module):
    """One decoder stage: x2 upsampling, skip concatenation, conv-bn-relu pairs."""

    def __init__(self, ch_in: int, ch_out: int, skip_in: int, parametric: bool, use_bn: bool) -> None:
        super().__init__()
        self.parametric = parametric
        if parametric:
            self.up = nn.ConvTranspose2d(ch_in, ch_out, 4, stride=2, padding=1, bias=not use_bn)
            conv2_in = ch_out + skip_in
        else:
            self.conv1 = nn.Conv2d(ch_in + skip_in, ch_out, 3, padding=1, bias=not use_bn)
            conv2_in = ch_out
        self.bn1 = nn.BatchNorm2d(ch_out) if use_bn else nn.Identity()
        self.conv2 = nn.Conv2d(conv2_in, ch_out, 3, padding=1, bias=not use_bn)
        self.bn2 = nn.BatchNorm2d(ch_out) if use_bn else nn.Identity()

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor]) -> torch.Tensor:
        if self.parametric:
            x = F.relu(self.bn1(self.up(x)))
        else:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        if not self.parametric:
            x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))


class BackbonedUNet(nn.Module):
    """``backbone`` (torchvision ResNet, fc removed), ``upsample_blocks``, ``final_conv``."""

    def __init__(self, encoder: str, classes: int, in_channels: int = 3,
                 decoder_filters: Sequence[int] = DEFAULT_FILTERS, parametric: bool = True,
                 use_bn: bool = True) -> None:
        super().__init__()
        if encoder.lower() not in TORCHVISION_ENCODERS:
            raise UserError(f"unet_decoder 'predecessor' needs a torchvision ResNet encoder "
                            f"({', '.join(TORCHVISION_ENCODERS)}), not '{encoder}'")
        self.backbone, _ = build_encoder(encoder, in_channels)
        skip_ch, out_ch = self._channels(in_channels)
        filters = list(decoder_filters)[:len(SKIPS)]
        ins = [out_ch] + filters[:-1]
        self.upsample_blocks = nn.ModuleList(
            UpBlock(i, o, skip_ch.get(s, 0), parametric, use_bn) for i, o, s in zip(ins, filters, SKIPS))
        self.final_conv = nn.Conv2d(filters[-1], classes, 1)

    def _channels(self, in_channels: int) -> tuple[dict[str, int], int]:
        with torch.no_grad():
            _, feats = self._features(torch.zeros(1, in_channels, 64, 64), probe=True)
        return {k: v.shape[1] for k, v in feats.items() if k != "layer4"}, feats["layer4"].shape[1]

    def _features(self, x: torch.Tensor, probe: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = self.backbone
        was = b.training
        if probe:
            b.eval()
        feats: dict[str, torch.Tensor] = {}
        x = feats["relu"] = b.relu(b.bn1(b.conv1(x)))
        x = b.maxpool(x)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = feats[name] = getattr(b, name)(x)
        b.train(was)
        return x, feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, feats = self._features(x)
        for skip, block in zip(SKIPS, self.upsample_blocks):
            x = block(x, feats[skip] if skip is not None else None)
        return self.final_conv(x)


class PredecessorUNet(FreezableEncoder, nn.Module):
    """The plain network: ``unet`` = :class:`BackbonedUNet` (state dict keys ``unet.backbone.*``,
    ``unet.upsample_blocks.*``, ``unet.final_conv.*``, as in the predecessor's files). Inputs whose
    sides are not multiples of 32 are padded and the output cropped back (the predecessor required them)."""

    def __init__(self, encoder: str, classes: int, in_channels: int = 3, **decoder) -> None:
        super().__init__()
        self.unet = BackbonedUNet(encoder, classes, in_channels, **decoder)
        self.frozen_blocks: list[nn.Module] = []

    @property
    def encoder_core(self) -> nn.Module:
        """The module whose state dict matches our encoder files."""
        return self.unet.backbone

    def _freeze_root(self) -> nn.Module:
        return self.unet.backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from utility.models.unet import pad_to_multiple

        h, w = x.shape[-2:]
        return self.unet(pad_to_multiple(x, 32))[..., :h, :w]


def predecessor_unet_state(sd: Mapping[str, torch.Tensor]) -> Optional[dict[str, torch.Tensor]]:
    """The file's keys relative to ``unet.`` when it holds a backboned_unet (else None)."""
    for prefix in ("unet.", ""):
        if any(k.startswith(prefix + "upsample_blocks.") for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)
                    and not k.startswith("loss_criterion.")}
    return None


def decoder_of(sd: Mapping[str, torch.Tensor]) -> dict:
    """The decoder settings a predecessor U-Net state (keys relative to ``unet.``) was built with."""
    n = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("upsample_blocks."))
    filters = tuple(int(sd[f"upsample_blocks.{i}.conv2.weight"].shape[0]) for i in range(n)
                    if f"upsample_blocks.{i}.conv2.weight" in sd)
    return {"decoder_filters": filters or DEFAULT_FILTERS,
            "parametric": "upsample_blocks.0.up.weight" in sd,
            "use_bn": "upsample_blocks.0.bn2.weight" in sd}


def load_into_predecessor_unet(model: PredecessorUNet, path, sd: Mapping[str, torch.Tensor],
                               allow_partial: bool) -> list[str]:
    """A predecessor U-Net file (``unet.*``; ours of this variant too) fills the whole network; an
    encoder file (or a finetuned classifier) fills the backbone. :data:`IGNORED_PREFIXES` are left out
    on purpose; any other mismatch fails unless ``allow_partial``."""
    from utility.models.weights import load_matching, split_state_dict

    state = predecessor_unet_state(sd)
    if state is None:
        enc, _ = split_state_dict(sd)
        return load_matching(model.unet.backbone, enc, path, allow_partial, "encoder")
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    return load_matching(model.unet, state, path, allow_partial, "U-Net", prefix="unet.")
