"""`--model SPEC` -> a ModelSource. The one place that knows the spec forms.

    xrv:<weights>     torchxrayvision's classifiers (cxr.pretrained.xrv)
    rad-dino          Microsoft's RAD-DINO encoder (cxr.pretrained.raddino)
    cxr:<checkpoint>  a cxr checkpoint (cxr.pretrained.cxr_checkpoint)

Importing this module imports neither torch nor the model libraries (commands put SOURCES_HELP
in their --help); each source imports its library when it is opened.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from cxr.core.errors import CxrError
from cxr.pretrained.source import ModelSource

SOURCE_FORMS: tuple[tuple[str, str], ...] = (
    (
        "xrv:<weights>",
        "a torchxrayvision classifier, e.g. xrv:densenet121-res224-mimic_ch or xrv:all "
        "(--weights FILE: its published .pt)",
    ),
    (
        "rad-dino",
        "Microsoft's RAD-DINO image encoder, microsoft/rad-dino (--weights DIR: a local copy)",
    ),
    ("cxr:<checkpoint>", "a cxr checkpoint: its penultimate features and its own outputs"),
)
SOURCES_HELP = "\n".join(f"{form:<18}{text}" for form, text in SOURCE_FORMS)
VALID_FORMS = "xrv:<weights> (e.g. xrv:densenet121-res224-mimic_ch), rad-dino, cxr:<checkpoint>"

# Words people may write for a prefix, and the prefix they mean.
_PREFIX_WORDS = {"xrv": "xrv", "torchxrayvision": "xrv", "cxr": "cxr", "checkpoint": "cxr"}


def parse_spec(spec: str) -> tuple[str, str]:
    """("xrv", weights name) | ("rad-dino", "") | ("cxr", checkpoint path); a one-line
    CxrError naming the valid forms (and the likely one) otherwise."""
    text = spec.strip()
    if text == "rad-dino":
        return "rad-dino", ""
    prefix, sep, rest = text.partition(":")
    if sep and prefix in ("xrv", "cxr"):
        rest = rest.strip()
        if not rest:
            example = "xrv:densenet121-res224-mimic_ch" if prefix == "xrv" else "cxr:RUN/best.pt"
            raise CxrError(
                f"model {spec!r}: {prefix}: needs a name after the colon, e.g. {example}"
            )
        return prefix, rest
    hint = suggest(text)
    raise CxrError(
        f"unknown model {spec!r}; valid: {VALID_FORMS}"
        + (f"; did you mean {hint}?" if hint else "")
    )


def suggest(text: str) -> str | None:
    """The spec a mistyped one most likely meant, or None."""
    low = text.lower()
    if difflib.get_close_matches(low, ["rad-dino", "raddino", "rad_dino", "rad dino"], 1, 0.75):
        return "rad-dino"
    found = re.fullmatch(r"([A-Za-z]+)\W?(.+)", text)
    if found:
        word, rest = found.group(1).lower(), found.group(2).lstrip(":=/ ")
        close = difflib.get_close_matches(word, list(_PREFIX_WORDS), 1, 0.6)
        if close and rest:
            return f"{_PREFIX_WORDS[close[0]]}:{rest}"
    if low.startswith(("densenet", "resnet")) or low in ("all", "nih", "pc", "chex", "rsna"):
        return f"xrv:{text}"
    if low.startswith(("mimic_", "mimic-")):
        return f"xrv:{text}"
    if text.endswith(".pt") or Path(text).is_dir():
        return f"cxr:{text}"
    return None


def open_source(spec: str, weights: Path | None = None, device="cpu") -> ModelSource:
    """The model source `spec` names, on `device`, loaded (weights found, downloaded or read
    from `weights`); one-line CxrError for every expected failure."""
    kind, arg = parse_spec(spec)
    weights = Path(weights) if weights is not None else None
    if kind == "xrv":
        from cxr.pretrained.xrv import open_xrv

        return open_xrv(spec, arg, weights, device)
    if kind == "rad-dino":
        from cxr.pretrained.raddino import open_raddino

        return open_raddino(spec, weights, device)
    if weights is not None:
        raise CxrError(
            f"model {spec!r}: a cxr checkpoint is its own weights file; --weights is for xrv: "
            "and rad-dino"
        )
    from cxr.pretrained.cxr_checkpoint import open_checkpoint

    return open_checkpoint(spec, arg, device)
