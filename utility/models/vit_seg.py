"""Segmentation with a ViT encoder: a multi-level decoder on intermediate transformer blocks.

Why not the U-Net: a ViT has one resolution (the patch grid), so smp's U-Net has nothing to skip-connect.
Following UNETR (Hatamizadeh et al. 2022) in spirit, the decoder takes the patch tokens of ``levels``
evenly spaced blocks (the last one included) as feature maps, starts from the deepest, and at each step
doubles the resolution and fuses the next shallower block's map (itself brought up to that resolution by
transposed convolutions: the deeper the level, the more it is upsampled, as in UNETR); a full-resolution
convolution of the image is the last skip. Inputs whose sides are not multiples of the patch are padded
and the output cropped back; other input sizes than the encoder's are served by the position-embedding
interpolation of utility/models/vit.py. State dict: ``encoder.*`` (an encoder file loads into it key for
key), ``decoder.*``, ``segmentation_head.*``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utility.models.encoders import FreezableEncoder, build_encoder
from utility.models.unet import pad_to_multiple


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def up_block(cin: int, cout: int) -> nn.Sequential:
    """x2 resolution: transposed convolution, then a 3x3 convolution."""
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, stride=2), conv_block(cout, cout))


def level_indices(depth: int, levels: int) -> list[int]:
    """``levels`` block indices evenly spaced over ``depth`` blocks, the last block always included."""
    n = max(1, min(levels, depth))
    return sorted({depth - 1 - round(i * depth / n) for i in range(n)})


class ViTDecoder(nn.Module):
    """Deepest level -> shallower levels (each upsampled by transposed convolutions to the current
    resolution) -> the image's own full-resolution features."""

    def __init__(self, dim: int, levels: int, channels: int, in_channels: int, patch: int) -> None:
        super().__init__()
        ups = max(int(patch).bit_length() - 1, levels - 1)  # x2 steps from the patch grid to ~full resolution
        self.bottom = nn.Conv2d(dim, channels, 1)
        self.steps = nn.ModuleList(up_block(channels, channels) for _ in range(ups))
        # the i-th shallower level (deep -> shallow) is fused after step i: it needs i + 1 upsamplings
        self.skips = nn.ModuleList(
            nn.Sequential(*[up_block(dim if k == 0 else channels, channels) for k in range(s + 1)])
            for s in range(levels - 1))
        self.fuse = nn.ModuleList(conv_block(2 * channels, channels) for _ in range(levels - 1))
        self.image = conv_block(in_channels, channels)
        self.last = conv_block(2 * channels, channels)

    def forward(self, feats: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        x = self.bottom(feats[-1])
        shallower = feats[:-1][::-1]  # deep -> shallow
        for i, step in enumerate(self.steps):
            x = step(x)
            if i < len(shallower):
                skip = self.skips[i](shallower[i])
                x = self.fuse[i](torch.cat([x, F.interpolate(skip, size=x.shape[-2:], mode="nearest")], 1))
        x = F.interpolate(x, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return self.last(torch.cat([x, self.image(image)], 1))


class ViTSegNet(FreezableEncoder, nn.Module):
    """ViT encoder + :class:`ViTDecoder` + 1x1 head -> logits [B, classes, H, W] (classes with background)."""

    def __init__(self, encoder_name: str, classes: int, in_channels: int = 3, levels: int = 4,
                 channels: int = 64) -> None:
        super().__init__()
        self.encoder, dim = build_encoder(encoder_name, in_channels)
        self.patch = int(self.encoder.patch_embed.patch_size[0])
        self.indices = level_indices(len(self.encoder.blocks), levels)
        self.decoder = ViTDecoder(dim, len(self.indices), channels, in_channels, self.patch)
        self.segmentation_head = nn.Conv2d(channels, classes, 1)
        self.frozen_blocks: list[nn.Module] = []

    @property
    def encoder_core(self) -> nn.Module:
        """What encoder files fill (utility/models/unet.py's load_into_unet reads this)."""
        return self.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        xp = pad_to_multiple(x, self.patch)
        feats = self.encoder.forward_intermediates(xp, indices=self.indices, output_fmt="NCHW",
                                                   intermediates_only=True)
        return self.segmentation_head(self.decoder(feats, xp))[..., :h, :w]
