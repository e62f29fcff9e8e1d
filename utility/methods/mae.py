"""MAE (He et al. 2022): masked autoencoders. A random ``mask_ratio`` of each image's patches is dropped,
the ViT encoder sees only the visible ones (with their position embedding and the class token), and a
lightweight transformer decoder, given the encoded tokens plus a shared mask token at every dropped
position (fixed 2-D sine-cosine position embedding), predicts the pixels of the dropped patches. The
loss is the mean squared error on the masked patches only, against per-patch normalised pixels
(``norm_pix_loss``: mean and unbiased variance of each target patch, eps 1e-6, as the paper's code).
Defaults of the paper: mask ratio 0.75, decoder 512 wide, 8 blocks, 16 heads.

The number of masked patches is exactly ``L - int(L * (1 - mask_ratio))`` per image. The masks come
from the method's own generator (seeded from the run's random state, kept in checkpoint_last.pt), drawn
for the global batch and sliced per process, so two processes mask as one process does; the loss is
a per-image mean over equally many masked patches, so DDP's gradient average is the global one.
Only ViT encoders (utility/models/vit.py) are accepted.
"""
from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn

from utility.data.preprocess import conform_channels
from utility.errors import UserError
from utility.methods.ssl_base import MethodSettings, SSLMethod, as_float
from utility.models.vit import is_vit
from utility.distributed import rank, world_size


class MAESettings(MethodSettings):
    mask_ratio: Annotated[float, Field(gt=0, lt=1)] = 0.75
    decoder_dim: Annotated[int, Field(ge=1)] = 512
    decoder_depth: Annotated[int, Field(ge=1)] = 8
    decoder_heads: Annotated[int, Field(ge=1)] = 16
    norm_pix_loss: bool = True


def sincos_2d(dim: int, gh: int, gw: int) -> torch.Tensor:
    """[gh*gw, dim] fixed position embedding: half the channels encode the row, half the column, each
    as sin/cos of the position times frequencies 1/10000^(2i/(dim/2))."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / max(quarter, 1))
    rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64),
                                indexing="ij")
    parts = []
    for pos in (rows.reshape(-1), cols.reshape(-1)):
        angle = pos[:, None] * omega[None]
        parts += [angle.sin(), angle.cos()]
    emb = torch.cat(parts, 1)
    return torch.nn.functional.pad(emb, (0, dim - emb.shape[1])).float()


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)(W/p), p*p*C], patches row-major as the patch embedding orders its tokens."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """Mean over masked patches of the per-patch mean squared error (targets normalised per patch)."""
    if norm_pix:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    per_patch = (pred - target).pow(2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


def keep_count(n_patches: int, ratio: float) -> int:
    return int(n_patches * (1 - ratio))


class MAENet(nn.Module):
    """forward(images, noise [B, L]) -> (predicted pixels, target pixels, mask) per patch; mask 1 = dropped."""

    def __init__(self, encoder: nn.Module, width: int, s: MAESettings) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        self.encoder, self.ratio = encoder, s.mask_ratio
        self.patch = int(encoder.patch_embed.patch_size[0])
        self.prefix = int(encoder.num_prefix_tokens)
        chans = int(encoder.patch_embed.proj.in_channels)
        self.embed = nn.Linear(width, s.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, s.decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.blocks = nn.Sequential(*[Block(s.decoder_dim, s.decoder_heads, 4.0, qkv_bias=True)
                                      for _ in range(s.decoder_depth)])
        self.norm = nn.LayerNorm(s.decoder_dim)
        self.pred = nn.Linear(s.decoder_dim, self.patch * self.patch * chans)

    def encode_visible(self, x: torch.Tensor, noise: torch.Tensor):
        enc = self.encoder
        t = enc.norm_pre(enc.patch_drop(enc._pos_embed(enc.patch_embed(x))))
        prefix, patches = t[:, :self.prefix], t[:, self.prefix:]
        n, length, dim = patches.shape
        keep = keep_count(length, self.ratio)
        shuffle = torch.argsort(noise, dim=1)
        restore = torch.argsort(shuffle, dim=1)
        visible = torch.gather(patches, 1, shuffle[:, :keep, None].expand(-1, -1, dim))
        mask = torch.ones(n, length, device=x.device, dtype=patches.dtype)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, restore)
        h = enc.norm(enc.blocks(torch.cat([prefix, visible], 1)))
        return h, restore, mask

    def forward(self, x: torch.Tensor, noise: torch.Tensor):
        h, restore, mask = self.encode_visible(x, noise)
        d = self.embed(h)
        n, length = mask.shape
        tokens = torch.cat([d[:, self.prefix:], self.mask_token.expand(n, length - (d.shape[1] - self.prefix), -1)], 1)
        tokens = torch.gather(tokens, 1, restore[..., None].expand(-1, -1, d.shape[-1]))
        gh, gw = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        pos = sincos_2d(d.shape[-1], gh, gw).to(d.device, d.dtype)
        d = torch.cat([d[:, :self.prefix], tokens + pos[None]], 1)
        out = self.pred(self.norm(self.blocks(d)))[:, self.prefix:]
        return out, patchify(x, self.patch), mask


class MAEMethod(SSLMethod):
    name, label, Settings = "mae", "MAE", MAESettings
    min_batch = 1  # per-image loss, LayerNorm only

    def __init__(self, views, settings: MAESettings, in_channels: int = 3, bad=None) -> None:
        super().__init__(views, settings, in_channels, bad)
        seed = int(torch.randint(0, 2**62, (1,)))  # from the run's seeded state: same on every process
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def build_model(cls, encoder: nn.Module, width: int, s: MAESettings) -> nn.Module:
        if not is_vit(encoder):
            raise UserError("method mae needs a ViT encoder (resnet: vit:img=..,patch=..,dim=..,depth=.. or a timm "
                            "ViT name); it masks patches of a Vision Transformer")
        return MAENet(encoder, width, s)

    def noise(self, n_local: int, n_patches: int, device: torch.device) -> torch.Tensor:
        """Uniform noise for the global batch (every process draws it), this process's rows."""
        full = torch.rand(n_local * world_size(), n_patches, generator=self.generator)
        return full[rank() * n_local:(rank() + 1) * n_local].to(device)

    def objective(self, out) -> torch.Tensor:
        pred, target, mask = out
        return mae_loss(pred, target, mask.to(pred.dtype), self.settings.norm_pix_loss)

    def train_loss(self, model: nn.Module, batch: dict[str, Any], ctx):
        x = self.valid_images(batch, ctx, self.min_batch)
        if x is None:
            return None, 0
        with torch.autocast(ctx.device.type, enabled=False):
            v = self.views.many(x.float(), 1)[0]
        if self.in_channels == 1:
            v = conform_channels(v, 1)
        net = model.module if hasattr(model, "module") else model
        patch = net.patch
        if v.shape[-1] % patch or v.shape[-2] % patch:
            raise UserError(f"image_size {v.shape[-1]} is not a multiple of the ViT's patch size {patch} (MAE)")
        out = model(v, self.noise(v.shape[0], (v.shape[-2] // patch) * (v.shape[-1] // patch), v.device))
        with torch.autocast(ctx.device.type, enabled=False):
            return self.objective(as_float(out)), int(x.shape[0])

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

