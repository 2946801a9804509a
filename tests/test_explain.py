"""Grad-CAM: shape, range, where it looks; overlay shape and dtype."""

import numpy as np
import pytest
import torch
from torch import nn

from cxr.inference.explain import grad_cam, grad_cams, overlay
from cxr.training.models import MODEL_NAMES, create_model


class _LeftDetector(nn.Module):
    """Logit 0 fires on bright pixels in the left half (the conv sees position via a fixed mask)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True))
        with torch.no_grad():
            self.features[0].weight.zero_()
            self.features[0].bias.zero_()
            self.features[0].weight[:, 0, 1, 1] = 1.0
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.head.weight.fill_(1.0)
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


def test_grad_cam_hook_fallback_finds_the_signal():
    torch.manual_seed(0)
    model = _LeftDetector().eval()
    x = torch.zeros(1, 32, 48)
    x[0, 8:16, 4:12] = 1.0
    cam = grad_cam(model, x, 0)
    assert cam.shape == (32, 48) and cam.dtype == np.float32
    assert cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    assert cam[8:16, 4:12].mean() > 5 * cam[20:, 30:].mean()


def test_overlay_is_rgb_uint8_at_image_size():
    img = (np.arange(40 * 30) % 256).astype(np.uint8).reshape(40, 30)
    heat = np.linspace(0, 1, 20 * 15, dtype=np.float32).reshape(20, 15)
    out = overlay(img, heat)
    assert out.shape == (40, 30, 3) and out.dtype == np.uint8
    # a zero heatmap leaves the image's brightness pattern visible
    assert not np.array_equal(out[..., 0], out[..., 2])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_grad_cam_for_every_supported_backbone(name):
    torch.manual_seed(0)
    model = create_model(name, num_labels=4, in_chans=1).eval()
    x = torch.randn(1, 1, 72, 88)  # not square, not a multiple of every stride
    maps = grad_cams(model, x, [0, 1, 2, 3])
    assert len(maps) == 4
    for cam in maps:
        assert cam.shape == (72, 88) and cam.dtype == np.float32
        assert np.isfinite(cam).all() and cam.min() >= 0.0 and cam.max() <= 1.0
    # random weights may give one label a negative-only map (all zero); not every label
    assert any(cam.max() == pytest.approx(1.0) for cam in maps)
    assert not model.training


def test_equals_classic_grad_cam_under_a_global_pool_head():
    """Per-position gradient weights reduce to Grad-CAM's spatial mean when the head pools first."""
    torch.manual_seed(1)
    model = create_model("resnet18", num_labels=3, in_chans=1).eval()
    x = torch.randn(1, 1, 64, 64)
    ours = grad_cams(model, x, [1])[0]
    feats = model.forward_features(x)
    (grads,) = torch.autograd.grad(model.forward_head(feats)[0, 1], feats)
    classic = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * feats).sum(1, keepdim=True))
    classic = torch.nn.functional.interpolate(classic, size=(64, 64), mode="bilinear")[0, 0]
    classic = (classic / classic.max()).detach().numpy()
    np.testing.assert_allclose(ours, classic, atol=1e-5)


def test_position_keeping_head_shows_where_the_head_looks():
    """cxr_small's head keeps a 4 x 4 grid. A label reading only the top-left cell (weights +1 there,
    -1/15 elsewhere: zero spatial mean) got an all-zero map from mean-weighted Grad-CAM; it must
    light up the top-left quarter of the image."""
    torch.manual_seed(0)
    model = create_model("cxr_small", num_labels=2, in_chans=1).eval()
    channels = model.classifier.in_features // 16
    pattern = torch.full((4, 4), -1.0 / 15)
    pattern[0, 0] = 1.0
    with torch.no_grad():
        model.classifier.weight[0] = pattern.flatten().repeat(channels)  # (C, 4, 4) flattened
    cam = grad_cam(model, torch.rand(1, 64, 64), 0)
    assert cam.max() == pytest.approx(1.0)
    assert cam[:16, :16].mean() > 5 * cam[32:, 32:].mean()
