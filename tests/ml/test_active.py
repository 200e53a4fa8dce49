"""Selection for labelling: uncertainty first, no near-duplicates, balanced across classes."""

from __future__ import annotations

import numpy as np
import pytest

from ml.active import (
    DIVERSE,
    HIGH_ENTROPY,
    LOW_MARGIN,
    REJECTED_BY_FILTERS,
    STRATEGIES,
    balanced_quotas,
    k_center_greedy,
    margin,
    normalised_entropy,
    rank_for_queue,
    select_for_labelling,
)
from ml.config import make_config
from ml.pseudo import PASSED_ENTROPY, REJECTED


def test_margin_and_entropy() -> None:
    probs = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    assert np.allclose(margin(probs), [1.0, 0.0, 0.0])
    assert np.allclose(normalised_entropy(probs), [0.0, np.log(2) / np.log(3), 1.0], atol=1e-6)


def test_k_center_greedy_spreads_and_never_repeats() -> None:
    rng = np.random.default_rng(0)
    # three tight clusters of 20 near-duplicates each
    centres = np.eye(3) * 10
    x = np.concatenate([c + rng.normal(0, 0.01, (20, 3)) for c in centres])
    picked = k_center_greedy(x, 3)
    assert len(set(picked.tolist())) == 3
    assert sorted(i // 20 for i in picked) == [0, 1, 2]  # one per cluster
    everything = k_center_greedy(x, 100)
    assert sorted(everything.tolist()) == list(range(60))
    # starting from labelled cells in clusters 0 and 1, the first pick is in cluster 2
    assert k_center_greedy(x, 1, centres=x[[0, 20]])[0] // 20 == 2


def test_balanced_quotas() -> None:
    assert balanced_quotas({0: 10, 1: 10, 2: 10}, 9) == {0: 3, 1: 3, 2: 3}
    assert balanced_quotas({0: 1, 1: 10, 2: 10}, 9) == {0: 1, 1: 4, 2: 4}
    assert sum(balanced_quotas({0: 2, 1: 3}, 50).values()) == 5


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_returns_distinct_rows_in_priority_order(strategy: str) -> None:
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), 200)
    features = rng.normal(size=(200, 8))
    selection = select_for_labelling(probs, features, 30, strategy=strategy, seed=3)
    assert len(selection) == 30 and len(set(selection.indices.tolist())) == 30
    assert np.all(np.diff(selection.priorities) < 0)
    assert len(selection.reasons) == 30


def test_diverse_puts_uncertain_and_rejected_first_and_balances_classes() -> None:
    rng = np.random.default_rng(2)
    n = 300
    confident = np.full((n, 3), 0.01)
    confident[np.arange(n), np.arange(n) % 3] = 0.98
    probs = confident.copy()
    uncertain = np.arange(0, n, 10)  # 30 uncertain cells, predicted classes mixed
    probs[uncertain] = rng.dirichlet(np.ones(3) * 20, len(uncertain))
    outcomes = np.array(["passed_propagation"] * n, dtype=object)
    outcomes[uncertain] = "rejected"
    features = rng.normal(size=(n, 16))
    selection = select_for_labelling(probs, features, 12, outcomes=outcomes, labelled_features=features[:5])
    assert set(selection.indices.tolist()) <= set(uncertain.tolist())
    predicted = probs[selection.indices].argmax(axis=1)
    counts = np.bincount(predicted, minlength=3)
    assert counts.max() - counts.min() <= 2  # spread over the predicted classes
    assert set(selection.reasons) <= {HIGH_ENTROPY, LOW_MARGIN, REJECTED_BY_FILTERS, DIVERSE}
    assert selection.reasons[0] in (HIGH_ENTROPY, LOW_MARGIN)


def test_diverse_avoids_near_duplicates() -> None:
    rng = np.random.default_rng(4)
    base = rng.normal(size=(10, 8))
    features = np.repeat(base, 10, axis=0) + rng.normal(0, 1e-3, (100, 8))  # 10 groups of duplicates
    probs = np.tile([0.4, 0.35, 0.25], (100, 1)) + rng.normal(0, 1e-3, (100, 3))
    probs = np.abs(probs) / np.abs(probs).sum(axis=1, keepdims=True)
    selection = select_for_labelling(probs, features, 10, strategy="diverse", pool_factor=10)
    groups = {int(i) // 10 for i in selection.indices}
    assert len(groups) == 10
    uncertainty = select_for_labelling(probs, features, 10, strategy="uncertainty")
    assert len({int(i) // 10 for i in uncertainty.indices}) < 10  # what diversity buys


def test_empty_and_small_pools() -> None:
    probs = np.array([[0.6, 0.4]])
    assert len(select_for_labelling(probs, np.ones((1, 2)), 5)) == 1
    assert len(select_for_labelling(probs[:0], np.ones((0, 2)), 5)) == 0
    with pytest.raises(ValueError):
        select_for_labelling(probs, None, 1, strategy="nope")


def test_rank_for_queue_filters_with_the_training_config() -> None:
    rng = np.random.default_rng(0)
    confident = np.tile([0.999, 0.0005, 0.0005], (6, 1))  # entropy about 0.009 nats
    unsure = rng.dirichlet([1.0, 1.0, 1.0], size=6)
    probs = np.concatenate([confident, unsure])
    features = rng.normal(size=(12, 4))
    strict = make_config("tiny", entropy_threshold=0.001)
    loose = make_config("tiny", entropy_threshold=0.05)
    _, pseudo = rank_for_queue(probs, features, None, np.zeros(0, dtype=np.int64), strict, 4)
    assert set(pseudo.outcome.tolist()) == {REJECTED}
    selection, pseudo = rank_for_queue(probs, features, None, np.zeros(0, dtype=np.int64), loose, 4)
    assert pseudo.outcome[:6].tolist() == [PASSED_ENTROPY] * 6
    assert set(pseudo.outcome[6:].tolist()) == {REJECTED}
    assert len(selection) == 4 and set(selection.indices.tolist()) <= set(range(6, 12))  # the unsure first
