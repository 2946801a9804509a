"""`cxr evaluate`: a model on one split of the manifest, under one protocol -> an `Evaluation`.

Order of events: load the checkpoint (model, labels, preprocessing); predict the validate split
(it fixes each label's operating points, on CheXpert labels) and the evaluated split from the image
cache; form the units (studies: mean of their images' probabilities; or images); build the targets
under the protocol (blank negative, uncertain excluded or negative, CheXpert, NegBio or
radiologist labels), never under the checkpoint's training policy; score every label with intervals from one
set of patient resamples; fingerprint the evaluated rows; with subgroups, score each subgroup from
the same resamples (`cxr.evaluation.subgroups`). `write_evaluation` writes metrics.json
and the predictions atomically; `cxr.evaluation.report` draws the figures and the HTML page.

Outputs identify images by `dicom_id` and studies by `study_id`, never by `subject_id`: patients
are used in memory to resample, and leave only as counts. The manifest's demographic columns are
read in memory to form subgroups and leave only as aggregates over cells of at least `min_cell`
patients.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cxr import __version__
from cxr.core.errors import CxrError, InputError, MissingInput
from cxr.evaluation.protocol import Protocol, label_fingerprint, rows_fingerprint
from cxr.evaluation.scoring import (
    OPERATING_POINTS,
    ScoringConfig,
    choose_operating_points,
    point_figures,
    score,
)
from cxr.evaluation.targets import (
    load_radiologist_table,
    raw_dir_of,
    targets,
    unit_keys,
    unit_rows,
)
from cxr.stats.metrics import aggregate_studies, eval_targets

SPLIT_NOTE = (
    "MIMIC-CXR's official test split is enriched for abnormal studies (about 89% have a finding vs "
    "77% in train): figures on it are not comparable with figures on random splits."
)
SAME_SPLIT_NOTE = (
    "Evaluated on the validate split, where the operating points were also chosen: sensitivity, "
    "specificity, PPV and F1 are optimistic here; AUROC, AUPRC, ECE and Brier do not use them."
)
METRICS_JSON = "metrics.json"
PREDICTIONS = "predictions.csv"
PREDICTIONS_STUDY = "predictions_study.csv"


@dataclass(frozen=True)
class EvaluateConfig:
    checkpoint: Path | None = None  # a cxr checkpoint, or:
    model: str | None = None  # a model source (cxr.pretrained.registry), e.g. xrv:densenet121-...
    weights: Path | None = None  # the source's weights file or directory (no hub, no download)
    workers: int = 2  # image decoding threads for model sources that read image files
    split: str = "validate"
    level: str = "study"  # "study" or "image"
    uncertain: str = "exclude"  # or "negative"
    labels: str = "chexpert"  # or "negbio", "radiologist"
    min_positives: int = 10
    subgroups: tuple[str, ...] = ()  # attributes of cxr.evaluation.subgroups.ATTRIBUTES
    min_cell: int = 20  # patients a subgroup needs to be shown
    n_bootstrap: int = 1000
    seed: int = 0
    out: Path | None = None  # default: reports/<checkpoint's run directory name>
    manifest: Path | None = None  # default: the run's (below), else the data root's
    cache: Path | None = None  # default: the run's, else <data root>/interim/cache-<source size>
    batch_size: int = 64
    device: str = "auto"  # CUDA when available, else the CPU
    gallery_size: int = 6  # false positives and false negatives each, overall
    ece_bins: int = 15
    data_root: Path = Path("data")
    # False when the data root is only the default (no --data-dir, no $CXR_DATA_DIR): the
    # manifest and cache the run trained on (recorded in the checkpoint) are then read instead.
    data_root_given: bool = False

    def out_dir(self) -> Path:
        if self.out:
            return self.out
        if self.model:
            return Path("reports") / model_slug(self.model)
        return Path("reports") / Path(self.checkpoint).resolve().parent.name


def model_slug(spec: str) -> str:
    """A model source's spec as a directory name: `xrv:densenet121-res224-all` ->
    `xrv-densenet121-res224-all`, `cxr:models/run/best.pt` -> `cxr-run`."""
    kind, _, rest = spec.partition(":")
    if kind == "cxr" and rest:
        run = Path(rest).resolve()  # a checkpoint file, or its run directory
        return f"cxr-{(run if run.is_dir() else run.parent).name}"
    return "-".join(part for part in (kind, rest.replace("/", "-")) if part)


@dataclass
class Evaluation:
    """One evaluation: what metrics.json holds, and the arrays behind it.

    `units` has the unit keys (`study_id`, plus `dicom_id` at image level) and one probability
    column per label; `y` and `p` are the (n, L) targets and probabilities of those units;
    `per_image` the image probabilities of the evaluated studies. `gallery` holds the most
    confident errors with their images, filled by `evaluate` for the report.
    """

    metrics: dict[str, Any]
    labels: list[str]
    units: pl.DataFrame
    y: np.ndarray
    p: np.ndarray
    per_image: pl.DataFrame | None = None
    gallery: list[dict] = field(default_factory=list)

    @property
    def protocol(self) -> Protocol:
        return Protocol.from_dict(self.metrics["protocol"])


# --------------------------------------------------------------------------- inputs


def _run_input(cfg: EvaluateConfig, ckpt: dict, key: str) -> Path | None:
    """The manifest or cache the run trained on (config.toml's absolute path, also in the
    checkpoint), when it still exists and no data root was asked for."""
    recorded = (ckpt.get("config") or {}).get(key) if isinstance(ckpt.get("config"), dict) else None
    if cfg.data_root_given or not recorded or not Path(recorded).exists():
        return None
    return Path(recorded)


def _find_cache(cfg: EvaluateConfig, size: int, recorded: Path | None = None):
    """The image cache to read: --cache, else the run's own (`recorded`), else cache-<size> (the
    size training read), else the only cache present (its squares are then refit to `size`)."""
    from cxr.core.paths import DataPaths
    from cxr.imaging.cache import load_cache

    if cfg.cache is not None:
        return load_cache(cfg.cache)
    if recorded is not None:
        return load_cache(recorded)
    paths = DataPaths(cfg.data_root)
    exact = paths.cache(size)
    if exact.exists():
        return load_cache(exact)
    others = sorted(exact.parent.glob("cache-*")) if exact.parent.exists() else []
    if len(others) == 1:
        return load_cache(others[0])
    found = ", ".join(p.name for p in others) or "none"
    raise MissingInput(
        exact,
        f"image cache of the size the checkpoint was trained from, {size} (found: {found})",
        f"`cxr preprocess --size {size}` builds it (or pass --cache)",
    )


def _split_rows(manifest: pl.DataFrame, split: str, labels: list[str]) -> pl.DataFrame:
    missing = [
        c
        for c in ("dicom_id", "study_id", "subject_id", "split", *labels)
        if c not in manifest.columns
    ]
    if missing:
        raise InputError(f"manifest lacks columns {missing}")
    return manifest.filter(pl.col("split") == split).sort("study_id", "dicom_id")


def _usable_rows(rows: pl.DataFrame, cache) -> tuple[pl.DataFrame, int]:
    """Rows whose image is in the cache and decoded; the others are counted and left out."""
    ok = cache.index.filter(pl.col("ok")).select("dicom_id")
    kept = rows.join(ok, on="dicom_id", how="semi").sort("study_id", "dicom_id")
    return kept, rows.height - kept.height


def _predict_rows(model, pre, cache, rows, cfg: EvaluateConfig, description: str) -> np.ndarray:
    """Probabilities (n, L) for the manifest rows, in their order, from the cache."""
    from cxr.core.progress import make_progress
    from cxr.imaging.cache import rows_for
    from cxr.inference.runtime import predict_squares

    idx = rows_for(cache, rows["dicom_id"].to_list())
    n = len(idx)

    def batches():
        for start in range(0, n, cfg.batch_size):
            block = np.asarray(cache.images[idx[start : start + cfg.batch_size]])
            if cache.size != pre.square_size:  # another cache: refit its squares
                block = np.stack([pre.square(im) for im in block])
            yield block

    out = []
    with make_progress() as progress:
        task = progress.add_task(description, total=n)
        for probs in predict_squares(model, pre, batches(), cfg.device):
            out.append(probs)
            progress.advance(task, len(probs))
    return np.concatenate(out)


def _unit_probabilities(rows: pl.DataFrame, probs: np.ndarray, labels: list[str], level: str):
    """(per-image frame, per-unit frame) of probabilities, units sorted like `unit_rows`."""
    per_image = pl.DataFrame(
        {"dicom_id": rows["dicom_id"], "study_id": rows["study_id"]}
        | {lab: probs[:, j].astype(np.float64) for j, lab in enumerate(labels)}
    )
    if level == "image":
        return per_image, per_image.sort("study_id", "dicom_id").select(
            "study_id", "dicom_id", *labels
        )
    return per_image, aggregate_studies(per_image, labels).select("study_id", *labels)


def _counts(units: pl.DataFrame, images: int, excluded: int) -> dict[str, int]:
    # Patients as a count only: their ids never leave data/.
    return {
        "images": images,
        "studies": units["study_id"].n_unique(),
        "patients": units["subject_id"].n_unique(),
        "images_excluded_unreadable": excluded,
    }


# --------------------------------------------------------------------------- the run


def evaluate(cfg: EvaluateConfig) -> Evaluation:
    """Predict, score and collect the gallery; returns the Evaluation (nothing written yet)."""
    from cxr.core.hashing import file_sha256
    from cxr.core.paths import DataPaths
    from cxr.evaluation.subgroups import resolve_attributes
    from cxr.inference.runtime import load_model, resolve_device
    from cxr.mimic.manifest import read_manifest

    # Checked before anything is loaded: a bad option costs nothing.
    protocol = Protocol(
        split=cfg.split, level=cfg.level, uncertain=cfg.uncertain, labels=cfg.labels, views=()
    )
    if cfg.min_positives < 0:
        raise CxrError(f"--min-positives must be >= 0, got {cfg.min_positives}")
    if cfg.min_cell < 1:
        raise CxrError(f"--min-cell must be at least 1, got {cfg.min_cell}")
    if (cfg.checkpoint is None) == (cfg.model is None):
        raise CxrError("give either --checkpoint (a cxr run) or --model (a published model)")
    device = resolve_device(cfg.device)
    cfg = dataclasses.replace(cfg, device=str(device))
    if cfg.model is not None:
        return evaluate_source(cfg, protocol)
    model, ckpt, pre = load_model(cfg.checkpoint, cfg.device)
    labels = list(ckpt["labels"])
    manifest_path = Path(
        os.path.abspath(
            cfg.manifest or _run_input(cfg, ckpt, "manifest") or DataPaths(cfg.data_root).manifest
        )
    )
    manifest = read_manifest(manifest_path)
    cfg = dataclasses.replace(cfg, subgroups=resolve_attributes(cfg.subgroups, manifest.columns))
    protocol, radiologist = bind_protocol(
        manifest, manifest_path, protocol, labels, cfg.subgroups, cfg.data_root
    )
    cache = _find_cache(cfg, pre.square_size, _run_input(cfg, ckpt, "cache"))

    predicted = {}
    for split in dict.fromkeys(("validate", cfg.split)):
        rows, excluded = _usable_rows(_split_rows(manifest, split, labels), cache)
        if rows.height == 0:
            raise InputError(f"{manifest_path}: no usable {split} images in the manifest and cache")
        probs = _predict_rows(model, pre, cache, rows, cfg, f"predict {split}")
        predicted[split] = (rows, excluded, probs)

    provenance = {
        "checkpoint": os.path.abspath(cfg.checkpoint),
        "checkpoint_sha256": file_sha256(cfg.checkpoint),
        **manifest_provenance(manifest_path),
    }
    model_info = {
        "arch": ckpt.get("arch"),
        "epoch": ckpt.get("epoch"),
        "image_size": pre.image_size,
        "training_label_policy": dict(ckpt.get("label_policy") or {}),
        "training_label_source": (ckpt.get("config") or {}).get("label_source", "chexpert"),
    }
    evaluation = score_predictions(
        cfg, protocol, labels, predicted, radiologist, provenance, model_info
    )
    from cxr.core.progress import phase
    from cxr.evaluation.report import confident_errors

    with phase("Grad-CAM of the most confident errors"):
        evaluation.gallery = confident_errors(
            evaluation, model, pre, cache, manifest, cfg.gallery_size, cfg.device
        )
    return evaluation


def evaluate_source(cfg: EvaluateConfig, protocol: Protocol) -> Evaluation:
    """A published model (`cfg.model`) scored exactly as a checkpoint: same splits, protocol,
    operating points on validate, patient intervals and fingerprints. Its inputs are decoded from
    the image files with its authors' preprocessing; the CheXpert labels it has no output for are
    left out and named (metrics["model"]["labels_not_in_model"] and the macro's left-out list)."""
    from cxr.core.paths import DataPaths
    from cxr.core.progress import phase
    from cxr.evaluation.subgroups import resolve_attributes
    from cxr.mimic.manifest import read_manifest
    from cxr.pretrained.registry import open_source

    manifest_path = Path(os.path.abspath(cfg.manifest or DataPaths(cfg.data_root).manifest))
    manifest = read_manifest(manifest_path)  # a missing manifest is reported before any loading
    with phase(f"loading {cfg.model}"):
        source = open_source(cfg.model, cfg.weights, device=cfg.device)
    source.to(cfg.device)
    if not source.labels:
        raise CxrError(
            f"{cfg.model}: an image encoder with no label outputs; score it with "
            f"`cxr embed --model {cfg.model}` and then `cxr probe`"
        )
    labels = list(source.labels)
    cfg = dataclasses.replace(cfg, subgroups=resolve_attributes(cfg.subgroups, manifest.columns))
    protocol, radiologist = bind_protocol(
        manifest, manifest_path, protocol, labels, cfg.subgroups, cfg.data_root
    )
    raw = raw_dir_of(manifest_path, cfg.data_root)

    predicted = {}
    for split in dict.fromkeys(("validate", cfg.split)):
        rows = _split_rows(manifest, split, labels)
        if rows.height == 0:
            raise InputError(f"{manifest_path}: no {split} images in the manifest")
        probs, ok = _predict_source_rows(source, raw, rows, cfg, f"predict {split}")
        kept = rows.filter(pl.Series(ok))
        if kept.height == 0:
            raise InputError(f"{manifest_path}: none of the {split} images could be read")
        predicted[split] = (kept, rows.height - kept.height, probs[ok])

    prov = source.provenance or {}
    provenance = {
        "model": cfg.model,
        "weights": prov.get("weights"),
        "weights_sha256": prov.get("weights_sha256"),
        **manifest_provenance(manifest_path),
    }
    lacking = {label: f"no output in {cfg.model}" for label in source.missing_labels}
    model_info = {
        "source": cfg.model,
        "name": source.name,
        "description": f"{cfg.model} (a published model, scored with its authors' preprocessing)",
        "labels_not_in_model": list(source.missing_labels),
        "source_provenance": prov,
    }
    return score_predictions(
        cfg, protocol, labels, predicted, radiologist, provenance, model_info, unscored=lacking
    )


def _predict_source_rows(source, raw: Path, rows: pl.DataFrame, cfg: EvaluateConfig, what: str):
    """(probabilities (n, L), readable mask (n,)) of a model source on manifest rows, in order."""
    from cxr.core.progress import make_progress
    from cxr.pretrained.batches import file_batches

    paths = [raw / p for p in rows["image_path"].to_list()]
    probs = np.full((len(paths), len(source.labels)), np.nan, dtype=np.float32)
    ok = np.zeros(len(paths), dtype=bool)
    with make_progress() as progress:
        task = progress.add_task(what, total=len(paths))
        for batch in file_batches(source, paths, cfg.batch_size, cfg.workers):
            good = np.asarray(batch.positions)[np.asarray(batch.ok, dtype=bool)]
            if batch.inputs is not None:
                probs[good] = source.classify(batch.inputs)
                ok[good] = True
            progress.advance(task, len(batch.positions))
    return probs, ok


def manifest_provenance(manifest_path: Path) -> dict[str, Any]:
    """The provenance every evaluation records beside what it scored (a checkpoint, a published
    model or a probe's embeddings): the manifest and its digest, cxr's version, the date and
    whether the data came from `cxr demo`."""
    from cxr.core.hashing import file_sha256
    from cxr.mimic.synthetic import manifest_is_demo

    return {
        "manifest": str(manifest_path),
        "manifest_sha256": file_sha256(manifest_path),
        "cxr_version": __version__,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "synthetic_demo": manifest_is_demo(manifest_path),
    }


def bind_protocol(
    manifest: pl.DataFrame,
    path: Path,
    protocol: Protocol,
    labels: list[str],
    subgroups: tuple[str, ...],
    data_root: Path,
) -> tuple[Protocol, pl.DataFrame | None]:
    """The protocol bound to a manifest, before any prediction: its sources checked
    (`check_sources`), the manifest's views recorded in it, and the radiologists' table when the
    protocol scores against it (read from the manifest's raw tree)."""
    check_sources(manifest, path, protocol, labels, subgroups)
    views = tuple(sorted(manifest["view_position"].unique().drop_nulls().to_list()))
    protocol = dataclasses.replace(protocol, views=views)
    radiologist = (
        load_radiologist_table(raw_dir_of(path, data_root))
        if protocol.labels == "radiologist"
        else None
    )
    return protocol, radiologist


def check_sources(
    manifest: pl.DataFrame,
    path: Path,
    protocol: Protocol,
    labels: list[str],
    subgroups: tuple[str, ...],
) -> None:
    """One line, before any prediction, when the manifest lacks what the options need: NegBio
    columns for `--labels negbio`, demographic columns for `--subgroups`."""
    from cxr.evaluation.subgroups import ATTRIBUTES
    from cxr.evaluation.targets import require_negbio

    if protocol.labels == "negbio":
        require_negbio(manifest, labels, str(path))
    for attribute in subgroups:
        if attribute not in ATTRIBUTES:
            raise CxrError(f"--subgroups: unknown attribute {attribute!r}")
        if attribute not in manifest.columns:
            raise InputError(
                f"{path}: --subgroups {attribute}: the manifest has no demographics (column "
                f"'{attribute}'); put MIMIC-IV's patients and admissions under "
                "<raw>/mimiciv/<version>/hosp/ (`cxr download demographics`) and rebuild it "
                "with `cxr manifest`"
            )


def score_predictions(
    cfg: EvaluateConfig,
    protocol: Protocol,
    labels: list[str],
    predicted: dict[str, tuple[pl.DataFrame, int, np.ndarray]],
    radiologist: pl.DataFrame | None,
    provenance: dict[str, Any],
    model_info: dict[str, Any],
    unscored: dict[str, str] | None = None,
) -> Evaluation:
    """Everything after prediction, with no model: units, targets, scores, fingerprints.

    `unscored`: labels with no probabilities at all (a published model without that output, a
    probe not fitted), each with the reason, named where the macro names its left-out labels.

    `predicted[split]` is (manifest image rows with `subject_id` and the label columns, images
    left out as unreadable, probabilities (n, L)) for "validate" and for the evaluated split.
    """
    # Operating points: chosen on validate's CheXpert labels (NegBio's under the NegBio protocol)
    # at the evaluation level.
    val_rows, val_excluded, val_probs = predicted["validate"]
    _, val_units_p = _unit_probabilities(val_rows, val_probs, labels, cfg.level)
    val_units = unit_rows(val_rows, labels, cfg.level)
    if protocol.labels == "negbio":
        y_val, _ = targets(val_units, labels, protocol)
    else:
        y_val = eval_targets(val_units.select(labels).to_numpy().astype(np.float64), cfg.uncertain)
    p_val = val_units_p.select(labels).to_numpy()
    ops = choose_operating_points(y_val, p_val, labels)

    rows, excluded, probs = predicted[cfg.split]
    per_image, units_p = _unit_probabilities(rows, probs, labels, cfg.level)
    units = unit_rows(rows, labels, cfg.level)
    y, covered = targets(units, labels, protocol, radiologist)
    if not covered.any():
        source = "NegBio" if protocol.labels == "negbio" else "radiologist"
        raise InputError(f"none of the {cfg.split} studies has {source} labels")
    units, units_p, y = (
        units.filter(pl.Series(covered)),
        units_p.filter(pl.Series(covered)),
        y[covered],
    )
    kept_studies = units.select("study_id").unique()
    per_image = per_image.join(kept_studies, on="study_id", how="semi")
    p = units_p.select(labels).to_numpy().astype(np.float64)
    unit_ids = units[unit_keys(cfg.level)[-1]].to_list()

    from cxr.core.progress import phase

    with phase(f"scoring: {cfg.n_bootstrap} patient resamples for the intervals"):
        table = score(
            y,
            p,
            labels,
            ops,
            groups=units["subject_id"].to_numpy(),
            studies=units["study_id"].to_numpy(),
            config=ScoringConfig(
                n_bootstrap=cfg.n_bootstrap,
                seed=cfg.seed,
                ece_bins=cfg.ece_bins,
                min_positives=cfg.min_positives,
            ),
        )
    for j, label in enumerate(labels):
        table["labels"][label]["rows_fingerprint"] = label_fingerprint(unit_ids, y[:, j])
    if radiologist is not None:
        for label in labels:
            if label not in radiologist.columns:
                table["labels"][label]["reason"] = "not in the radiologists' labels"
                table["labels"][label]["excluded_from_macro"] = "not in the radiologists' labels"
                table["macro"]["left_out"][label] = "not in the radiologists' labels"
    table["macro"].setdefault("left_out", {}).update(unscored or {})

    note = {"test": SPLIT_NOTE, "validate": SAME_SPLIT_NOTE}.get(cfg.split)
    counts = {cfg.split: _counts(units, per_image.height, excluded)}
    if cfg.split != "validate":
        counts["validate"] = _counts(val_units, val_rows.height, val_excluded)
    metrics: dict[str, Any] = {
        "split": cfg.split,
        "level": cfg.level,
        "protocol": protocol.to_dict(),
        "rows_fingerprint": rows_fingerprint(unit_ids, labels, y),
        "provenance": provenance,
        "model": model_info,
        "operating_points": OPERATING_POINTS,
        "min_positives": cfg.min_positives,
        "bootstrap": {
            "unit": "patient",
            "n": cfg.n_bootstrap,
            "seed": cfg.seed,
            "interval": "95% percentile",
        },
        "ece_bins": cfg.ece_bins,
        "counts": counts,
        "note": note,
        "validate": point_figures(y_val, p_val, labels, ops),
        **table,
    }
    # Each label's figures also sit under its exact name at the top level (m["Edema"]["auroc"]).
    clash = [label for label in labels if label in metrics]
    if clash:
        raise CxrError(f"label names {clash} clash with metrics.json keys")
    metrics.update({label: table["labels"][label] for label in labels})
    if cfg.subgroups:
        from cxr.evaluation.subgroups import UNDERDIAGNOSIS, score_subgroups, unit_attributes

        attributes = unit_attributes(rows, units, cfg.level, cfg.subgroups)
        subgroups, gaps = score_subgroups(
            y,
            p,
            labels,
            {label: ops[label]["youden"]["threshold"] for label in labels},
            groups=units["subject_id"].to_numpy(),
            studies=units["study_id"].to_numpy(),
            attributes=attributes,
            min_cell=cfg.min_cell,
            n_bootstrap=cfg.n_bootstrap,
            seed=cfg.seed,
        )
        metrics["subgroups"] = subgroups
        metrics["subgroup_gaps"] = gaps
        metrics["subgroup_options"] = {
            "attributes": list(cfg.subgroups),
            "min_cell": cfg.min_cell,
            "threshold": "youden (chosen on validate)",
            "underdiagnosis": UNDERDIAGNOSIS,
        }
    return Evaluation(metrics, labels, units_p, y, p, per_image)


def write_evaluation(evaluation: Evaluation, out: Path) -> None:
    """metrics.json, predictions.csv (per image) and, at study level, predictions_study.csv."""
    from cxr.core.atomic import atomic_path, write_text_atomic

    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out is an existing file, not a directory")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        out / METRICS_JSON, json.dumps(evaluation.metrics, indent=2, allow_nan=False) + "\n"
    )
    labels = evaluation.labels
    if evaluation.per_image is not None:
        with atomic_path(out / PREDICTIONS) as tmp:
            evaluation.per_image.select("dicom_id", "study_id", *labels).write_csv(
                tmp, float_precision=6
            )
    if evaluation.metrics["level"] == "study":
        with atomic_path(out / PREDICTIONS_STUDY) as tmp:
            evaluation.units.select("study_id", *labels).write_csv(tmp, float_precision=6)


def read_evaluation(directory: Path) -> Evaluation:
    """An evaluation directory read back: metrics.json and the probabilities its metrics used.

    The targets are not stored (they follow from the manifest and the protocol): `y` is empty
    until `cxr.evaluation.compare` rebuilds it.
    """
    directory = Path(directory)
    path = directory / METRICS_JSON
    if not path.is_file():
        raise MissingInput(
            path, f"{METRICS_JSON} of an evaluation", "`cxr evaluate --out DIR` writes one in DIR"
        )
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if "protocol" not in metrics or "labels" not in metrics:
        raise InputError(
            f"{path}: written by an older cxr evaluate (no protocol or fingerprint); evaluate again"
        )
    labels = list(metrics["labels"])
    level = metrics["level"]
    pred_path = directory / (PREDICTIONS_STUDY if level == "study" else PREDICTIONS)
    if not pred_path.is_file():
        raise InputError(f"{pred_path}: not found beside {METRICS_JSON}")
    keys = unit_keys(level)
    schema = {"study_id": pl.Int64, "dicom_id": pl.Utf8} | dict.fromkeys(labels, pl.Float64)
    try:
        units = pl.read_csv(pred_path, schema_overrides=schema)
    except Exception as exc:  # polars raises several types for a damaged file
        raise InputError(f"{pred_path}: not a readable CSV ({type(exc).__name__})") from None
    missing = [c for c in (*keys, *labels) if c not in units.columns]
    if missing:
        raise InputError(f"{pred_path}: missing column '{missing[0]}'")
    units = units.select(*keys, *labels).sort(keys)
    p = units.select(labels).to_numpy().astype(np.float64)
    return Evaluation(metrics, labels, units, np.empty((0, len(labels))), p)
