"""`cxr probe`: linear probes on stored embeddings, per fraction of the training patients.

How much labelled data does a frozen encoder need? For each fraction of the train split's patients
this fits, per label, an L2 logistic regression on the embeddings `cxr embed` stored, and scores it
exactly as `cxr evaluate` scores a trained model, so a probe's evaluation directory can be read by
`cxr compare` and `cxr view` beside any other.

Order of events:
- read the manifest and the embedding store (`cxr.pretrained.embeddings`), join them by dicom_id;
  images without an embedding are counted and left out;
- refuse a manifest whose splits share a patient (the subsets below are only held out from
  validate and test because the official split is patient-disjoint);
- permute the train split's patients once with the seed; fraction f trains on the first
  ceil(f * N) of them (at least one), so the subsets are nested;
- per fraction and label: targets under the *training* label policy (`cxr.mimic.policy`, rows
  with mask 0 left out), features standardised on the training subset, a path of C values fitted
  with warm starts, C chosen by the validate split's AUROC under the *evaluation* protocol at the
  evaluation level (studies: the mean of their images' probabilities); a label with one class in
  the subset is not fitted, and says so;
- `cxr.evaluation.evaluate.score_predictions` then chooses operating points on validate and scores
  the evaluated split with patient-bootstrap intervals and fingerprints, as for a checkpoint.

Patients are used in memory to form the subsets and to resample; they leave only as counts.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cxr.core.errors import CxrError, InputError
from cxr.evaluation.evaluate import EvaluateConfig, Evaluation, score_predictions
from cxr.evaluation.protocol import Protocol
from cxr.mimic.policy import LabelPolicy, apply_policy
from cxr.mimic.schema import LABELS
from cxr.training.config import TrainConfig

DEFAULT_FRACTIONS = (0.01, 0.1, 1.0)
# Five decades of inverse regularisation on standardised features: the left end keeps only a
# mean-difference direction (what a 1% subset can support), the right end is nearly unpenalised.
DEFAULT_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# The training defaults of `cxr train`, read from its config so the two cannot drift apart.
_TRAIN_DEFAULTS = TrainConfig()
C_CHOSEN_ON = (
    "validate split AUROC at the evaluation level (studies: mean of image probabilities), against "
    "the targets operating points are chosen on (CheXpert's; NegBio's under --labels negbio), "
    "uncertain as the protocol says"
)


@dataclass(frozen=True)
class ProbeConfig:
    embeddings: str  # a store name under <data root>/interim/embed-<name>, or its directory
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    out: Path | None = None  # default: reports/probe-<embeddings name>
    manifest: Path | None = None  # default: the data root's
    # The evaluation protocol, as `cxr evaluate`'s options.
    split: str = "test"
    level: str = "study"
    uncertain: str = "exclude"
    labels: str = "chexpert"
    min_positives: int = 10
    n_bootstrap: int = 1000
    subgroups: tuple[str, ...] = ()  # attributes of cxr.evaluation.subgroups.ATTRIBUTES
    min_cell: int = 20  # patients a subgroup needs to be shown
    # The training targets, as `cxr train`'s policy and label_source.
    policy: LabelPolicy = field(default_factory=lambda: _TRAIN_DEFAULTS.policy)
    label_source: str = _TRAIN_DEFAULTS.label_source
    seed: int = 0  # the patient permutation and the bootstrap
    c_grid: tuple[float, ...] = DEFAULT_C_GRID
    max_iter: int = 200  # lbfgs iterations per C (warm-started from the previous C)
    tol: float = 1e-4  # lbfgs gradient tolerance
    workers: int = 1  # labels fitted in parallel threads
    data_root: Path = Path("data")

    def out_dir(self, name: str) -> Path:
        return self.out or Path("reports") / f"probe-{name}"


@dataclass
class FractionResult:
    fraction: float
    patients: int
    images: int
    not_fitted: dict[str, str]  # label -> why it has no probe at this fraction
    chosen_c: dict[str, float]
    evaluation: Evaluation | None  # None when no label could be fitted


@dataclass
class ProbeResult:
    config: ProbeConfig
    store: Path
    meta: dict[str, Any]
    manifest: Path
    protocol: Protocol
    train_patients: int
    train_images: int
    fractions: list[FractionResult]
    notes: list[str]
    provenance: dict[str, Any]
    # The macro AUROC over the labels every fraction averages, when some fraction averages
    # fewer (`common_macro`); None when every fraction's macro already runs over the same labels.
    common_macro: dict[str, Any] | None = None


# --------------------------------------------------------------------------- option parsing


def parse_fractions(text: str) -> tuple[float, ...]:
    """`0.01,0.1,1.0` -> (0.01, 0.1, 1.0): each in (0, 1], strictly increasing (one-line error)."""
    values = _numbers("--fractions", text)
    for v in values:
        if not 0 < v <= 1:
            raise CxrError(
                f"--fractions: {v:g} is not in (0, 1] (a fraction of the train patients)"
            )
    for a, b in itertools.pairwise(values):
        if b <= a:
            what = "repeated" if a == b else "out of order"
            raise CxrError(
                f"--fractions: {b:g} is {what}; list each fraction once, increasing "
                "(e.g. 0.01,0.1,1.0)"
            )
    return values


def parse_grid(text: str) -> tuple[float, ...]:
    """`--C 0.001,0.01,0.1` -> the C values, positive and distinct, in increasing order (the
    order the warm-started path runs)."""
    values = _numbers("--C", text)
    for v in values:
        if v <= 0:
            raise CxrError(f"--C: {v:g} is not positive (C is an inverse regularisation strength)")
    if len(set(values)) != len(values):
        raise CxrError(f"--C: a value is repeated in {text!r}")
    return tuple(sorted(values))


def _numbers(option: str, text: str) -> tuple[float, ...]:
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(p == "" for p in parts):
        raise CxrError(f"{option}: expected comma-separated numbers, got {text!r}")
    values = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise CxrError(f"{option}: {p!r} is not a number") from None
        if not math.isfinite(v):
            raise CxrError(f"{option}: {p!r} is not a finite number")
        values.append(v)
    return tuple(values)


def store_name(meta: dict, directory: Path) -> str:
    """The store's name as embed.json records it (its directory's name without `embed-` for a
    store written without one)."""
    return str(meta.get("name") or Path(directory).name.removeprefix("embed-"))


def fraction_name(fraction: float) -> str:
    """The directory of one fraction: fraction-0.01, fraction-1.0."""
    return f"fraction-{float(fraction)!r}"


# --------------------------------------------------------------------------- subsets (pure)


def subset_size(fraction: float, n: int) -> int:
    """ceil(fraction * n), at least 1 (rounded first, so 0.1 * 30 is 3, not 4)."""
    return max(1, math.ceil(round(fraction * n, 9)))


def patient_subsets(patients: Sequence, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Nested patient subsets: the distinct patients permuted once with `seed`; fraction f takes
    the first `subset_size(f, N)`, so each subset holds every smaller one."""
    unique = np.unique(np.asarray(patients))
    order = unique[np.random.default_rng(seed).permutation(unique.size)]
    return [order[: subset_size(f, unique.size)] for f in fractions]


def check_patient_disjoint(manifest: pl.DataFrame, path: Path) -> None:
    """One line when a patient has images in two splits: a probe's training subset is held out
    from validate and test only because the official split is patient-disjoint."""
    shared = (
        manifest.group_by("subject_id")
        .agg(pl.col("split").n_unique().alias("n"))
        .filter(pl.col("n") > 1)
        .height
    )
    if shared:
        raise InputError(
            f"{path}: {shared} patients have images in more than one split; the official split "
            "is patient-disjoint and a probe trained on such a split would see test patients "
            "(rebuild the manifest with `cxr manifest`)"
        )


def embedded_rows(rows: pl.DataFrame, index: pl.DataFrame) -> tuple[pl.DataFrame, int, int]:
    """(rows with a readable embedding sorted by study and image, rows whose image the store
    could not read, rows the store does not know)."""
    status = rows.select("dicom_id").join(
        index.select("dicom_id", "ok").unique("dicom_id", keep="first"),
        on="dicom_id",
        how="left",
    )
    missing = int(status["ok"].is_null().sum())
    unreadable = int((status["ok"] == False).sum())  # noqa: E712  (polars: null is neither)
    ok = index.filter(pl.col("ok")).select("dicom_id").unique()
    kept = rows.join(ok, on="dicom_id", how="semi").sort("study_id", "dicom_id")
    return kept, unreadable, missing


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """float32 features centred and scaled by the training rows' mean and standard deviation
    (a constant feature keeps scale 1)."""
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    std[std < 1e-12] = 1.0
    mean, scale = mean.astype(np.float32), (1.0 / std).astype(np.float32)
    return [((x - mean) * scale).astype(np.float32, copy=False) for x in (train, *others)]


def unit_index(rows: pl.DataFrame, level: str) -> tuple[np.ndarray, int]:
    """(unit of each image row, number of units), units sorted like `targets.unit_rows`: the
    rows are sorted by study and image, so at image level each row is its own unit."""
    if level == "image":
        return np.arange(rows.height), rows.height
    _, codes = np.unique(rows["study_id"].to_numpy(), return_inverse=True)
    return codes, int(codes.max()) + 1 if codes.size else 0


def unit_means(p: np.ndarray, codes: np.ndarray, n_units: int) -> np.ndarray:
    """Per-unit mean of image probabilities (n_images, k) -> (n_units, k)."""
    counts = np.bincount(codes, minlength=n_units).astype(np.float64)
    out = np.empty((n_units, p.shape[1]))
    for k in range(p.shape[1]):
        out[:, k] = np.bincount(codes, weights=p[:, k], minlength=n_units) / counts
    return out


# --------------------------------------------------------------------------- fitting


@dataclass
class LabelFit:
    c_index: int | None  # into the grid; None: not fitted
    reason: str | None  # why not fitted, or how C was chosen when validate could not choose
    validate_auroc: list[float | None]  # per C
    p_val: np.ndarray | None  # images of validate, at the chosen C
    p_eval: np.ndarray | None  # images of the evaluated split, at the chosen C
    n_pos: int
    n_neg: int
    iterations: list[int]


def fit_path(
    x: np.ndarray, y: np.ndarray, grid: Sequence[float], max_iter: int, tol: float
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(coefficients (len(grid), D), intercepts, lbfgs iterations) along the C path, increasing C,
    each fit starting from the previous one's solution."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=grid[0], max_iter=max_iter, tol=tol, warm_start=True)
    coefs, intercepts, iters = [], [], []
    # Iterations that reach max_iter are recorded per label instead (model.n_iter_). One filter,
    # added once for the process: catch_warnings here would swap the process-wide filter list
    # from several fitting threads at once (--workers) and could leave it changed.
    _quiet_convergence(ConvergenceWarning)
    for c in grid:
        model.set_params(C=c)
        model.fit(x, y)
        coefs.append(model.coef_[0].copy())
        intercepts.append(float(model.intercept_[0]))
        iters.append(int(model.n_iter_[0]))
    return np.stack(coefs), np.asarray(intercepts), iters


@functools.cache
def _quiet_convergence(category) -> None:
    warnings.filterwarnings("ignore", category=category, module="sklearn")


def _auroc(y: np.ndarray, p: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    keep = ~np.isnan(y)
    yk = y[keep]
    if yk.size == 0 or yk.min() == yk.max():
        return None
    return float(roc_auc_score(yk, p[keep]))


def fit_label(
    x_train: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray,
    x_val: np.ndarray,
    val_units: tuple[np.ndarray, int],
    y_val: np.ndarray,
    x_eval: np.ndarray | None,
    cfg: ProbeConfig,
) -> LabelFit:
    """One label at one fraction: the C path on the training rows the policy keeps, C chosen by
    validate AUROC (ties: the smaller C), probabilities of validate and the evaluated split."""
    from scipy.special import expit

    keep = mask > 0
    y = target[keep]
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return LabelFit(
            None,
            f"not fitted: one class in the training subset: {n_pos} positive, {n_neg} "
            "negative images",
            [],
            None,
            None,
            n_pos,
            n_neg,
            [],
        )
    coefs, intercepts, iters = fit_path(x_train[keep], y, cfg.c_grid, cfg.max_iter, cfg.tol)
    p_val_all = expit(x_val @ coefs.T.astype(np.float32) + intercepts.astype(np.float32))
    p_units = unit_means(p_val_all.astype(np.float64), *val_units)
    aurocs = [_auroc(y_val, p_units[:, k]) for k in range(len(cfg.c_grid))]
    reason = None
    if all(a is None for a in aurocs):
        best = len(cfg.c_grid) // 2
        reason = "validate has one class: C is the middle of the grid"
    else:
        best = int(np.argmax([-1.0 if a is None else a for a in aurocs]))  # first max: smaller C
    p_eval = None
    if x_eval is not None:
        p_eval = expit(x_eval @ coefs[best].astype(np.float32) + np.float32(intercepts[best]))
    return LabelFit(best, reason, aurocs, p_val_all[:, best], p_eval, n_pos, n_neg, iters)


def _fit_labels(jobs: list, workers: int, progress_task) -> list[LabelFit]:
    """Run fit_label jobs, in `workers` threads (BLAS releases the GIL).

    BLAS runs single-threaded here: lbfgs makes two matrix-vector products per evaluation, too
    small to share between cores, and a multi-threaded BLAS spends most of each one synchronising
    its threads (on a busy 2-core box a label's C path took 3.5 s instead of 0.1 s). Parallelism
    comes from fitting labels side by side instead.
    """
    from threadpoolctl import threadpool_limits

    progress, task = progress_task
    with threadpool_limits(limits=1, user_api="blas"):
        if workers <= 1 or len(jobs) <= 1:
            out = []
            for job in jobs:
                out.append(fit_label(*job))
                progress.advance(task)
            return out
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(fit_label, *job) for job in jobs]
            out = []
            for fut in futures:
                out.append(fut.result())
                progress.advance(task)
    return out


# --------------------------------------------------------------------------- the run


def _check_config(cfg: ProbeConfig) -> Protocol:
    protocol = Protocol(
        split=cfg.split, level=cfg.level, uncertain=cfg.uncertain, labels=cfg.labels, views=()
    )
    if cfg.split == "train":
        raise CxrError("--split train: the probe trains on the train split; use test or validate")
    if not cfg.fractions:
        raise CxrError("--fractions: at least one fraction is needed")
    parse_fractions(",".join(repr(float(f)) for f in cfg.fractions))
    if not cfg.c_grid or any(c <= 0 for c in cfg.c_grid) or list(cfg.c_grid) != sorted(cfg.c_grid):
        raise CxrError("--C: positive values in increasing order are needed")
    if cfg.min_positives < 0 or cfg.n_bootstrap < 0:
        raise CxrError("--min-positives and --bootstrap must be >= 0")
    if cfg.workers < 1:
        raise CxrError(f"--workers must be at least 1, got {cfg.workers}")
    if cfg.min_cell < 1:
        raise CxrError(f"--min-cell must be at least 1, got {cfg.min_cell}")
    if cfg.max_iter < 1 or not cfg.tol > 0:
        raise CxrError(f"max_iter must be >= 1 and tol positive, got {cfg.max_iter}, {cfg.tol}")
    if cfg.label_source not in ("chexpert", "negbio"):
        raise CxrError(f"--label-source: {cfg.label_source!r} is not one of chexpert, negbio")
    return protocol


def _training_rows(manifest: pl.DataFrame, labels: list[str], cfg: ProbeConfig, path: Path):
    """The train split's image rows with their raw training label columns (NegBio's under
    `--label-source negbio`, where studies without a NegBio row are left out, as `cxr train`
    does); returns (rows, raw labels (n, L), rows left out as unlabelled)."""
    from cxr.mimic import schema

    columns = [schema.label_column(lab, cfg.label_source) for lab in labels]
    rows = manifest.filter(pl.col("split") == "train")
    unlabelled = 0
    if cfg.label_source == "negbio":
        from cxr.evaluation.targets import require_negbio

        require_negbio(manifest, labels, str(path))
        labelled = rows[schema.NEGBIO_LABELLED].fill_null(False)
        unlabelled = int((~labelled).sum())
        rows = rows.filter(labelled)
    return rows, columns, unlabelled


def probe(cfg: ProbeConfig) -> ProbeResult:
    """Fit and score every fraction; returns the evaluations (nothing written yet)."""
    from cxr.core.hashing import file_sha256
    from cxr.core.paths import DataPaths
    from cxr.core.progress import make_progress, phase
    from cxr.evaluation.evaluate import bind_protocol, manifest_provenance
    from cxr.evaluation.subgroups import resolve_attributes
    from cxr.evaluation.targets import targets, unit_rows
    from cxr.mimic.manifest import read_manifest
    from cxr.pretrained.embeddings import META, load_embeddings, resolve_embeddings
    from cxr.stats.metrics import eval_targets

    protocol = _check_config(cfg)
    paths = DataPaths(cfg.data_root)
    store_dir = resolve_embeddings(cfg.embeddings, paths.interim)
    with phase("reading the embeddings and the manifest"):
        emb = load_embeddings(store_dir)
        manifest_path = Path(os.path.abspath(cfg.manifest or paths.manifest))
        manifest = read_manifest(manifest_path)
    labels = [lab for lab in LABELS if lab in manifest.columns]
    subgroups = resolve_attributes(cfg.subgroups, manifest.columns)
    protocol, radiologist = bind_protocol(
        manifest, manifest_path, protocol, labels, subgroups, cfg.data_root
    )
    check_patient_disjoint(manifest, manifest_path)

    notes: list[str] = []
    train_all, train_columns, unlabelled = _training_rows(manifest, labels, cfg, manifest_path)
    if unlabelled:
        notes.append(f"{unlabelled} train images without NegBio labels are left out of training")
    split_rows = {"train": train_all}
    for split in dict.fromkeys(("validate", cfg.split)):
        split_rows[split] = manifest.filter(pl.col("split") == split)
    usable, unreadable, missing_total = {}, {}, 0
    for split, rows in split_rows.items():
        kept, bad, missing = embedded_rows(rows, emb.index)
        usable[split], unreadable[split] = kept, bad
        missing_total += missing
        if kept.height == 0:
            raise InputError(
                f"{manifest_path}: no {split} images of the manifest have an embedding in "
                f"{emb.dir} (run `cxr embed` for this manifest)"
            )
    if missing_total:
        notes.append(
            f"{missing_total} images of the manifest have no embedding in {store_name(emb.meta, emb.dir)} and "
            "are left "
            "out; run `cxr embed` again for this manifest to add them"
        )
    if cfg.split == "validate":
        notes.append(
            "evaluated on the validate split, where C was chosen: every figure is optimistic"
        )

    def features(rows: pl.DataFrame) -> np.ndarray:
        return np.asarray(emb.vectors[emb.rows_for(rows["dicom_id"].to_list())], dtype=np.float32)

    with phase("gathering the embeddings"):
        x = {split: features(rows) for split, rows in usable.items()}

    # Validate targets for choosing C: the protocol's, at its level, on the labels operating
    # points are chosen on (CheXpert; NegBio under the NegBio protocol), as score_predictions.
    val_rows = usable["validate"]
    val_unit_rows = unit_rows(val_rows, labels, cfg.level)
    if protocol.labels == "negbio":
        y_val, _ = targets(val_unit_rows, labels, protocol)
    else:
        y_val = eval_targets(
            val_unit_rows.select(labels).to_numpy().astype(np.float64), cfg.uncertain
        )
    val_units = unit_index(val_rows, cfg.level)

    train = usable["train"]
    subsets = patient_subsets(train["subject_id"].to_numpy(), cfg.fractions, cfg.seed)
    raw_train = train.select(train_columns).to_numpy().astype(np.float32)
    all_targets, all_mask = apply_policy(raw_train, labels, cfg.policy)
    subject = train["subject_id"].to_numpy()

    provenance = {
        "embeddings": os.path.abspath(emb.dir),
        "embeddings_sha256": file_sha256(emb.dir / META),
        **manifest_provenance(manifest_path),
    }
    eval_cfg = EvaluateConfig(
        split=cfg.split,
        level=cfg.level,
        uncertain=cfg.uncertain,
        labels=cfg.labels,
        min_positives=cfg.min_positives,
        subgroups=subgroups,
        min_cell=cfg.min_cell,
        n_bootstrap=cfg.n_bootstrap,
        seed=cfg.seed,
        manifest=manifest_path,
        data_root=cfg.data_root,
    )
    shared = _Shared(
        cfg, emb, labels, usable, unreadable, eval_cfg, protocol, radiologist, provenance
    )
    x_eval_raw = x[cfg.split] if cfg.split != "validate" else None
    results: list[FractionResult] = []
    for fraction, patients in zip(cfg.fractions, subsets, strict=True):
        chosen = np.isin(subject, patients)
        x_tr, x_va, *rest = standardise(
            x["train"][chosen], x["validate"], *([] if x_eval_raw is None else [x_eval_raw])
        )
        x_ev = rest[0] if rest else None
        t_sub, m_sub = all_targets[chosen], all_mask[chosen]
        jobs = [
            (x_tr, t_sub[:, j], m_sub[:, j], x_va, val_units, y_val[:, j], x_ev, cfg)
            for j in range(len(labels))
        ]
        with make_progress() as progress:
            task = progress.add_task(f"fraction {fraction!r}: fit", total=len(jobs))
            fits = _fit_labels(jobs, cfg.workers, (progress, task))
        results.append(
            _score_fraction(shared, fraction, int(patients.size), int(chosen.sum()), fits)
        )
    if all(r.evaluation is None for r in results):
        raise InputError(
            f"{manifest_path}: no label has both classes among the train images of any "
            f"fraction under the training policy ({cfg.label_source} labels, "
            f"uncertain={cfg.policy.uncertain}, missing={cfg.policy.missing}); nothing to score"
        )
    study_subject = dict(
        zip(
            usable[cfg.split]["study_id"].to_list(),
            usable[cfg.split]["subject_id"].to_list(),
            strict=True,
        )
    )
    return ProbeResult(
        common_macro=common_macro(results, study_subject, cfg.n_bootstrap, cfg.seed),
        config=cfg,
        store=Path(os.path.abspath(emb.dir)),
        meta=dict(emb.meta),
        manifest=manifest_path,
        protocol=protocol,
        train_patients=int(np.unique(subject).size),
        train_images=train.height,
        fractions=results,
        notes=notes,
        provenance=provenance,
    )


@dataclass(frozen=True)
class _Shared:
    """What every fraction's scoring reads."""

    cfg: ProbeConfig
    emb: Any
    labels: list[str]
    usable: dict[str, pl.DataFrame]
    unreadable: dict[str, int]
    eval_cfg: EvaluateConfig
    protocol: Protocol
    radiologist: pl.DataFrame | None
    provenance: dict[str, Any]


def _score_fraction(
    s: _Shared, fraction: float, n_patients: int, n_images: int, fits: list[LabelFit]
) -> FractionResult:
    """score_predictions on the fitted labels of one fraction."""
    cfg, emb, labels, usable, unreadable = s.cfg, s.emb, s.labels, s.usable, s.unreadable
    fitted = [j for j, f in enumerate(fits) if f.c_index is not None]
    not_fitted = {labels[j]: fits[j].reason for j in range(len(labels)) if j not in fitted}
    chosen_c = {labels[j]: cfg.c_grid[fits[j].c_index] for j in fitted}
    if not fitted:
        return FractionResult(fraction, n_patients, n_images, not_fitted, {}, None)
    names = [labels[j] for j in fitted]
    p_val = np.stack([fits[j].p_val for j in fitted], axis=1)
    predicted = {"validate": (usable["validate"], unreadable["validate"], p_val)}
    if cfg.split != "validate":
        p_eval = np.stack([fits[j].p_eval for j in fitted], axis=1)
        predicted[cfg.split] = (usable[cfg.split], unreadable[cfg.split], p_eval)
    model_info = {
        "kind": "linear probe",
        "description": (
            f"linear probe on {store_name(emb.meta, emb.dir)} embeddings "
            f"({emb.meta.get('spec')}), fraction {fraction!r} of the training patients: "
            f"{n_patients} patients, {n_images} images"
        ),
        "arch": f"logistic regression on {store_name(emb.meta, emb.dir)} embeddings",
        "epoch": None,
        "image_size": None,
        "embeddings": store_name(emb.meta, emb.dir),
        "embeddings_spec": emb.meta.get("spec"),
        "embedding_dim": emb.dim,
        "embeddings_meta": {k: v for k, v in emb.meta.items() if k != "complete"},
        "fraction": fraction,
        "training_patients": n_patients,
        "training_images": n_images,
        "seed": cfg.seed,
        "subsets": "train patients permuted once with the seed; each fraction takes the first "
        "ceil(fraction * patients), so smaller fractions are inside larger ones",
        "C": chosen_c,
        "C_grid": list(cfg.c_grid),
        "C_chosen_on": C_CHOSEN_ON,
        "C_notes": {labels[j]: fits[j].reason for j in fitted if fits[j].reason},
        "validate_auroc_per_C": {labels[j]: fits[j].validate_auroc for j in fitted},
        "training_positives": {labels[j]: fits[j].n_pos for j in range(len(labels))},
        "training_negatives": {labels[j]: fits[j].n_neg for j in range(len(labels))},
        "lbfgs": {
            "max_iter": cfg.max_iter,
            "tol": cfg.tol,
            "iterations": {labels[j]: fits[j].iterations for j in fitted},
        },
        "features": "float16 embeddings as float32, standardised on the training subset",
        "labels_not_fitted": not_fitted,
        "training_label_policy": cfg.policy.to_dict(),
        "training_label_source": cfg.label_source,
    }
    # A label without a probe is said where the macro's other left-out labels are.
    evaluation = score_predictions(
        s.eval_cfg,
        s.protocol,
        names,
        predicted,
        s.radiologist,
        s.provenance,
        model_info,
        unscored=not_fitted,
    )
    return FractionResult(fraction, n_patients, n_images, not_fitted, chosen_c, evaluation)


def common_macro(
    results: list[FractionResult], study_subject: dict, n_bootstrap: int, seed: int
) -> dict[str, Any] | None:
    """The macro AUROC of every fraction over the same labels: those in every fraction's macro.

    A fraction where a label had one class in its training subset averages fewer labels, so its
    macro is another quantity than its neighbours'; this one is comparable along the curve. Its
    interval comes from the same patient resamples (same seed, same evaluated rows) as the
    fractions' own. None when every fraction's macro already runs over the same labels.
    """
    from cxr.mimic.schema import LABELS
    from cxr.stats.bootstrap import bootstrap_metrics, macro_over, percentile_interval

    scored = [r for r in results if r.evaluation is not None]
    sets = [set(r.evaluation.metrics["macro"]["labels"]) for r in scored]
    if len(scored) < 2:
        return None
    common = set.intersection(*sets)
    if not common or all(s == common for s in sets):
        return None
    order = [lab for lab in LABELS if lab in common] + sorted(common - set(LABELS))
    out: dict[str, Any] = {"labels": order, "fractions": {}}
    for r in scored:
        ev = r.evaluation
        cols = [ev.labels.index(lab) for lab in order]
        point = float(np.mean([ev.metrics["labels"][lab]["auroc"] for lab in order]))
        ci = None
        if n_bootstrap:
            groups = np.array([study_subject[s] for s in ev.units["study_id"].to_list()])
            samples = bootstrap_metrics(ev.y[:, cols], ev.p[:, cols], groups, {}, n_bootstrap, seed)
            ci = percentile_interval(macro_over(samples["auroc"], range(len(order))))
        out["fractions"][fraction_name(r.fraction)] = {"auroc": point, "auroc_ci": ci}
    return out
