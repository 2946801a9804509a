"""Grad-CAM heatmaps and overlays (`render_cam`: the PNGs `cxr predict --cam` writes).

A small hook-based implementation rather than a library (e.g. pytorch-grad-cam): about sixty lines,
no extra dependency to pin, and it works for any timm backbone. For timm models it splits the
forward pass at `forward_features` / `forward_head`, so the feature map explained is exactly what the
classifier pools; for any other module it falls back to a forward hook on the last submodule that
produces a 4-D (N, C, h, w) output with more than one spatial position.

Grad-CAM (Selvaraju et al. 2017): weights = spatial mean of d logit / d features; heatmap =
ReLU(sum_c weight_c * features_c), upsampled bilinearly to the input's size and scaled to [0, 1].
We weight each position by its own gradient instead of the spatial mean (HiResCAM, Draelos & Carin
2020). For a head that starts with global average pooling (every timm backbone here) the gradient is
the same at every position, so this is exactly Grad-CAM; for cxr_small, whose head keeps a 4 x 4
grid, the mean weights cancel out and left 60% of the demo model's maps all zero, while the
per-position weights show what the head actually uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _features_and_logits(model, x):
    """(features with grad, logits) for one batch, using timm's split when the model has it."""
    import torch

    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        feats = model.forward_features(x)
        if feats.ndim == 4:
            return feats, model.forward_head(feats)
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.ndim == 4:
            captured.append(output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    spatial = [t for t in captured if t.shape[-1] * t.shape[-2] > 1]
    if not (spatial or captured):
        raise ValueError("Grad-CAM needs a model with a 4-D feature map")
    return (spatial or captured)[-1], logits


def grad_cams(model, x, label_indices: Sequence[int]) -> list[np.ndarray]:
    """One heatmap (H, W) float32 in [0, 1] per label index for a single input (C, H, W) or (1, C, H, W).

    The heatmap has the input's height and width. A label whose gradient map is all zero gets an
    all-zero heatmap.
    """
    import torch
    import torch.nn.functional as F

    if x.ndim == 3:
        x = x.unsqueeze(0)
    height, width = x.shape[-2:]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = x.detach().requires_grad_(False)
            feats, logits = _features_and_logits(model, x)
            maps = []
            for k, index in enumerate(label_indices):
                (grads,) = torch.autograd.grad(
                    logits[0, index], feats, retain_graph=k < len(label_indices) - 1
                )
                # per-position weights: equal to Grad-CAM's spatial mean under a pooled head
                cam = F.relu((grads * feats).sum(dim=1, keepdim=True)).detach()
                cam = F.interpolate(cam, size=(height, width), mode="bilinear", align_corners=False)
                cam = cam[0, 0]
                top = cam.max()
                cam = cam / top if top > 0 else torch.zeros_like(cam)
                maps.append(cam.clamp(0, 1).float().cpu().numpy())
    finally:
        model.train(was_training)
    return maps


def grad_cam(model, x, label_index: int) -> np.ndarray:
    """The Grad-CAM heatmap (H, W) float32 in [0, 1] of one label for one input."""
    return grad_cams(model, x, [label_index])[0]


def overlay(
    image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, cmap: str = "jet"
) -> np.ndarray:
    """RGB uint8 (H, W, 3): the grayscale (or RGB) image blended with the colour-mapped heatmap.

    The heatmap is resized to the image when their sizes differ.
    """
    from matplotlib import colormaps
    from PIL import Image

    image = np.asarray(image)
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != rgb.shape[:2]:
        heat = np.asarray(
            Image.fromarray(heat, mode="F").resize((rgb.shape[1], rgb.shape[0]), Image.BILINEAR)
        )
    colored = colormaps[cmap](np.clip(heat, 0, 1))[..., :3] * 255.0
    out = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colored
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# -- the overlays `cxr predict --cam` writes --------------------------------------------------

CAM_HEADER = 28  # pixels above the image: the label, the probability (and the decision)
CAM_SIDE = 512  # the image's longer side in the overlay
CAM_BAR = 64  # pixels right of the image: the colour bar and its scale
CAM_FLOOR = 0.2  # below this share of the map's peak the overlay is fully transparent
CAM_ALPHA = 0.6  # opacity at the peak


def cam_region(heat: np.ndarray, size: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """The heatmap over the image area only: resized to the square's side `size`, cut to `box`
    (top, left, height, width: where `fit_square` put the image) and scaled so its peak within
    the image is 1. A peak in the zero padding around the film no longer sets the scale."""
    from PIL import Image

    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != (size, size):
        heat = np.asarray(Image.fromarray(heat, mode="F").resize((size, size), Image.BILINEAR))
    top, left, h, w = box
    region = np.clip(heat[top : top + h, left : left + w], 0, None)
    peak = float(region.max()) if region.size else 0.0
    return region / peak if peak > 0 else np.zeros_like(region)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # a Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def render_cam(
    square: np.ndarray,
    heat: np.ndarray,
    box: tuple[int, int, int, int],
    title: str,
    cmap: str = "jet",
) -> np.ndarray:
    """The overlay PNG's pixels (RGB uint8): the image at its own aspect ratio (the padding of
    the square cut away), the heatmap drawn over it only where it is at least CAM_FLOOR of its
    peak and more opaque as it rises, `title` above it, and the colour bar right of it.

    The image occupies exactly rows CAM_HEADER.. and columns 0.. of its scaled size."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    top, left, h, w = box
    image = np.asarray(square)[top : top + h, left : left + w]
    region = cam_region(heat, square.shape[0], box)
    scale = CAM_SIDE / max(h, w)
    width, height = max(1, round(w * scale)), max(1, round(h * scale))
    gray = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR), np.float32)
    hot = np.asarray(Image.fromarray(region, mode="F").resize((width, height), Image.BILINEAR))
    colormap = colormaps[cmap]

    def blend(base: np.ndarray, values: np.ndarray) -> np.ndarray:
        alpha = CAM_ALPHA * np.clip((values - CAM_FLOOR) / (1 - CAM_FLOOR), 0, 1)[..., None]
        return (1 - alpha) * base + alpha * colormap(np.clip(values, 0, 1))[..., :3] * 255.0

    canvas = np.full((height + CAM_HEADER, width + CAM_BAR, 3), 255.0, dtype=np.float32)
    canvas[CAM_HEADER:, :width] = blend(np.repeat(gray[..., None], 3, axis=2), hot)
    # the colour bar: 1 at the top, 0 at the bottom, drawn as the overlay draws it on white
    ramp = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None].repeat(14, axis=1)
    canvas[CAM_HEADER:, width + 8 : width + 22] = blend(np.full((height, 14, 3), 255.0), ramp)
    out = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    draw.text((6, 5), title, fill=(0, 0, 0), font=_font(16))
    small = _font(11)
    for value in (1.0, 0.5, CAM_FLOOR, 0.0):
        y = CAM_HEADER + round((1 - value) * (height - 1))
        draw.line([(width + 22, y), (width + 26, y)], fill=(0, 0, 0))
        draw.text((width + 28, max(CAM_HEADER, y - 6)), f"{value:g}", fill=(0, 0, 0), font=small)
    draw.rectangle([width + 8, CAM_HEADER, width + 21, CAM_HEADER + height - 1], outline=(0, 0, 0))
    return np.asarray(out)
