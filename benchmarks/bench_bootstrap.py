"""Benchmark the patient bootstrap and DeLong's test at the size of MIMIC-CXR's test split.

Synthetic, clustered data shaped like the official test split: 3,269 studies from 293 patients
(1-40 studies each, about 11 on average), 14 labels, two models. Each patient has a random effect
shared by its studies (for the labels and for the scores), so findings persist within a patient.

1. `bootstrap_metrics` with 1,000 patient resamples and 3 operating points (goal < 10 s on the
   2-core box; aim ~3 s).
2. `paired_delta` (AUROC of model a minus model b) with the same 1,000 resamples.
3. `delong_test` on all 14 labels.
4. With `--coverage N`: the coverage of 95% percentile intervals of AUROC over N simulated test
   sets, resampling patients and resampling studies: the design of tests/test_bootstrap.py's
   coverage test (120 patients, 1-12 studies each) with more sets and resamples, and the same
   model with MIMIC-shaped sets (293 patients, 1-40 studies, about 11 on average); and on the
   MIMIC-shaped sets, how often DeLong's test and the paired patient bootstrap call two models of
   equal AUROC different at the 5% level (should be 5%).

    PYTHONPATH=src python benchmarks/bench_bootstrap.py [--repeats 3] [--coverage 500]

Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

N_STUDIES, N_PATIENTS, N_LABELS = 3269, 293, 14


def cluster_sizes(rng: np.random.Generator, n_patients: int, n_rows: int, hi: int) -> np.ndarray:
    """Rows per patient, each in 1..hi, skewed (many patients with few studies), summing to n_rows."""
    mean = n_rows / n_patients
    sizes = np.clip(np.rint(1 + rng.gamma(1.3, (mean - 1) / 1.3, n_patients)), 1, hi).astype(int)
    while sizes.sum() != n_rows:  # nudge single patients until the total is exact
        i = rng.integers(n_patients)
        step = 1 if sizes.sum() < n_rows else -1
        if 1 <= sizes[i] + step <= hi:
            sizes[i] += step
    return sizes


def synthetic_split(seed: int = 0):
    """(y (n, L) with NaN exclusions, p_a, p_b (n, L), patient keys (n,)) for the benchmark."""
    rng = np.random.default_rng(seed)
    sizes = cluster_sizes(rng, N_PATIENTS, N_STUDIES, 40)
    groups = np.repeat(rng.permutation(10_000_000)[:N_PATIENTS] + 10_000_000, sizes)
    prevalence = rng.uniform(0.02, 0.45, N_LABELS)
    patient = rng.normal(0, 1, (N_PATIENTS, N_LABELS))[np.searchsorted(np.unique(groups), groups)]
    liability = 1.2 * patient + rng.normal(0, 1, (N_STUDIES, N_LABELS))
    cut = [np.quantile(liability[:, j], 1 - prevalence[j]) for j in range(N_LABELS)]
    y = (liability > np.array(cut)).astype(float)
    noise = rng.normal(0, 1, (N_STUDIES, N_LABELS))
    p_a = 1 / (1 + np.exp(-(1.6 * y + 0.5 * patient + noise - 1.5)))
    p_b = 1 / (
        1 + np.exp(-(1.3 * y + 0.5 * patient + noise + 0.5 * rng.normal(0, 1, y.shape) - 1.5))
    )
    p_a, p_b = np.round(p_a, 3), np.round(p_b, 3)  # some ties, as float16/rounded outputs have
    y[rng.random(y.shape) < 0.08] = np.nan  # uncertain findings, excluded
    return y, p_a, p_b, groups


def operating_points(y: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """Three (L,) threshold sets: the median score of positives and two negative-score quantiles."""
    out = {"youden": [], "spec90": [], "spec95": []}
    for j in range(y.shape[1]):
        keep = ~np.isnan(y[:, j])
        pos, neg = p[keep, j][y[keep, j] == 1], p[keep, j][y[keep, j] == 0]
        out["youden"].append(np.median(pos))
        out["spec90"].append(np.quantile(neg, 0.90))
        out["spec95"].append(np.quantile(neg, 0.95))
    return {k: np.array(v) for k, v in out.items()}


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def bench(repeats: int, n_bootstrap: int) -> None:
    from cxr.stats.bootstrap import bootstrap_metrics, paired_delta, percentile_interval
    from cxr.stats.delong import delong_test

    y, p_a, p_b, groups = synthetic_split()
    sizes = np.unique(groups, return_counts=True)[1]
    print(
        f"{y.shape[0]} studies from {sizes.size} patients ({sizes.min()}-{sizes.max()} studies, "
        f"mean {sizes.mean():.1f}) x {y.shape[1]} labels, {n_bootstrap} patient resamples, "
        f"median of {repeats}"
    )
    ops = operating_points(y, p_a)
    dt, boot = timed(lambda: bootstrap_metrics(y, p_a, groups, ops, n_bootstrap, 0), repeats)
    print(f"bootstrap_metrics (AUROC, AUPRC, 3 operating points x 4 figures): {dt:.2f} s")
    dt, delta = timed(lambda: paired_delta(y, p_a, p_b, groups, n_bootstrap, 0), repeats)
    print(f"paired_delta (AUROC a - b): {dt:.2f} s")

    def all_delong():
        return [delong_test(y[:, j], p_a[:, j], p_b[:, j]) for j in range(y.shape[1])]

    dt, tests = timed(all_delong, repeats)
    print(f"delong_test, {y.shape[1]} labels: {1e3 * dt:.1f} ms")
    # DeLong treats studies as independent; the paired patient bootstrap does not.
    ratio = []
    for j, t in enumerate(tests):
        ci = percentile_interval(delta[:, j])
        if t is not None and ci is not None and np.isfinite(t["se"]):
            ratio.append(2 * 1.96 * t["se"] / (ci[1] - ci[0]))
    lo, hi = percentile_interval(boot["auroc"][:, 0])
    print(
        f"label 0: AUROC 95% interval [{lo:.3f}, {hi:.3f}]; the width of DeLong's 95% interval of "
        f"the difference over the paired patient bootstrap's: median {np.median(ratio):.2f} "
        f"(range {min(ratio):.2f}-{max(ratio):.2f}) over {len(ratio)} labels"
    )


def _simulate(rng: np.random.Generator, n_patients: int, design: str, second: bool = False):
    """One clustered test set (targets, scores, patient keys), as in tests/test_bootstrap.py.

    Each patient has two random effects shared by all its studies: u, its disposition to the
    finding (positive when 1.5 u + e > 1), and v, an offset of the model's score
    (score = 1.5 y + v + 0.8 e'). design "test": 1-12 studies per patient (uniform), the unit
    test's sets; "mimic": 1-40 studies, skewed, about 11 on average, as in MIMIC-CXR's test split.
    With `second`, also the scores of a second model with the same AUROC: its patient offset is
    0.5 v + 0.87 w (w another patient effect; same variance) and its study noise is its own.
    """
    if design == "test":
        sizes = rng.integers(1, 13, n_patients)
    else:
        sizes = np.clip(np.rint(1 + rng.gamma(1.3, 10.2 / 1.3, n_patients)), 1, 40).astype(int)
    u = np.repeat(rng.normal(0, 1, n_patients), sizes)
    v = np.repeat(rng.normal(0, 1, n_patients), sizes)
    y = (1.5 * u + rng.normal(0, 1, u.size) > 1.0).astype(float)
    p = 1.5 * y + 1.0 * v + 0.8 * rng.normal(0, 1, u.size)
    patients = np.repeat(np.arange(n_patients), sizes)
    if not second:
        return y, p, patients
    w = np.repeat(rng.normal(0, 1, n_patients), sizes)
    p_b = 1.5 * y + 0.5 * v + 0.75**0.5 * w + 0.8 * rng.normal(0, 1, u.size)
    return y, p, p_b, patients


def coverage(n_sets: int, n_bootstrap: int, design: str, n_patients: int) -> None:
    """Coverage of 95% percentile intervals of AUROC, resampling patients vs studies."""
    from sklearn.metrics import roc_auc_score

    from cxr.stats.bootstrap import percentile_interval, resample_counts, weighted_auroc

    rng = np.random.default_rng(2024)
    y, p, _ = _simulate(rng, 100_000, design)
    truth = roc_auc_score(y, p)
    hits = {"patients": 0, "studies": 0}
    widths: dict[str, list[float]] = {"patients": [], "studies": []}
    rows = []
    t = time.perf_counter()
    for _ in range(n_sets):
        y, p, patients = _simulate(rng, n_patients, design)
        rows.append(y.size)
        for unit, groups in (("patients", patients), ("studies", np.arange(y.size))):
            counts = resample_counts(groups, n_bootstrap, seed=int(rng.integers(2**31)))
            ci = percentile_interval(weighted_auroc(y, p, counts))
            hits[unit] += ci is not None and ci[0] <= truth <= ci[1]
            if ci is not None:
                widths[unit].append(ci[1] - ci[0])
    dt = time.perf_counter() - t
    print(
        f"coverage, design {design!r}: {n_sets} simulated sets of {n_patients} patients "
        f"(mean {np.mean(rows):.0f} studies), true AUROC {truth:.4f}, {n_bootstrap} resamples, "
        f"{dt:.0f} s"
    )
    for unit in hits:
        rate = hits[unit] / n_sets
        half = 1.96 * (rate * (1 - rate) / n_sets) ** 0.5
        print(
            f"  95% intervals resampling {unit}: coverage {rate:.3f} (+/- {half:.3f}), "
            f"median width {np.median(widths[unit]):.3f}"
        )


def null_comparison(n_sets: int, n_bootstrap: int, design: str, n_patients: int) -> None:
    """How often two models of equal AUROC are called different at the 5% level."""
    from cxr.stats.bootstrap import paired_delta, percentile_interval
    from cxr.stats.delong import delong_test

    rng = np.random.default_rng(7)
    rejected = {"DeLong (studies independent)": 0, "paired patient bootstrap": 0}
    t = time.perf_counter()
    for _ in range(n_sets):
        y, p_a, p_b, patients = _simulate(rng, n_patients, design, second=True)
        rejected["DeLong (studies independent)"] += delong_test(y, p_a, p_b)["p_value"] < 0.05
        delta = paired_delta(
            y[:, None], p_a[:, None], p_b[:, None], patients, n_bootstrap, int(rng.integers(2**31))
        )
        lo, hi = percentile_interval(delta[:, 0])
        rejected["paired patient bootstrap"] += not lo <= 0.0 <= hi
    print(
        f"equal-AUROC models, design {design!r}: {n_sets} sets of {n_patients} patients, "
        f"{n_bootstrap} resamples, {time.perf_counter() - t:.0f} s; called different at 5%:"
    )
    for name, count in rejected.items():
        rate = count / n_sets
        half = 1.96 * (rate * (1 - rate) / n_sets) ** 0.5
        print(f"  {name}: {rate:.3f} (+/- {half:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--coverage", type=int, default=0, help="simulated sets (0: skip)")
    parser.add_argument("--coverage-bootstrap", type=int, default=1000)
    args = parser.parse_args()
    bench(args.repeats, args.n_bootstrap)
    if args.coverage:
        coverage(args.coverage, args.coverage_bootstrap, "test", 120)
        coverage(args.coverage, args.coverage_bootstrap, "mimic", N_PATIENTS)
        null_comparison(args.coverage, args.coverage_bootstrap, "mimic", N_PATIENTS)


if __name__ == "__main__":
    main()
