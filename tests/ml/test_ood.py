"""The "unlike any known class" score (ml.ood), retraining across a class change, and how OOD
cells are kept out of pseudo-labels and put first in the queue."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml.active import UNLIKE_ANY_CLASS, rank_for_queue
from ml.checkpoint import load_model
from ml.config import make_config
from ml.infer import predict
from ml.model import ModelConfig, build_model
from ml.ood import LayersRequired, OODScorer, _energy, _msp, auroc, fit_ood
from ml.pseudo import REJECTED, filter_pseudo_labels
from ml.train import _load_init, train


def _cells(n: int, kind: int, seed: int) -> torch.Tensor:
    """Generated 32 px cells: a disc on a plain background; ``kind`` 0-2 colours the disc by one
    channel, kind 3 (out of class) is a grey ring with stripes."""
    g = torch.Generator().manual_seed(seed * 10 + kind)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    r = ((yy - 16) ** 2 + (xx - 16) ** 2).float().sqrt()
    x = torch.full((n, 3, 32, 32), 200.0) + torch.randn(n, 3, 32, 32, generator=g) * 12
    if kind < 3:
        disc = (r < 9).float()
        x[:, kind] -= 150 * disc
    else:
        ring = ((r > 6) & (r < 13)).float() * ((xx // 3) % 2).float()
        x -= 120 * ring
    return x.clamp(0, 255).to(torch.uint8)


def _trained(**settings):
    """A tiny network trained on 12 generated cells of each of three kinds, with 20 a kind for validation."""
    torch.manual_seed(0)
    xl = torch.cat([_cells(12, k, 0) for k in range(3)])
    yl = torch.arange(3).repeat_interleave(12)
    val_x = torch.cat([_cells(20, k, 1) for k in range(3)])
    val_y = torch.arange(3).repeat_interleave(20)
    config = make_config("tiny", "supervised", epochs=4, steps_per_epoch=10, eval_every=4, **settings)
    return train(config, xl, yl, None, ["a", "b", "c"], val_x=val_x, val_y=val_y)


def test_ood_score_separates_generated_out_of_class_images() -> None:
    result = _trained()
    assert result.metrics["ood"]["calibrated_on"] == "validation"
    scorer = OODScorer.from_state(result.checkpoint["ood"])
    known, foreign = torch.cat([_cells(20, k, 2) for k in range(3)]), _cells(40, 3, 2)
    p_in, p_out = predict(result.checkpoint, known), predict(result.checkpoint, foreign)
    s_in = scorer.score(p_in.logits, p_in.features, images=known)
    s_out = scorer.score(p_out.logits, p_out.features, images=foreign)
    assert auroc(s_in, s_out) >= 0.9
    assert scorer.is_unlike(s_out).mean() >= 0.8
    assert scorer.is_unlike(s_in).mean() <= 0.25


def test_the_mid_level_score_travels_in_the_checkpoint_and_needs_the_layers() -> None:
    result = _trained(ood_method="knn-layers")  # the method named: training takes the layers it needs
    state = result.checkpoint["ood"]
    assert state["method"] == "knn-layers" and set(state["layers"]) == {"block8", "block9", "attention"}
    scorer = OODScorer.from_state(state)
    assert scorer.uses_layers and {"knn", "layer:block8", "layer:attention"} <= set(scorer.mix_stats)
    known, foreign = torch.cat([_cells(20, k, 2) for k in range(3)]), _cells(40, 3, 2)
    p_in, p_out = predict(result.checkpoint, known, layers=True), predict(result.checkpoint, foreign, layers=True)
    model = load_model(result.checkpoint)
    channels = {"block8": model.backbone[7][0].out_channels, "block9": model.backbone[8][0].out_channels}
    widths = {**{name: 2 * c for name, c in channels.items()}, "attention": 2 * model.attention.fc[-2].out_features}
    assert {name: x.shape for name, x in p_in.layers.items()} == {name: (60, w) for name, w in widths.items()}
    with pytest.raises(LayersRequired) as raised:
        scorer.score(p_in.logits, p_in.features)
    assert raised.value.status == 422 and "layers=True" in str(raised.value)
    s_in = scorer.score(p_in.logits, p_in.features, layers=p_in.layers)
    s_out = scorer.score(p_out.logits, p_out.features, layers=p_out.layers)
    assert auroc(s_in, s_out) >= 0.9
    assert predict(result.checkpoint, known).layers is None  # only when asked


def test_method_is_chosen_on_known_classes_and_threshold_keeps_the_target_share() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 4
    y_train, y_val = np.repeat(np.arange(4), 30), np.repeat(np.arange(4), 50)
    f_train = centres[y_train] + rng.normal(size=(120, 16))
    f_val = centres[y_val] + rng.normal(size=(200, 16))
    # logits that carry no class information: energy cannot win the leave-one-class-out choice
    logits = rng.normal(size=(200, 4))
    scorer = fit_ood(f_train, y_train, logits, f_val, y_val, 4, target_tpr=0.9)
    assert set(scorer.selection) == {"energy", "msp", "cosine", "mahalanobis", "knn", "mix", "mix-msp"}
    assert scorer.method != "energy"
    assert scorer.selection[scorer.method] == max(scorer.selection.values())
    kept = (scorer.score(logits, f_val) <= scorer.threshold).mean()
    assert abs(kept - 0.9) < 0.02
    restored = OODScorer.from_state(scorer.state())
    assert np.allclose(restored.score(logits, f_val), scorer.score(logits, f_val), atol=1e-3)


def test_msp_scores_how_unsure_the_network_is_between_the_classes_it_is_asked_about() -> None:
    sure, torn, flat, surest = [12.0, 0.0, 0.0], [6.0, 6.0, 0.0], [1.0, 1.0, 1.0], [60.0, 0.0, 0.0]
    logits = np.asarray([sure, torn, flat, surest])
    every = np.arange(3)
    msp = _msp(logits, every)
    assert msp[0] < msp[1] < msp[2]
    assert np.isclose(msp[2], np.log(3)) and np.isclose(msp[1], np.log(2 + np.exp(-6.0)))
    assert 0 < msp[3] < msp[0]  # a surer cell still scores lower where the probability rounds to one
    assert np.allclose(_msp(logits + 100.0, every), msp)  # a constant on every logit changes nothing
    assert not np.allclose(_energy(logits + 100.0, every), _energy(logits, every))  # unlike energy
    # leaving class 0 out (the leave-one-class-out choice): the cell sure of class 0 is torn between the rest
    assert np.isclose(_msp(logits, np.asarray([1, 2]))[0], np.log(2))
    # the named method scores through the scorer, and its mix adds msp to mahalanobis
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 20)
    features = rng.normal(size=(60, 4)) + 5 * np.eye(3, 4)[y]
    val_logits = np.eye(3)[y] * 8 + rng.normal(size=(60, 3))
    scorer = fit_ood(features, y, val_logits, features, y, 3, method="msp")
    assert np.allclose(scorer.score(logits, np.zeros((4, 4))), msp)
    mixed = fit_ood(features, y, val_logits, features, y, 3, method="mix-msp")
    assert set(mixed.mix_stats) == {"msp", "mahalanobis"}
    restored = OODScorer.from_state(mixed.state())
    assert np.allclose(restored.score(val_logits, features), mixed.score(val_logits, features))


def test_retraining_after_a_class_change_builds_a_new_head_and_warm_starts_the_rest() -> None:
    torch.manual_seed(0)
    old = build_model(ModelConfig(n_classes=3, width=0.125, image_size=32))
    new = build_model(ModelConfig(n_classes=4, width=0.125, image_size=32))
    fresh_head = new.head.weight.detach().clone()
    _load_init(new, old.state_dict(), ["a", "b", "c"], ["c", "a", "d", "e"])
    for key, value in old.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(new.state_dict()[key], value), key
    assert torch.equal(new.head.weight[0], old.head.weight[2])  # c kept its row
    assert torch.equal(new.head.weight[1], old.head.weight[0])  # a kept its row
    assert torch.equal(new.head.weight[2], fresh_head[2])  # d is new
    # same number of classes, different ones: the old head must not be loaded as it was
    same_size = build_model(ModelConfig(n_classes=3, width=0.125, image_size=32))
    _load_init(same_size, old.state_dict(), ["a", "b", "c"], ["a", "x", "c"])
    assert torch.equal(same_size.head.weight[2], old.head.weight[2])
    assert not torch.equal(same_size.head.weight[1], old.head.weight[1])

    xl = torch.cat([_cells(6, k, 0) for k in range(3)])
    yl = torch.arange(3).repeat_interleave(6)
    config = make_config("tiny", "supervised", epochs=1, steps_per_epoch=2)
    first = train(config, xl[:12], yl[:12], None, ["a", "b"])
    second = train(config, xl, yl, None, ["a", "b", "c"], init_checkpoint=first.checkpoint)
    assert second.checkpoint["class_names"] == ["a", "b", "c"]
    assert second.checkpoint["teacher"]["head.weight"].shape[0] == 3


def test_unlike_cells_are_never_pseudo_labelled_and_come_first_in_the_queue() -> None:
    probs = np.tile([[0.999, 0.0005, 0.0005]], (6, 1))  # all confident: all pass the entropy filter
    unlike = np.array([False, True, False, False, True, False])
    out = filter_pseudo_labels(probs, entropy_threshold=0.05, use_propagation=False, unlike=unlike)
    assert list(out.outcome[unlike]) == [REJECTED, REJECTED]
    assert not set(out.accepted) & {1, 4}
    assert out.funnel["ood"] == 2

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=20)
    features = rng.normal(size=(20, 8))
    scores = np.zeros(20)
    scores[[3, 7]] = [5.0, 9.0]
    config = make_config("tiny", "pseudo-single")
    selection, pseudo = rank_for_queue(
        probs, features, None, np.zeros(0, dtype=np.int64), config, 6, ood_scores=scores, ood_threshold=1.0
    )
    assert list(selection.indices[:2]) == [7, 3]  # the most foreign first
    assert selection.reasons[:2] == [UNLIKE_ANY_CLASS, UNLIKE_ANY_CLASS]
    assert UNLIKE_ANY_CLASS not in selection.reasons[2:]
    assert len(selection) == 6 and np.all(np.diff(selection.priorities) < 0)
    assert pseudo.outcome[3] == REJECTED and pseudo.outcome[7] == REJECTED


def test_unlike_cells_take_at_most_their_share_of_a_batch() -> None:
    """An early model flags thousands of cells; they must not fill the whole batch."""
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), size=40)
    features = rng.normal(size=(40, 8))
    scores = np.where(np.arange(40) < 30, 2.0 + np.arange(40) / 10, 0.0)  # 30 of 40 flagged
    config = make_config("tiny", "pseudo-single", queue_ood_share=0.2)
    selection, _ = rank_for_queue(
        probs, features, None, np.zeros(0, dtype=np.int64), config, 10, ood_scores=scores, ood_threshold=1.0
    )
    assert selection.reasons.count(UNLIKE_ANY_CLASS) == 2
    assert list(selection.indices[:2]) == [29, 28]  # the two most foreign
    assert len(selection) == 10 and set(selection.indices[2:].tolist()) <= set(range(30, 40))

    none = make_config("tiny", "pseudo-single", queue_ood_share=0.0)
    selection, _ = rank_for_queue(
        probs, features, None, np.zeros(0, dtype=np.int64), none, 10, ood_scores=scores, ood_threshold=1.0
    )
    assert UNLIKE_ANY_CLASS not in selection.reasons and len(selection) == 10

    # nearly every cell flagged: the batch still fills, the most foreign first
    almost_all = np.where(np.arange(40) < 37, 2.0 + np.arange(40) / 10, 0.0)  # 3 left unflagged
    selection, _ = rank_for_queue(
        probs, features, None, np.zeros(0, dtype=np.int64), config, 10, ood_scores=almost_all, ood_threshold=1.0
    )
    assert len(selection) == 10 and selection.reasons.count(UNLIKE_ANY_CLASS) == 7
    assert list(selection.indices[:7]) == list(range(36, 29, -1))
    assert set(selection.indices[7:].tolist()) == {37, 38, 39}


def test_pseudo_label_filter_set_on_held_out_known_cells_flags_fewer_of_the_pools_known_cells() -> None:
    """The labelled cells were trained on and sit closer to their classes than any new cell: a threshold
    set on them flags a share of the pool's known cells too. Set on held-out known cells, it keeps the
    pool's known cells as it keeps those, and still flags the foreign kind."""
    from ml.train import pseudo_label

    result = _trained()
    model = load_model(result.checkpoint)
    xl = torch.cat([_cells(12, k, 0) for k in range(3)])
    yl = torch.arange(3).repeat_interleave(12)
    val = (torch.cat([_cells(20, k, 1) for k in range(3)]), torch.arange(3).repeat_interleave(20))
    known, foreign = torch.cat([_cells(40, k, 2) for k in range(3)]), _cells(40, 3, 2)
    pool = torch.cat([known, foreign])
    flagged = {}
    for where in ("labelled", "validation"):
        config = make_config("tiny", "supervised", pseudo_ood_calibration=where)
        unlike = pseudo_label(model, config, xl, yl, pool, validation=val).unlike
        flagged[where] = unlike[: len(known)].mean(), unlike[len(known) :].mean()
    assert flagged["labelled"][0] > 0.2  # a share of the known cells flagged (46 % when written)
    assert flagged["validation"][0] <= 0.05  # known cells kept as the held-out ones are (99 %)
    assert flagged["validation"][1] >= 0.9 and flagged["labelled"][1] >= 0.9  # the foreign kind flagged both ways
    config = make_config("tiny", "supervised", pseudo_ood_calibration="validation")
    no_validation = pseudo_label(model, config, xl, yl, pool)  # nothing held out: the labelled cells, as before
    config = make_config("tiny", "supervised", pseudo_ood_calibration="labelled")
    assert np.array_equal(no_validation.unlike, pseudo_label(model, config, xl, yl, pool).unlike)
