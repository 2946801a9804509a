"""`xrv:<weights>`: torchxrayvision's published classifiers, with the library's own preprocessing.

Weights are the names of `xrv.models.model_urls`: the DenseNet-121 ones
(`densenet121-res224-mimic_ch`, `densenet121-res224-all`, ... and their short aliases `mimic_ch`,
`all`, ...) and the ResNet-50 at 512 px (`resnet50-res512-all`, a plain state dict). cxr builds
the library's model with no weights (so torchxrayvision itself loads nothing), loads the file's
tensors through `cxr.pretrained.safe_load` (never a full unpickle), and then sets what
torchxrayvision sets when it loads weights: `op_threshs` and `input_resolution` from
`model_urls`. The model's `forward` therefore returns torchxrayvision's calibrated outputs:
sigmoid, then `op_norm`, which maps each label's published operating threshold to 0.5 (a
monotone map per label, so AUROC is that of the sigmoid; cxr chooses its own operating points on
the validate split anyway).

Preprocessing is the library's, call for call: `xrv.utils.load_image` (an 8-bit image scaled to
[-1024, 1024], first channel; a DICOM through its own reader), `xrv.datasets.XRayCenterCrop()`,
`xrv.datasets.XRayResizer(input_resolution)`.

Labels are matched to the 14 CheXpert labels by name (`chexpert_columns`).
"""

from __future__ import annotations

import difflib
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxr.core.errors import CxrError, MissingInput
from cxr.mimic.schema import LABELS
from cxr.pretrained.source import ModelSource

# torchxrayvision names that differ from the CheXpert label of the same finding.
XRV_TO_CHEXPERT = {"Effusion": "Pleural Effusion"}

PREPROCESSING = (
    "torchxrayvision's own: xrv.utils.load_image (8-bit image to [-1024, 1024], first channel; "
    "DICOM through xrv.utils.read_xray_dcm), xrv.datasets.XRayCenterCrop(), "
    "xrv.datasets.XRayResizer({res}) (skimage)"
)
OUTPUTS = (
    "xrv forward: sigmoid then op_norm (each label's published operating threshold maps to "
    "0.5; monotone per label, so AUROC is unchanged)"
)


def chexpert_columns(
    targets: Sequence[str], usable: Sequence[bool] | None = None
) -> tuple[list[int], tuple[str, ...], tuple[str, ...]]:
    """(output columns, their CheXpert labels, CheXpert labels without an output) for a model's
    `targets`, matched by name: `Effusion` is Pleural Effusion, a name equal to a CheXpert label
    is that label, anything else ('' and names such as Infiltration, Mass, Nodule) is dropped.
    Labels come in CheXpert order (cxr.mimic.schema.LABELS). `usable[i]` False drops column i
    too (an output torchxrayvision has no operating threshold for: op_norm makes it 0.5)."""
    column: dict[str, int] = {}
    for i, target in enumerate(targets):
        label = XRV_TO_CHEXPERT.get(target, target)
        if label in LABELS and label not in column and (usable is None or usable[i]):
            column[label] = i
    labels = tuple(label for label in LABELS if label in column)
    missing = tuple(label for label in LABELS if label not in column)
    return [column[label] for label in labels], labels, missing


def weight_names(model_urls: dict) -> list[str]:
    """Every name `xrv:` accepts: model_urls' DenseNet and ResNet keys and their aliases."""
    return [k for k in model_urls if _canonical(k, model_urls) is not None]


def _canonical(name: str, model_urls: dict) -> str | None:
    """The full name (densenet121-res224-mimic_ch) of a name or alias (mimic_ch)."""
    entry = model_urls.get(name)
    if entry is None:
        return None
    for key, value in model_urls.items():
        if value is entry and key.startswith(("densenet", "resnet")):
            return key
    return None


def resolve_weights_name(name: str, model_urls: dict) -> str:
    """The canonical weights name; an unknown one is a one-line CxrError listing the valid
    names, with the closest as a suggestion."""
    canonical = _canonical(name, model_urls)
    if canonical is not None:
        return canonical
    names = weight_names(model_urls)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"; did you mean xrv:{close[0]}?" if close else ""
    raise CxrError(f"xrv:{name}: unknown torchxrayvision weights; valid: {', '.join(names)}{hint}")


class XrvSource(ModelSource):
    """A torchxrayvision classifier (DenseNet or ResNet) loaded from a published weights file."""

    def __init__(self, *, model, columns: list[int], embed_kind: str, device, **fields) -> None:
        super().__init__(**fields)
        import torch

        self.model = model
        self.columns = torch.tensor(columns, dtype=torch.long)
        self._embed_kind = embed_kind  # "features2" (DenseNet) or "features" (ResNet)
        self.device = torch.device("cpu")
        self.to(device)

    def load(self, path: str | Path):
        import skimage.transform
        import torch

        from cxr.imaging.images import ImageReadError
        from cxr.pretrained.common import import_torchxrayvision

        xrv = import_torchxrayvision()
        try:
            img = xrv.utils.load_image(str(path))
        except Exception as exc:
            raise ImageReadError(path, _read_reason(exc)) from None
        if img.ndim != 3 or img.shape[0] != 1 or min(img.shape[1:]) < 1:
            raise ImageReadError(path, f"not a 2-D image (array of shape {img.shape})")
        img = xrv.datasets.XRayCenterCrop()(img)
        # XRayResizer's own call (engine "skimage"), without the `warnings.catch_warnings()` it
        # wraps it in: that swaps the process-wide filter list, which races between the
        # decoding threads and can leave every later warning silenced. The resize emits no
        # warning on these float inputs; tests check the tensor equals XRayResizer's.
        size = int(self.model.input_resolution)
        img = skimage.transform.resize(
            img, (1, size, size), mode="constant", preserve_range=True
        ).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))

    def _run(self, fn, x):
        import torch

        from cxr.pretrained.common import library_output

        with torch.inference_mode(), library_output():
            return fn(torch.as_tensor(x).to(self.device)).float().cpu()

    def embed(self, x) -> np.ndarray:
        fn = getattr(self.model, self._embed_kind)
        return self._run(fn, x).numpy()

    def classify(self, x) -> np.ndarray:
        return self._run(self.model, x)[:, self.columns].numpy()

    def to(self, device) -> XrvSource:
        from cxr.pretrained.common import resolve_device

        self.device = resolve_device(device)
        self.model.to(self.device).eval()
        return self


def _read_reason(exc: BaseException) -> str:
    from cxr.pretrained.common import first_line

    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, ValueError) and "higher than expected bound" in str(exc):
        return (
            "pixel values above 255: torchxrayvision's load_image reads 8-bit images only "
            "(a 16-bit PNG?)"
        )
    return f"torchxrayvision's load_image cannot read it ({first_line(exc)})"


def weights_path(canonical: str, entry: dict, weights: Path | None) -> Path:
    """`weights` when given (it must exist); else torchxrayvision's cache file, downloaded there
    by the library's own `xrv.utils.download` when absent. One line saying what was tried when
    neither works."""
    from cxr.core.progress import info
    from cxr.pretrained.common import first_line, import_torchxrayvision, library_output

    url = entry["weights_url"]
    if weights is not None:
        weights = Path(weights).expanduser()
        if weights.is_dir():
            raise CxrError(
                f"{weights}: is a directory; xrv:{canonical} --weights takes the .pt file"
            )
        if not weights.is_file():
            raise MissingInput(
                weights, "weights file", f"download {url} and pass that file with --weights"
            )
        return weights
    xrv = import_torchxrayvision()
    cached = Path(os.path.expanduser(xrv.utils.get_cache_dir())) / os.path.basename(url)
    if cached.is_file():
        return cached
    info(f"downloading torchxrayvision weights {canonical} to {cached}")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with library_output():
            xrv.utils.download(url, str(cached))
    except Exception as exc:  # requests, HTTP and file-system failures all differ
        raise CxrError(
            f"xrv:{canonical}: no weights at {cached}, and downloading {url} failed "
            f"({first_line(exc, 160)}); download that file where there is internet and pass "
            "it with --weights PATH"
        ) from None
    return cached


def open_xrv(spec: str, name: str, weights: Path | None = None, device="cpu") -> XrvSource:
    """The source `xrv:<name>` names (`spec` is what the user wrote)."""
    import torch

    from cxr.pretrained.common import import_torchxrayvision, weights_sha256
    from cxr.pretrained.safe_load import load_state_dict

    xrv = import_torchxrayvision()
    # torchxrayvision's DICOM reader warns about MONOCHROME1 files quoting the file's path (the
    # patient folder): that one warning is filtered, once, process-wide (no per-image
    # catch_warnings: the decoding threads would race on the filter list).
    warnings.filterwarnings("ignore", message="Converting MONOCHROME1 to MONOCHROME2")
    canonical = resolve_weights_name(name, xrv.models.model_urls)
    entry = xrv.models.model_urls[canonical]
    targets = list(entry["labels"])
    path = weights_path(canonical, entry, weights)
    state = load_state_dict(path)
    # A model saved after torchxrayvision loaded it carries op_threshs as a buffer; cxr sets the
    # published thresholds itself below, as the library does.
    state.pop("op_threshs", None)
    if canonical.startswith("resnet"):
        model = _xrv_resnet(xrv, canonical, entry, state, path)
        embed_kind, dim = "features", model.model.fc.in_features
    else:
        model = xrv.models.DenseNet(num_classes=len(targets), in_channels=1)
        _load_into(
            model, state, path, f"a torchxrayvision DenseNet-121 with {len(targets)} outputs"
        )
        model.weights = canonical
        model.targets = targets
        model.pathologies = targets
        if "op_threshs" in entry:
            model.op_threshs = torch.tensor(entry["op_threshs"])
        if "input_resolution" in entry:
            model.input_resolution = entry["input_resolution"]
        embed_kind, dim = "features2", model.classifier.in_features
    model.eval()
    thresholds = entry.get("op_threshs")
    usable = [not math.isnan(t) for t in thresholds] if thresholds is not None else None
    columns, labels, missing = chexpert_columns(targets, usable)
    resolution = int(model.input_resolution)
    provenance = {
        "spec": spec,
        "source": "torchxrayvision",
        "weights": canonical,
        "weights_url": entry["weights_url"],
        "weights_file": str(path),
        "weights_sha256": weights_sha256(path),
        "loaded_with": "torch.load(weights_only=True), allowlist: the DenseNet's module classes",
        "torchxrayvision": getattr(xrv, "__version__", "unknown"),
        "torch": torch.__version__,
        "preprocessing": PREPROCESSING.format(res=resolution),
        "outputs": OUTPUTS,
        "embedding": f"model.{embed_kind}(x), {dim}-d",
        "targets": targets,
    }
    return XrvSource(
        spec=spec,
        name=f"xrv-{canonical}",
        reads="jpeg",
        dim=int(dim),
        labels=labels,
        missing_labels=missing,
        provenance=provenance,
        model=model,
        columns=columns,
        embed_kind=embed_kind,
        device=device,
    )


def _load_into(model, state: dict, path: Path, what: str) -> None:
    from cxr.pretrained.common import first_line

    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CxrError(f"{path}: not the weights of {what} ({first_line(exc)})") from None


def _xrv_resnet(xrv, canonical: str, entry: dict, state: dict, path: Path):
    """torchxrayvision's ResNet as its constructor builds it, without its loading step (which
    downloads and fully unpickles): torchvision's ResNet-50 with a one-channel first convolution,
    the published state dict, op_threshs and input_resolution."""
    import torch
    import torchvision

    labels = list(entry["labels"])
    net = torchvision.models.resnet50(num_classes=len(labels), weights=None)
    net.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    _load_into(net, state, path, f"a torchxrayvision ResNet-50 with {len(labels)} outputs")
    model = xrv.models.ResNet.__new__(xrv.models.ResNet)
    torch.nn.Module.__init__(model)
    model.weights = canonical
    model.apply_sigmoid = False
    model.weights_dict = entry
    model.targets = labels
    model.pathologies = labels
    model.model = net
    if "op_threshs" in entry:
        model.register_buffer("op_threshs", torch.tensor(entry["op_threshs"]))
    model.input_resolution = entry.get("input_resolution", 512)
    return model
