"""Grad-CAM heatmaps and overlays.

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
