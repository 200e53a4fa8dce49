import numpy as np
import pytest

from ml.pseudo import entropy, entropy_mask, filter_pseudo_labels, propagate


def test_entropy_values():
    probs = np.array([[1.0, 0.0, 0.0, 0.0, 0.0], [0.2] * 5, [0.5, 0.5, 0, 0, 0]])
    h = entropy(probs)
    assert h[0] == pytest.approx(0.0, abs=1e-9)
    assert h[1] == pytest.approx(np.log(5))
    assert h[2] == pytest.approx(np.log(2))


def test_entropy_mask_threshold():
    confident = np.array([0.999, 0.00025, 0.00025, 0.00025, 0.00025])  # entropy ~0.009
    unsure = np.array([0.99, 0.0025, 0.0025, 0.0025, 0.0025])  # entropy ~0.07
    probs = np.stack([confident, unsure])
    assert entropy(probs)[0] < 0.01 < entropy(probs)[1]
    assert entropy_mask(probs, 0.01).tolist() == [True, False]
    assert entropy_mask(probs, 0.1).tolist() == [True, True]
    assert entropy_mask(probs, 0.001).tolist() == [False, False]


def _clusters(rng, n_per=60, n_classes=5):
    centres = np.eye(n_classes, 16) * 10
    feats = np.concatenate([c + rng.normal(0, 1.0, (n_per, 16)) for c in centres])
    y = np.repeat(np.arange(n_classes), n_per)
    return feats, y


def test_label_spreading_on_toy_clusters():
    rng = np.random.default_rng(0)
    feats, y = _clusters(rng)
    lab_idx = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(5)])
    unl_idx = np.setdiff1d(np.arange(len(y)), lab_idx)
    dist = propagate(feats[lab_idx], y[lab_idx], feats[unl_idx], n_neighbors=8)
    assert dist.shape == (len(unl_idx), 5)
    assert (dist.argmax(1) == y[unl_idx]).mean() > 0.97
    assert np.allclose(dist.sum(1), 1.0)


def test_filter_pseudo_labels_funnel_and_outcomes():
    rng = np.random.default_rng(1)
    feats, y = _clusters(rng)
    lab_idx = np.concatenate([np.flatnonzero(y == c)[:3] for c in range(5)])
    unl_idx = np.setdiff1d(np.arange(len(y)), lab_idx)
    true = y[unl_idx]
    n = len(unl_idx)
    probs = np.full((n, 5), 1e-5)
    pred = true.copy()
    wrong = np.arange(0, n, 10)  # confident but wrong: propagation must catch them
    pred[wrong] = (true[wrong] + 1) % 5
    probs[np.arange(n), pred] = 1.0
    unsure = np.arange(5, n, 10)  # high entropy: fails set 1
    probs[unsure] = 0.2
    probs /= probs.sum(1, keepdims=True)
    out = filter_pseudo_labels(
        probs, feats[unl_idx], feats[lab_idx], y[lab_idx], entropy_threshold=0.01, use_propagation=True
    )
    assert out.funnel["unlabelled"] == n
    assert out.funnel["set1"] == n - len(unsure)
    assert set(out.outcome[unsure]) == {"rejected"}
    assert set(out.outcome[wrong]) == {"passed_entropy"}  # passed entropy, rejected by propagation
    good = np.setdiff1d(np.arange(n), np.concatenate([wrong, unsure]))
    assert (out.outcome[good] == "passed_propagation").mean() > 0.95
    assert out.funnel["set2"] == int((out.outcome == "passed_propagation").sum())
    accepted = out.accepted
    assert (out.label[accepted] == true[accepted]).all()
    assert (out.confidence[accepted] >= 0.8).all()


def test_filter_without_propagation_uses_set1():
    probs = np.array([[0.9999, 0.0001], [0.6, 0.4]])
    out = filter_pseudo_labels(probs, entropy_threshold=0.01, use_propagation=False)
    assert out.funnel == {"unlabelled": 2, "set1": 1, "set2": None}
    assert out.accepted.tolist() == [0]
    assert out.outcome.tolist() == ["passed_entropy", "rejected"]


def test_min_class_fraction_admits_the_least_uncertain_of_a_shy_class():
    sure = [0.9999, 0.0001 / 2, 0.0001 / 2]
    probs = np.array([sure] * 6 + [[0.2, 0.7, 0.1], [0.1, 0.6, 0.3], [0.3, 0.4, 0.3], [0.05, 0.9, 0.05]])
    plain = filter_pseudo_labels(probs, entropy_threshold=0.01, use_propagation=False)
    assert plain.funnel["set1"] == 6
    guarded = filter_pseudo_labels(probs, entropy_threshold=0.01, use_propagation=False, min_class_fraction=0.5)
    # class 1 has 4 predicted cells, none under the threshold: its 2 least uncertain enter set 1
    assert guarded.funnel["set1"] == 8
    assert sorted(np.flatnonzero(guarded.outcome == "passed_entropy")[6:].tolist()) == [6, 9]
