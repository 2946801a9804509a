"""Model factory: timm backbones with a multi-label head on one-channel input, plus a tiny CNN.

`create_model(name, num_labels=14, in_chans=1, pretrained=None)`:
- `pretrained=None`: random initialization;
- `pretrained="imagenet"`: timm's own download of ImageNet weights (a clear error when offline);
  timm sums the first convolution's RGB weights into one channel;
- `pretrained=<path>`: a state dict file (e.g. a timm checkpoint saved elsewhere) or a cxr checkpoint;
  a 3-channel first convolution is summed to `in_chans` the same way, and a classifier of another
  size is dropped. So is the classifier of a cxr checkpoint trained on other labels than `labels`
  (when given): the same number of outputs in another order must not load silently.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from cxr.core.errors import CxrError
from cxr.training.config import MODEL_NAMES

# cxr name -> timm name. cxr_small is ours: a few conv layers, for the CPU demo and tests.
TIMM_MODELS = {
    "densenet121": "densenet121",
    "resnet18": "resnet18",
    "resnet50": "resnet50",
    "efficientnet_b0": "efficientnet_b0",
    "convnext_tiny": "convnext_tiny",
}
# MODEL_NAMES (cxr.training.config, so the config checks names without importing torch) is these
# plus cxr_small.


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU stages with stride 2, average pooling to 4 x 4, a linear head.

    The 4 x 4 grid keeps coarse position (global pooling would not): which part of the chest a
    finding is in matters, and it lifts the demo's validate AUROC from about 0.87 to 0.99.

    Fast enough on two CPU cores at 128 px for the demo (a few seconds per epoch).
    """

    def __init__(self, num_classes: int = 14, in_chans: int = 1, width: int = 32) -> None:
        super().__init__()
        chans = [in_chans, width, width * 2, width * 4, width * 4]
        layers: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(chans):
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Linear(chans[-1] * 16, num_classes)

    # timm's split, so Grad-CAM (cxr.inference.explain) explains the feature map before the 4 x 4 pooling.
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits; with `pre_logits`, the pooled features the classifier reads (timm's meaning),
        which `cxr embed` stores as a checkpoint's embedding."""
        pooled = torch.flatten(self.pool(feats), 1)
        return pooled if pre_logits else self.classifier(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def create_model(
    name: str = "densenet121",
    num_labels: int = 14,
    in_chans: int = 1,
    pretrained: str | None = None,
    labels: Sequence[str] | None = None,
) -> nn.Module:
    """A model that maps (B, in_chans, H, W) to (B, num_labels) logits (`labels`, if given)."""
    if name not in MODEL_NAMES:
        raise CxrError(f"unknown model {name!r}; valid: {', '.join(MODEL_NAMES)}")
    pretrained = pretrained or None
    if name == "cxr_small":
        if pretrained == "imagenet":
            raise CxrError("cxr_small has no ImageNet weights; use pretrained='' or a weights file")
        model: nn.Module = SmallCNN(num_labels, in_chans)
    else:
        import timm

        if pretrained == "imagenet":
            try:
                model = timm.create_model(
                    TIMM_MODELS[name], pretrained=True, num_classes=num_labels, in_chans=in_chans
                )
            except Exception as exc:  # network, hub or cache failures all look different
                raise CxrError(
                    f"cannot get ImageNet weights for {name} ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}); are you offline? Download "
                    "them once with network access (timm/Hugging Face cache) or pass a weights file"
                ) from None
            return model
        model = timm.create_model(
            TIMM_MODELS[name], pretrained=False, num_classes=num_labels, in_chans=in_chans
        )
    if pretrained is not None:
        _load_weights_file(model, Path(pretrained), in_chans, labels)
    return model


def _head_prefix(model: nn.Module) -> str:
    """The state-dict prefix of the classifier (timm's get_classifier, or SmallCNN's)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else model.classifier
    return next(name for name, module in model.named_modules() if module is head) + "."


def _load_weights_file(
    model: nn.Module, path: Path, in_chans: int, labels: Sequence[str] | None = None
) -> None:
    from cxr.training.checkpoint import load_plain

    state = load_plain(path, "weights file")
    drop_head = False
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        # a cxr checkpoint: its classifier is only meaningful for its own labels, in its order
        drop_head = labels is not None and list(state.get("labels", [])) != list(labels)
        state = state["model"]
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CxrError(f"{path}: expected a state dict of tensors")
    own = model.state_dict()
    adapted = {}
    for key, value in state.items():
        key = key.removeprefix("module.").removeprefix("_orig_mod.")
        if key not in own or not isinstance(value, torch.Tensor):
            continue
        if drop_head and key.startswith(_head_prefix(model)):
            continue
        if value.ndim == 4 and own[key].ndim == 4 and value.shape[1] != own[key].shape[1]:
            value = _adapt_input_conv(in_chans, value)
        if value.shape != own[key].shape:
            continue  # e.g. an ImageNet classifier of 1000 outputs
        adapted[key] = value
    if not adapted:
        raise CxrError(f"{path}: no tensor matches the model's parameters; wrong architecture?")
    model.load_state_dict(adapted, strict=False)


def _adapt_input_conv(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """RGB first conv -> in_chans, as timm does: sum for one channel, tile and rescale otherwise."""
    if in_chans == 1 and weight.shape[1] == 3:
        return weight.sum(dim=1, keepdim=True)
    repeat = -(-in_chans // weight.shape[1])
    weight = weight.repeat(1, repeat, 1, 1)[:, :in_chans]
    return weight * (3 / float(in_chans))
