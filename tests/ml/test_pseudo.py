import numpy as np
import pytest

from ml.pseudo import entropy, entropy_mask, filter_pseudo_labels, pool_prior_shift, propagate


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


def _shifted_pool(prior, n=6000, seed=0):
    """Cells of three overlapping 1-D Gaussian classes drawn with ``prior``, and the posteriors of
    a classifier that was trained class-balanced (exact under a uniform prior)."""
    rng = np.random.default_rng(seed)
    means = np.array([0.0, 1.5, 3.0])
    y = rng.choice(3, size=n, p=prior)
    x = rng.normal(means[y], 1.0)
    likelihood = np.exp(-0.5 * (x[:, None] - means[None, :]) ** 2)
    return likelihood / likelihood.sum(1, keepdims=True), y


def test_pool_prior_shift_recovers_the_pools_prior_and_mends_the_rare_class():
    prior = np.array([0.1, 0.85, 0.05])
    probs, y = _shifted_pool(prior)
    adjusted, estimate = pool_prior_shift(probs)
    assert np.abs(estimate - prior).max() < 0.04
    assert np.allclose(adjusted.sum(1), 1.0)
    # the uniform-prior classifier over-calls the rare classes; re-weighted, fewer wrong calls
    assert (adjusted.argmax(1) == y).mean() > (probs.argmax(1) == y).mean() + 0.05
    called_rare = adjusted.argmax(1) == 2
    assert (y[called_rare] == 2).mean() > (y[probs.argmax(1) == 2] == 2).mean()
    # on a pool drawn with the training prior nothing moves
    balanced, _ = _shifted_pool(np.full(3, 1 / 3), seed=1)
    _, flat = pool_prior_shift(balanced)
    assert np.abs(flat - 1 / 3).max() < 0.03


def test_prior_shift_keeps_the_guard_from_forcing_a_rare_class():
    probs, y = _shifted_pool(np.array([0.1, 0.85, 0.05]), seed=2)
    kwargs = dict(entropy_threshold=0.05, use_propagation=False, min_class_fraction=0.5)

    def rare_precision(out):
        accepted = out.accepted[out.label[out.accepted] == 2]
        return (y[accepted] == 2).mean()

    plain = filter_pseudo_labels(probs, **kwargs)
    shifted = filter_pseudo_labels(probs, prior_shift=True, **kwargs)
    assert rare_precision(shifted) > rare_precision(plain)
    assert (y[shifted.accepted] == shifted.label[shifted.accepted]).mean() > (
        y[plain.accepted] == plain.label[plain.accepted]
    ).mean()
    assert len(shifted.funnel["pool_prior"]) == 3
    assert "pool_prior" not in plain.funnel
    # cells marked unlike any class stay out of the estimate and of the pseudo-labels
    unlike = np.zeros(len(y), dtype=bool)
    unlike[:100] = True
    flagged = filter_pseudo_labels(probs, prior_shift=True, unlike=unlike, **kwargs)
    assert (flagged.outcome[:100] == "rejected").all()
