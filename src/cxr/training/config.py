"""Run configurations: frozen dataclasses, read from one TOML file plus `key=value` overrides.

`load_train_config(path, overrides)` is the only way a training config is built, from the CLI and
from tests alike; `config_to_toml` writes the resolved config beside the run's outputs. TOML has no
null, so "no value" is the empty string (`pretrained = ""`, `manifest = ""`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cxr.core.defaults import IMAGE_SIZE
from cxr.core.errors import CxrError
from cxr.mimic.policy import MISSING_CHOICES, UNCERTAIN_CHOICES, LabelPolicy
from cxr.mimic.schema import LABEL_SOURCES, LABELS


@dataclass(frozen=True)
class AugmentConfig:
    """Batch augmentation on the device (see cxr.training.augment). Flip is off: it moves the heart."""

    scale_min: float = 0.7  # random resized crop: fraction of the image area kept
    ratio_max: float = 1.25  # aspect ratio in [1/ratio_max, ratio_max]
    rotation: float = 7.0  # degrees, uniform in [-rotation, rotation]
    brightness: float = 0.1  # additive, in [0, 1] pixel units
    contrast: float = 0.1  # multiplicative around each image's mean, 1 +- contrast
    hflip: bool = False

    def __post_init__(self) -> None:
        _check_ranges(self, _AUGMENT_RANGES, "augment.")


@dataclass(frozen=True)
class TrainConfig:
    # inputs and outputs ("" = the defaults under the data root)
    manifest: str = ""
    cache: str = ""
    out: str = "models/run"
    labels: tuple[str, ...] = LABELS
    # Which labeler's labels to train on: the manifest's CheXpert columns, or its NegBio ones.
    label_source: str = "chexpert"
    policy: LabelPolicy = field(default_factory=LabelPolicy)
    # model
    model: str = "densenet121"
    pretrained: str = ""  # "", "imagenet" or a path to a state dict
    image_size: int = IMAGE_SIZE  # model input; the cache may be larger (crops are resized)
    cache_size: int = 0  # which cache to read by default; 0 = any cache >= image_size
    mean: float = 0.5  # normalization on [0, 1] pixels; MIMIC JPEGs are histogram-equalized,
    std: float = 0.29  # so close to uniform: mean 0.5, std 1/sqrt(12)
    # optimization
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01  # cosine ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    pos_weight: str = "none"  # "none" or "auto" (neg/pos per label from train targets, capped)
    patience: int = 5  # early stopping: epochs without a better validate macro AUROC; 0 = off
    seed: int = 0
    # hardware
    device: str = "auto"  # auto, cpu, cuda
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True  # on CUDA
    compile: bool = False  # torch.compile the model (minutes to compile; pays off on long runs)
    threads: int = 0  # torch CPU threads; 0 = torch's default
    prefetch: int = 2  # batches gathered ahead in a background thread; 0 = inline
    # run control
    limit_train_batches: int = 0  # per epoch, 0 = all (for smoke tests)
    stop_after_epochs: int = (
        0  # stop this invocation after N epochs; --resume goes on (wall-time limits)
    )
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        _check_ranges(self, _TRAIN_RANGES, "")
        _check_labels(self.labels, self.policy)


# -- ranges: every value of TrainConfig and AugmentConfig is checked here, and only here ---------

MODEL_NAMES: tuple[str, ...] = (
    "densenet121",
    "resnet18",
    "resnet50",
    "efficientnet_b0",
    "convnext_tiny",
    "cxr_small",
)


def _int(lo: int, hi: int | None = None, zero: str = "") -> tuple:
    """An integer in [lo, hi] (hi None: unbounded), or 0 when `zero` says what 0 means."""
    what = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
    if zero:
        what = f"0 ({zero}) or {what}"

    def ok(v) -> bool:
        if isinstance(v, bool) or not isinstance(v, int):
            return False
        return (zero and v == 0) or (v >= lo and (hi is None or v <= hi))

    return ok, what


def _float(lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    """A finite number in the interval; NaN and infinities never pass."""
    if hi is None:
        what = f"a finite number {'>' if lo_open else '>='} {lo:g}"
    else:
        what = (
            f"a finite number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        )

    def ok(v) -> bool:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return False
        if v < lo or (lo_open and v == lo):
            return False
        return hi is None or v < hi or (not hi_open and v == hi)

    return ok, what


def _choice(*choices: str) -> tuple:
    return (lambda v: v in choices), f"one of {', '.join(choices)}"


def _is_bool() -> tuple:
    return (lambda v: isinstance(v, bool)), "true or false"


def _is_str(nonempty: str = "") -> tuple:
    if nonempty:
        return (lambda v: isinstance(v, str) and v != ""), f"a non-empty {nonempty}"
    return (lambda v: isinstance(v, str)), "a string"


_TRAIN_RANGES: dict[str, tuple] = {
    "manifest": _is_str(),
    "cache": _is_str(),
    "out": _is_str("path"),
    "label_source": _choice(*LABEL_SOURCES),
    "model": _choice(*MODEL_NAMES),
    "pretrained": _is_str(),
    "image_size": _int(8),
    "cache_size": _int(8, zero="the cache of image_size"),
    "mean": _float(0.0, 1.0),
    "std": _float(0.0, lo_open=True),
    "epochs": _int(1),
    "batch_size": _int(1),
    "lr": _float(0.0, lo_open=True),
    "weight_decay": _float(0.0),
    "warmup_epochs": _float(0.0),
    "min_lr_ratio": _float(0.0, 1.0),
    "grad_clip": _float(0.0),
    "pos_weight": _choice("none", "auto"),
    "patience": _int(0),
    "seed": _int(0, 2**32 - 1),  # numpy's seed range
    "device": _choice("auto", "cpu", "cuda"),
    "amp": _is_bool(),
    "channels_last": _is_bool(),
    "compile": _is_bool(),
    "threads": _int(0),
    "prefetch": _int(0),
    "limit_train_batches": _int(0),
    "stop_after_epochs": _int(0),
}
_AUGMENT_RANGES: dict[str, tuple] = {
    "scale_min": _float(0.0, 1.0, lo_open=True),
    "ratio_max": _float(1.0),
    "rotation": _float(0.0, 180.0),
    "brightness": _float(0.0, 1.0),
    "contrast": _float(0.0, 1.0),
    "hflip": _is_bool(),
}
# Checked by their own code: labels (_check_labels), policy (LabelPolicy), augment (AugmentConfig).
_NESTED = ("labels", "policy", "augment")


def _check_ranges(cfg, ranges: Mapping[str, tuple], prefix: str) -> None:
    for f in dataclasses.fields(cfg):
        if f.name in _NESTED and not prefix:
            continue
        ok, what = ranges[f.name]
        value = getattr(cfg, f.name)
        if not ok(value):
            raise CxrError(f"config: {prefix}{f.name}={_show(value)}: must be {what}")


def _show(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)  # nan, inf, -inf
    return repr(value)


def _check_policy(data: Mapping, where: str) -> None:
    """The [policy] table, in the same words as every other key (LabelPolicy checks it again)."""
    rules = {"uncertain": UNCERTAIN_CHOICES, "missing": MISSING_CHOICES}

    def check_rules(table: Mapping, at: str, allowed: set[str]) -> None:
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise CxrError(
                f"config: unknown keys {[f'{at}.{k}' for k in unknown]}; valid: {', '.join(sorted(allowed))}"
            )
        for name, choices in rules.items():
            if name in table and table[name] not in choices:
                raise CxrError(
                    f"config: {at}.{name}={_show(table[name])}: must be one of {', '.join(choices)}"
                )

    check_rules(data, where, {"uncertain", "missing", "overrides"})
    overrides = data.get("overrides", {})
    if not isinstance(overrides, Mapping):
        raise CxrError(f"config: {where}.overrides must be a table of labels")
    for label, rule in overrides.items():
        if not isinstance(rule, Mapping):
            raise CxrError(
                f"config: {where}.overrides.{label}={_show(rule)}: must be a table, "
                f"e.g. {where}.overrides.{label}.uncertain=ones"
            )
        check_rules(rule, f"{where}.overrides.{label}", {"uncertain", "missing"})


def _check_labels(labels: Sequence[str], policy: LabelPolicy) -> None:
    if not labels:
        raise CxrError(
            "config: labels=[]: the label list must not be empty; choose from " + ", ".join(LABELS)
        )
    unknown = [name for name in labels if name not in LABELS]
    if unknown:
        raise CxrError(f"config: labels: unknown labels {unknown}; valid: {', '.join(LABELS)}")
    twice = sorted({name for name in labels if list(labels).count(name) > 1})
    if twice:
        raise CxrError(f"config: labels: {twice} listed more than once")
    stray = sorted(set(policy.overrides) - set(labels))
    if stray:
        raise CxrError(
            f"config: policy.overrides names labels that are not trained: {stray}; "
            f"labels: {', '.join(labels)}"
        )


# -- what each key means: `cxr train --print-config` shows it beside the value and the default --

KEY_HELP: dict[str, str] = {
    "manifest": 'manifest parquet; "" = <data root>/processed/manifest.parquet',
    "cache": 'image cache directory; "" = chosen under <data root>/interim by cache_size',
    "out": "run directory: config.toml, best.pt, last.pt, metrics.jsonl, tb/",
    "labels": "labels to train, in the model's output order",
    "label_source": "the labeler whose labels train the model: chexpert or negbio (the manifest's negbio_ columns)",
    "model": "architecture: " + ", ".join(MODEL_NAMES),
    "pretrained": '"" (random init), "imagenet" (timm download), or a state-dict/checkpoint path',
    "image_size": "model input side in pixels; cached squares are resized to it",
    "cache_size": "cache to read: 0 = the smallest cache of at least image_size px",
    "mean": "normalization mean on [0, 1] pixels",
    "std": "normalization std on [0, 1] pixels",
    "epochs": "epochs in all (a resumed run goes on to this number)",
    "batch_size": "images per step, per process",
    "lr": "peak learning rate (AdamW)",
    "weight_decay": "AdamW weight decay",
    "warmup_epochs": "linear warm-up length in epochs, then cosine decay per step",
    "min_lr_ratio": "the cosine ends at lr * min_lr_ratio",
    "grad_clip": "maximum gradient norm; 0 = off",
    "pos_weight": '"none", or "auto": negatives/positives per label (capped at 100)',
    "patience": "stop after this many epochs without a better validate macro AUROC; 0 = off",
    "seed": "seed of initialization, batch order and augmentation",
    "device": "auto (CUDA when available), cpu or cuda",
    "amp": "bf16 autocast on CUDA (ignored on the CPU)",
    "channels_last": "channels-last memory layout on CUDA",
    "compile": "torch.compile the model (minutes to compile; pays off on long runs)",
    "threads": "torch CPU threads; 0 = torch's default",
    "prefetch": "batches gathered ahead in a background thread; 0 = inline",
    "limit_train_batches": "train batches per epoch; 0 = all (smoke tests)",
    "stop_after_epochs": "stop this invocation after N epochs, for wall-time limits; 0 = off",
    "policy.uncertain": "uncertain (-1) labels in the loss: ignore, zeros or ones",
    "policy.missing": "blank labels in the loss: zeros or ignore",
    "policy.overrides": 'per-label rules, e.g. policy.overrides.Edema.uncertain="ones"',
    "augment.scale_min": "random resized crop: smallest fraction of the image area kept",
    "augment.ratio_max": "random resized crop: aspect ratio within [1/ratio_max, ratio_max]",
    "augment.rotation": "random rotation, degrees either way",
    "augment.brightness": "random additive brightness, in [0, 1] pixel units",
    "augment.contrast": "random contrast factor around each image's mean: 1 +- contrast",
    "augment.hflip": "random horizontal flip (off: it moves the heart)",
}


def describe_config(cfg: TrainConfig) -> str:
    """The configuration as TOML: every key with its value, and a comment with its default and
    meaning. The text is a valid config file (`cxr train --config` reads it back)."""
    import tomli_w

    def toml(value) -> str:
        if isinstance(value, list | tuple):  # inline, on one line
            return "[" + ", ".join(json.dumps(v) for v in value) + "]"
        return tomli_w.dumps({"x": value})[4:].strip()

    def line(key: str, value, default) -> str:
        shown = "the 14 CheXpert labels" if key == "labels" else toml(default)
        return f"{key.rsplit('.', 1)[-1]} = {toml(value)}  # default {shown}: {KEY_HELP[key]}"

    defaults = config_to_dict(TrainConfig())
    values = config_to_dict(cfg)
    out = [line(k, v, defaults[k]) for k, v in values.items() if not isinstance(v, dict)]
    for table in ("policy", "augment"):
        out += ["", f"[{table}]"]
        out += [
            line(f"{table}.{k}", v, defaults[table][k])
            for k, v in values[table].items()
            if k != "overrides"
        ]
        if table == "policy":
            out.append(f"# overrides: {KEY_HELP['policy.overrides']}")
    for label, rule in values["policy"]["overrides"].items():
        out += ["", f"[policy.overrides.{json.dumps(label)}]"]
        out += [f"{k} = {toml(v)}" for k, v in rule.items()]
    return "\n".join(out) + "\n"


def config_to_dict(cfg) -> dict:
    """Plain nested dict (tuples become lists, policies their dict form); TOML- and torch-safe."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, LabelPolicy):
            value = value.to_dict()
        elif dataclasses.is_dataclass(value):
            value = config_to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def config_to_toml(cfg) -> str:
    import tomli_w

    return tomli_w.dumps(config_to_dict(cfg))


def _coerce(name: str, value, default):
    """Check a value against the type of the field's default (ints are accepted for floats)."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, tuple) and (
        isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
    ):
        return tuple(value)
    raise CxrError(f"config: {name} = {value!r} should be {type(default).__name__}")


def _build(cls, data: Mapping, prefix: str = ""):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    defaults = cls()
    unknown = set(data) - set(fields)
    if unknown:
        raise CxrError(
            f"config: unknown keys {sorted(prefix + k for k in unknown)}; valid: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for key, value in data.items():
        default = getattr(defaults, key)
        if isinstance(default, LabelPolicy):
            if not isinstance(value, Mapping):
                raise CxrError(f"config: {prefix}{key} must be a table")
            _check_policy(value, f"{prefix}{key}")
            kwargs[key] = LabelPolicy.from_dict(value)
        elif dataclasses.is_dataclass(default):
            if not isinstance(value, Mapping):
                raise CxrError(f"config: {prefix}{key} must be a table")
            kwargs[key] = _build(type(default), value, prefix=f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(prefix + key, value, default)
    return cls(**kwargs)


def _deep_merge(base: dict, update: Mapping) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict:
    """`a.b=value` -> {"a": {"b": value}}; the value is read as TOML, else taken as a string.

    Keys are TOML dotted keys, so a label with a space is quoted:
    `policy.overrides."Pleural Effusion".uncertain=ones`.
    """
    if "=" not in text:
        raise CxrError(f"override {text!r} is not key=value")
    key, value = text.split("=", 1)
    key = key.strip()
    for candidate in (value.strip(), json.dumps(value.strip())):
        try:
            return tomllib.loads(f"{key} = {candidate}")
        except tomllib.TOMLDecodeError:
            continue
    raise CxrError(f"override {text!r}: cannot read key {key!r}")


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CxrError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise CxrError(f"{path}: is a directory, not a config file") from None
    except OSError as exc:
        raise CxrError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CxrError(f"{path}: not valid TOML ({exc})") from None


def load_train_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    base: Mapping | None = None,
) -> TrainConfig:
    """Defaults, then `base` (e.g. a run's saved config), then the TOML file, then overrides."""
    data: dict = dict(base or {})
    if path:
        data = _deep_merge(data, read_toml(path))
    for text in overrides:
        data = _deep_merge(data, parse_override(text))
    return _build(TrainConfig, data)
