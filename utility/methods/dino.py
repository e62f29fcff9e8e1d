"""DINO (Caron et al. 2021): self-distillation without labels. A student (encoder + DINO head) matches,
on every crop, the softmax a momentum teacher gives on the *other* global crops; the teacher's outputs
are centred (an EMA of their batch mean) and sharpened (a low temperature, warmed up linearly from
``warmup_teacher_temp``), which together keep it from collapsing.

Multi-crop: 2 global crops (the run's views: image_size, crop_scale) and ``local_crops`` small crops
(``local_size`` px, ``local_scale`` of the area) that only the student sees; a ViT encoder takes the
small crops through its interpolated position embedding. Defaults of the paper: head 2048 -> 256 ->
65536 with an L2-normalised bottleneck and a weight-normalised last layer, student temperature 0.1,
teacher 0.04, centre momentum 0.9, teacher EMA 0.996 cosine-scheduled to 1.

DDP: the loss is per image, so DDP's average of each process's mean is the global gradient; the centre
is updated from the teacher outputs' mean over every process (all_reduce), so it stays identical on all
ranks and equals one process on the global batch. The centre and the schedule position are the
method's state (checkpoint_last.pt).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from utility.data.preprocess import conform_channels
from utility.methods.heads import widths
from utility.methods.momentum import MomentumNet, cosine_tau
from utility.methods.ssl_base import MethodSettings, SSLMethod, as_float
from utility.distributed import is_dist, world_size


class DINOSettings(MethodSettings):
    out_dim: Annotated[int, Field(ge=1)] = 65536
    hidden: Annotated[int, Field(ge=1)] = 2048
    bottleneck: Annotated[int, Field(ge=1)] = 256
    head_layers: Annotated[int, Field(ge=1)] = 3
    student_temp: Annotated[float, Field(gt=0)] = 0.1
    teacher_temp: Annotated[float, Field(gt=0)] = 0.04
    warmup_teacher_temp: Annotated[float, Field(gt=0)] = 0.04
    teacher_temp_warmup: Annotated[float, Field(ge=0, le=1)] = Field(
        0.0, description="fraction of the training steps over which the teacher temperature rises linearly")
    center_momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    tau_base: Annotated[float, Field(ge=0, le=1)] = Field(0.996, description="teacher EMA rate at the start")
    local_crops: Annotated[int, Field(ge=0)] = 8
    local_size: Optional[Annotated[int, Field(ge=1)]] = Field(None, description="default image_size * 96/224")
    local_scale: tuple[float, float] = (0.05, 0.4)
    head_bn: bool = Field(False, description="BatchNorm after each hidden layer of the head (the paper's "
                          "use_bn_in_head option)")
    export: Literal["teacher", "student"] = Field(
        "teacher", description="the encoder handed on (encoder_pretrained.tar, snapshots, the monitor): the "
        "teacher, as the paper evaluates it, or the student")


class DINOHead(nn.Module):
    """MLP (GELU) to a bottleneck, L2-normalised, then a weight-normalised linear layer without bias whose
    row norms are fixed to 1 (the paper's ``norm_last_layer``)."""

    def __init__(self, width: int, s: DINOSettings) -> None:
        super().__init__()
        dims = widths(width, s.hidden, s.bottleneck, s.head_layers)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers += [nn.BatchNorm1d(b), nn.GELU()] if s.head_bn else [nn.GELU()]
        self.mlp = nn.Sequential(*layers)
        self.last = nn.Parameter(torch.empty(s.out_dim, s.bottleneck))
        nn.init.trunc_normal_(self.last, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(self.mlp(x), dim=-1), F.normalize(self.last, dim=1))


class DINONet(MomentumNet):
    """forward(global crops 1, global crops 2, local crops or None) -> (student outputs of every crop,
    teacher outputs of the global crops), crop-major: [crop 0 batch, crop 1 batch, ...]."""

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, local: Optional[list[torch.Tensor]] = None):
        g = torch.cat([x1, x2])
        student = [self.projector(self.encoder(g))]
        if local:  # one pass for all local crops (same size)
            student.append(self.projector(self.encoder(torch.cat(local))))
        return torch.cat(student), self.target(g)


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, student_temp: float,
              teacher_temp: float) -> torch.Tensor:
    """Mean over (teacher global crop a, student crop v != a) of the batch mean of
    sum_k -softmax((t_a - c) / T_t)_k * log_softmax(s_v / T_s)_k; inputs crop-major, 2 global crops."""
    n = teacher.shape[0] // 2
    q = F.softmax((teacher - center) / teacher_temp, dim=-1).detach().chunk(2)
    logp = F.log_softmax(student / student_temp, dim=-1).split(n)
    total, terms = student.new_zeros(()), 0
    for a in range(2):
        for v, lp in enumerate(logp):
            if v == a:
                continue
            total = total + (-q[a] * lp).sum(-1).mean()
            terms += 1
    return total / terms


def teacher_temperature(s: DINOSettings, step: int, total_steps: int) -> float:
    """Linear from warmup_teacher_temp to teacher_temp over the first teacher_temp_warmup of training."""
    warm = s.teacher_temp_warmup * max(total_steps, 1)
    if warm <= 0 or step >= warm:
        return s.teacher_temp
    return s.warmup_teacher_temp + (s.teacher_temp - s.warmup_teacher_temp) * step / warm


class DINOMethod(SSLMethod):
    name, label, Settings = "dino", "DINO", DINOSettings
    min_batch = 2  # a ResNet encoder's BatchNorm needs 2 images (the head has none; the loss is per image)

    def __init__(self, views, settings: DINOSettings, in_channels: int = 3, bad=None) -> None:
        super().__init__(views, settings, in_channels, bad)
        self.center = torch.zeros(1, settings.out_dim)
        self.step, self.total_steps = 0, 0
        self.local_views = None
        if views is not None and settings.local_crops:
            size = settings.local_size or max(1, round(views.image_size * 96 / 224))
            self.local_views = views.resized(size, settings.local_scale)

    @classmethod
    def build_model(cls, encoder: nn.Module, width: int, s: DINOSettings) -> nn.Module:
        return DINONet(encoder, DINOHead(width, s))

    def exported(self) -> str:
        return "target_encoder" if self.settings.export == "teacher" else "encoder"

    def objective(self, out) -> torch.Tensor:
        student, teacher = out
        center = self.center.to(teacher.device, teacher.dtype)
        loss = dino_loss(student, teacher, center, self.settings.student_temp,
                         teacher_temperature(self.settings, self.step, self.total_steps))
        self.update_center(teacher.detach())
        return loss

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """c = m c + (1 - m) mean of the teacher outputs over the global batch (every process)."""
        total = teacher.sum(0, keepdim=True)
        count = teacher.shape[0] * world_size()
        if is_dist():
            dist.all_reduce(total)
        m = self.settings.center_momentum
        self.center = self.center.to(teacher.device, teacher.dtype) * m + total / count * (1 - m)

    def train_loss(self, model: nn.Module, batch: dict[str, Any], ctx):
        x = self.valid_images(batch, ctx, self.min_batch)
        if x is None:
            return None, 0
        with torch.autocast(ctx.device.type, enabled=False):
            v1, v2 = self.views(x.float())
            local = self.local_views.many(x.float(), self.settings.local_crops) if self.local_views else []
        if self.in_channels == 1:
            v1, v2, local = conform_channels(v1, 1), conform_channels(v2, 1), [conform_channels(v, 1) for v in local]
        out = model(v1, v2, local)
        with torch.autocast(ctx.device.type, enabled=False):
            return self.objective(as_float(out)), int(x.shape[0])

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        self.step, self.total_steps = step, total_steps
        model.update_target(cosine_tau(self.settings.tau_base, step - 1, total_steps))

    def state_dict(self) -> dict:
        return {"center": self.center.detach().cpu(), "step": self.step, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict) -> None:
        self.center = state["center"].clone()
        self.step, self.total_steps = int(state["step"]), int(state["total_steps"])
