"""cxr.core.jsonsafe: the one helper metrics.jsonl, metrics.json and compare.json are written with."""

import json
import math

import numpy as np

from cxr.core.jsonsafe import json_safe


def test_non_finite_and_numpy_values_become_strict_json():
    value = {
        "auroc": float("nan"),
        "ci": (np.float32("nan"), np.float64(0.75)),
        "n": np.int64(3),
        "labels": {"Edema": [float("inf"), -math.inf, 0.5], "ok": True, "name": "x"},
        "none": None,
    }
    out = json_safe(value)
    assert out == {
        "auroc": None,
        "ci": [None, 0.75],
        "n": 3,
        "labels": {"Edema": [None, None, 0.5], "ok": True, "name": "x"},
        "none": None,
    }
    assert type(out["n"]) is int and type(out["ci"][1]) is float
    json.dumps(out, allow_nan=False)  # raises on any NaN or numpy value left


def test_the_input_is_not_changed():
    value = {"a": [float("nan")]}
    json_safe(value)
    assert math.isnan(value["a"][0])
