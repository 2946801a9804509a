"""Values made ready for strict JSON: metrics.jsonl, metrics.json and compare.json.

JSON has no NaN or infinity (Python's json writes them as invalid `NaN` tokens), so a figure that
could not be computed (an AUROC without positives) is written as null; numpy scalars become the
Python numbers json knows, tuples become lists.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float as None and numpy scalars as Python ones, recursively
    through dicts, lists and tuples. Other values are returned as they are."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
