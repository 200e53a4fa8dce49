"""Scoring never names a retired class: its probability is zeroed and the rest renormalised."""

from __future__ import annotations

import numpy as np

from worker.scoring import without_classes


def test_retired_columns_are_zeroed_and_rows_renormalised() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]])
    masked = without_classes(probs, [0])
    assert np.all(masked[:, 0] == 0.0)
    assert np.allclose(masked.sum(axis=1), 1.0)
    assert list(masked.argmax(axis=1)) == [1, 2, 1]  # the first row's top class was retired
    assert np.allclose(masked[0, 1:], [2 / 3, 1 / 3])
    assert without_classes(probs, []) is probs
