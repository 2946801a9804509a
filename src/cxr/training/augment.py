"""Augmentation and normalization on whole batches, with torch ops (same code on GPU and CPU).

Input: uint8 (B, 1, S, S) straight from the cache, already on the device. Training: one affine
warp per image (random resized crop to the model's size + a small rotation, via affine_grid /
grid_sample), then brightness/contrast jitter, then normalization. Evaluation: the whole image
resized to the model's size (no crop). `cxr evaluate` and `cxr predict` call this same
`eval_transform` on a square made exactly as the cache makes it (cxr.inference.runtime), so validation,
evaluation and prediction feed the model identical pixels. Horizontal flip is off by default: it moves the heart.

Random parameters come from a CPU torch.Generator, so a seed gives the same batch on any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cxr.training.config import AugmentConfig


def normalize(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 or [0, 1] float -> (x/255 - mean) / std, float32."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    return (x - mean) / std


def eval_transform(x: torch.Tensor, size: int, mean: float, std: float) -> torch.Tensor:
    """The whole image at the model's size, normalized."""
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return normalize(x, mean, std)


def train_transform(
    x: torch.Tensor,
    size: int,
    mean: float,
    std: float,
    cfg: AugmentConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random resized crop + rotation + brightness/contrast on a batch, then normalize."""
    b = x.shape[0]
    g = generator

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=g) * (hi - lo) + lo

    # Crop: area fraction and aspect ratio -> half-widths in normalized coordinates (full = 1).
    area = uniform(cfg.scale_min, 1.0)
    log_r = uniform(-math.log(cfg.ratio_max), math.log(cfg.ratio_max))
    ratio = torch.exp(log_r)
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - w)
    cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - h)
    angle = uniform(-cfg.rotation, cfg.rotation) * (math.pi / 180.0)
    flip = torch.ones(b)
    if cfg.hflip:
        flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Output coords -> input coords: input = R(angle) @ diag(w * flip, h) @ out + centre.
    theta = torch.stack(
        [
            torch.stack([w * flip * cos, -h * sin, cx], dim=1),
            torch.stack([w * flip * sin, h * cos, cy], dim=1),
        ],
        dim=1,
    )
    contrast = uniform(1 - cfg.contrast, 1 + cfg.contrast)
    brightness = uniform(-cfg.brightness, cfg.brightness)

    dev = x.device
    # One small host-to-device copy per batch, from pinned memory and asynchronous: a plain
    # .to("cuda") of a pageable tensor would make the CPU wait for the GPU's queue every step.
    params = torch.cat([theta.reshape(b, 6), contrast[:, None], brightness[:, None]], dim=1)
    if dev.type == "cuda":
        params = params.pin_memory().to(dev, non_blocking=True)
    theta = params[:, :6].reshape(b, 2, 3)
    contrast, brightness = params[:, 6].view(b, 1, 1, 1), params[:, 7].view(b, 1, 1, 1)

    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - m) * contrast + m + brightness
    x = x.clamp_(0.0, 1.0)
    return normalize(x, mean, std)
