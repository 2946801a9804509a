"""The evaluation protocol and the rows fingerprints."""

import hashlib

import numpy as np
import pytest

from cxr.core.errors import CxrError
from cxr.evaluation.protocol import Protocol, label_fingerprint, rows_fingerprint


def test_fingerprint_is_a_sha256_of_the_sorted_evaluated_triples():
    units = [50000003, 50000001, 50000002]
    y = np.array([[1.0, np.nan], [0.0, 1.0], [np.nan, 0.0]])
    text = "50000001\tA\t0\n50000001\tB\t1\n50000002\tB\t0\n50000003\tA\t1\n"
    assert rows_fingerprint(units, ["A", "B"], y) == hashlib.sha256(text.encode()).hexdigest()
    assert (
        label_fingerprint(units, y[:, 0])
        == hashlib.sha256(b"50000001\t0\n50000003\t1\n").hexdigest()
    )
    # Order of the rows does not matter; a target, a row or a label does.
    order = [2, 0, 1]
    assert rows_fingerprint([units[i] for i in order], ["A", "B"], y[order]) == rows_fingerprint(
        units, ["A", "B"], y
    )
    flipped = y.copy()
    flipped[1, 0] = 1.0
    assert rows_fingerprint(units, ["A", "B"], flipped) != rows_fingerprint(units, ["A", "B"], y)
    assert rows_fingerprint(units[:2], ["A", "B"], y[:2]) != rows_fingerprint(units, ["A", "B"], y)
    assert rows_fingerprint(units, ["A", "C"], y) != rows_fingerprint(units, ["A", "B"], y)


def test_protocol_checks_values_and_names_differences():
    with pytest.raises(CxrError, match="uncertain"):
        Protocol(uncertain="ones")
    with pytest.raises(CxrError, match="--split test"):
        Protocol(labels="radiologist", split="validate")
    a = Protocol(split="test", views=("PA",))
    b = Protocol(split="test", uncertain="negative", views=("PA",))
    assert a.differences(b) == ["uncertain: exclude vs negative"]
    assert Protocol.from_dict(a.to_dict()) == a
    assert "uncertain excluded" in a.describe() and "blank as negative" in a.describe()
