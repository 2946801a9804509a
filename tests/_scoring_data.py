"""Synthetic scores shared by the metrics and scoring tests: three labels of different
prevalence, probabilities rounded to two decimals (so ties occur), a tenth of targets missing."""

from __future__ import annotations

import numpy as np


def noisy_scores(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < [0.3, 0.1, 0.5]).astype(float)
    p = np.clip(0.35 * y + 0.65 * rng.random((n, 3)), 0, 1).round(2)  # rounding makes ties
    y[rng.random((n, 3)) < 0.1] = np.nan
    return y, p
