"""`rad-dino`: Microsoft's RAD-DINO chest X-ray encoder (microsoft/rad-dino) through transformers.

The model and its image processor come from the Hugging Face hub id, or from `--weights DIR`, a
directory holding both (`hf download microsoft/rad-dino --local-dir DIR`, huggingface_hub's
command line; `huggingface-cli download` before its 1.0; or `save_pretrained` of each). Weights are read from safetensors only (`use_safetensors=True`), so
no pickle is involved.

Preprocessing is the processor's own, applied to the file as PIL opens it: JPEG and PNG as they
are; a DICOM (which PIL cannot open) through `cxr.imaging.images.load_xray`, as an 8-bit "L"
image. RAD-DINO's processor (a BitImageProcessor) converts to RGB, resizes the shortest edge
(bicubic), centre-crops, rescales to [0, 1] and normalizes (mean 0.5307, std 0.2583).

The embedding is `pooler_output`: the CLS token after the final layer norm, as RAD-DINO's model
card uses. RAD-DINO has no label outputs: score it with `cxr embed` and `cxr probe`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr.core.errors import CxrError, MissingInput
from cxr.pretrained.source import ModelSource

HUB_ID = "microsoft/rad-dino"
PREPROCESSING = (
    "the model's own image processor ({processor}) on the file as PIL opens it (DICOM: cxr's "
    "load_xray to 8-bit 'L'): {steps}"
)


class RadDinoSource(ModelSource):
    def __init__(self, *, model, processor, device, **fields) -> None:
        super().__init__(**fields)
        import torch

        self.model = model
        self.processor = processor
        self.device = torch.device("cpu")
        self.to(device)

    def load(self, path: str | Path):
        image = _open_image(path)
        from cxr.imaging.images import ImageReadError
        from cxr.pretrained.common import first_line

        try:
            return self.processor(images=image, return_tensors="pt")["pixel_values"][0]
        except Exception as exc:  # PIL decodes lazily: a truncated file fails here
            raise ImageReadError(path, f"cannot decode the image ({first_line(exc)})") from None

    def embed(self, x) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(pixel_values=torch.as_tensor(x).to(self.device))
        return out.pooler_output.float().cpu().numpy()

    def classify(self, x) -> np.ndarray:
        raise CxrError(
            f"{self.spec} is an image encoder with no label outputs; score it with "
            "`cxr embed` and `cxr probe`"
        )

    def to(self, device) -> RadDinoSource:
        from cxr.pretrained.common import resolve_device

        self.device = resolve_device(device)
        self.model.to(self.device).eval()
        return self


def _open_image(path: str | Path):
    """The file as a PIL image, as the processor's users open it; DICOM through load_xray."""
    from PIL import Image

    from cxr.imaging.images import ImageReadError, load_xray, read_head, sniff_format
    from cxr.pretrained.common import first_line

    if sniff_format(read_head(path)) == "dicom":
        return Image.fromarray(load_xray(path))  # uint8 2-D: mode "L"
    try:
        image = Image.open(path)
        image.load()
    except Exception as exc:
        raise ImageReadError(path, f"cannot decode the image ({first_line(exc)})") from None
    return image


def _quiet_transformers() -> None:
    """No progress bars or advisory warnings from transformers / huggingface_hub: cxr prints
    its own progress, and their messages would repeat for every process."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # an older huggingface_hub: transformers' switch is enough
        pass


def _steps(processor) -> str:
    cfg = processor.to_dict()
    parts = []
    if cfg.get("do_convert_rgb"):
        parts.append("convert to RGB")
    if cfg.get("do_resize"):
        parts.append(f"resize {cfg.get('size')} (resample {cfg.get('resample')})")
    if cfg.get("do_center_crop"):
        parts.append(f"centre crop {cfg.get('crop_size')}")
    if cfg.get("do_rescale"):
        parts.append(f"rescale x{cfg.get('rescale_factor'):.6g}")
    if cfg.get("do_normalize"):
        parts.append(f"normalize mean {cfg.get('image_mean')} std {cfg.get('image_std')}")
    return ", ".join(parts) or "none"


def open_raddino(spec: str, weights: Path | None = None, device="cpu") -> RadDinoSource:
    """RAD-DINO from the hub (Hugging Face cache) or from `weights`, a local directory."""
    import huggingface_hub
    import torch
    import transformers

    from cxr.pretrained.common import first_line, weight_files, weights_sha256

    _quiet_transformers()
    if weights is not None:
        weights = Path(weights).expanduser()
        if not weights.exists():
            raise MissingInput(
                weights,
                "RAD-DINO directory",
                f"`hf download {HUB_ID} --local-dir DIR` writes one",
            )
        if not weights.is_dir():
            raise CxrError(
                f"{weights}: rad-dino --weights takes a directory (config.json, "
                "model.safetensors, preprocessor_config.json), not a file"
            )
    where = str(weights) if weights is not None else HUB_ID
    try:
        model = transformers.AutoModel.from_pretrained(where, use_safetensors=True)
        processor = transformers.AutoImageProcessor.from_pretrained(where)
    except Exception as exc:  # OSError offline, ValueError/KeyError for a wrong directory ...
        cache = huggingface_hub.constants.HF_HUB_CACHE
        tried = (
            f"the directory {weights}"
            if weights is not None
            else f"{HUB_ID} from the Hugging Face hub and its cache {cache}"
        )
        raise CxrError(
            f"rad-dino: cannot load the model from {tried} ({first_line(exc, 160)}); on a "
            f"machine with internet run `hf download {HUB_ID} --local-dir DIR` "
            "(or save_pretrained the model and its processor) and pass --weights DIR"
        ) from None
    model.eval()
    if weights is not None:
        files_at = weights
    else:
        found = huggingface_hub.try_to_load_from_cache(HUB_ID, "model.safetensors")
        files_at = Path(found) if isinstance(found, str) else None
    provenance = {
        "spec": spec,
        "source": "transformers",
        "model": HUB_ID if weights is None else str(weights),
        "revision": getattr(model.config, "_commit_hash", None),
        "weights_file": str(files_at) if files_at is not None else None,
        "weights_files": weight_files(files_at) if files_at is not None else [],
        "weights_sha256": weights_sha256(files_at) if files_at is not None else None,
        "model_class": type(model).__name__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "preprocessing": PREPROCESSING.format(
            processor=type(processor).__name__, steps=_steps(processor)
        ),
        "embedding": f"pooler_output (CLS token after the final layer norm), "
        f"{model.config.hidden_size}-d",
    }
    return RadDinoSource(
        spec=spec,
        name="rad-dino",
        reads="jpeg",
        dim=int(model.config.hidden_size),
        provenance=provenance,
        model=model,
        processor=processor,
        device=device,
    )
