"""``ml.transfer.fit_to_lab``: a reference's BatchNorm statistics and head fitted to a new lab."""

from __future__ import annotations

import copy

import pytest
import torch

from ml.adapt import batchnorm_layers
from ml.checkpoint import load_model, make_checkpoint
from ml.config import make_config
from ml.infer import predict
from ml.model import ModelConfig, build_model
from ml.transfer import fit_to_lab

NAMES = ["basophil", "eosinophil", "lymphocyte"]


def reference() -> dict:
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_classes=len(NAMES), width=0.125, image_size=32))
    return make_checkpoint(
        student=model,
        teacher=model,
        model_config=model.config,
        train_config=make_config("tiny", "supervised"),
        class_names=NAMES,
    )


def lab_cells(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cells of a 'stain' the reference never saw: a dark, bluish cast, one brightness per class."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2  # basophils and eosinophils only
    base = torch.tensor([40.0, 60.0, 150.0]).view(1, 3, 1, 1) + 50.0 * y.view(-1, 1, 1, 1)
    x = base + 20.0 * torch.randn(n, 3, 32, 32, generator=generator)
    return x.clamp(0, 255).to(torch.uint8), y


def test_fitted_head_separates_the_labs_labelled_cells_and_keeps_unlabelled_classes() -> None:
    checkpoint = reference()
    labelled_x, labelled_y = lab_cells(12, seed=1)
    unlabelled_x, _ = lab_cells(20, seed=2)
    names = [*NAMES, "plasma cell"]  # a class the reference does not know, with no label yet
    fitted = fit_to_lab(checkpoint, labelled_x, labelled_y, unlabelled_x, names)

    assert fitted["class_names"] == names and fitted["model_config"]["n_classes"] == 4
    assert fitted["fitted_to_lab"] == {"cells": 32, "labelled": 12, "probe_steps": 300, "adapted_im": False}
    assert checkpoint["class_names"] == NAMES  # the reference itself is untouched
    for key, value in fitted["teacher"].items():
        assert torch.equal(value, fitted["student"][key]), key

    model = load_model(fitted)
    before = load_model(checkpoint)
    # BatchNorm statistics now describe the lab's cells, not the reference's
    adapted, original = batchnorm_layers(model)[0], batchnorm_layers(before)[0]
    assert not torch.allclose(adapted.running_mean, original.running_mean)
    # the body is the reference's: the first convolution's weights did not move
    assert torch.equal(model.backbone[0][0].weight, before.backbone[0][0].weight)

    reference_accuracy = (predict(before, labelled_x, tta=False).labels == labelled_y.numpy()).mean()
    fitted_accuracy = (predict(model, labelled_x, tta=False).labels == labelled_y.numpy()).mean()
    assert fitted_accuracy == 1.0 > reference_accuracy

    # lymphocyte has no label here: the pull holds its row nearer the reference's than a free fit does
    free = fit_to_lab(checkpoint, labelled_x, labelled_y, unlabelled_x, names, pull=0.0)
    old_row = checkpoint["teacher"]["head.weight"][2]
    moved = torch.linalg.vector_norm(fitted["teacher"]["head.weight"][2] - old_row)
    assert moved < torch.linalg.vector_norm(free["teacher"]["head.weight"][2] - old_row)
    assert fitted["teacher"]["head.weight"].shape == (4, model.head.in_features)


def test_adapt_im_trains_the_batchnorm_scales_on_the_labs_cells_before_the_head() -> None:
    checkpoint = reference()
    labelled_x, labelled_y = lab_cells(12, seed=1)
    unlabelled_x, _ = lab_cells(20, seed=2)
    plain = fit_to_lab(checkpoint, labelled_x, labelled_y, unlabelled_x, NAMES)
    trained = fit_to_lab(checkpoint, labelled_x, labelled_y, unlabelled_x, NAMES, adapt_im=True)
    assert trained["fitted_to_lab"]["adapted_im"] is True
    network = load_model(checkpoint)
    layers = batchnorm_layers(network)
    norms = {f"{n}.{w}" for n, m in network.named_modules() if m in layers for w in ("weight", "bias")}
    moved = {k for k, v in trained["teacher"].items() if not torch.equal(v, plain["teacher"][k])}
    # the scales and shifts moved (and so the head fitted on their features); the statistics and the body did not
    assert moved & norms and moved <= norms | {"head.weight", "head.bias"}


def test_no_labels_keeps_the_reference_head() -> None:
    checkpoint = reference()
    unlabelled_x, _ = lab_cells(8, seed=3)
    fitted = fit_to_lab(checkpoint, unlabelled_x[:0], torch.empty(0, dtype=torch.long), unlabelled_x, NAMES)
    assert torch.equal(fitted["teacher"]["head.weight"], checkpoint["teacher"]["head.weight"])
    assert fitted["fitted_to_lab"]["labelled"] == 0


def test_the_batchnorm_pass_reports_its_progress_by_cells() -> None:
    checkpoint = reference()
    labelled_x, labelled_y = lab_cells(12, seed=1)
    unlabelled_x, _ = lab_cells(300, seed=2)
    seen: list[tuple[int, int]] = []
    fit_to_lab(checkpoint, labelled_x, labelled_y, unlabelled_x, NAMES, progress=lambda *a: seen.append(a))
    assert len(seen) == 3  # batches of 128 cells
    assert [done for done, _ in seen] == [128, 256, 312] and {cells for _, cells in seen} == {312}


def test_a_retrain_from_the_reference_shows_the_fit_as_its_first_phase() -> None:
    from ml.retrain import FIT_PHASE, retrain
    from ml.train import Progress

    checkpoint = reference()
    x, y = lab_cells(24, seed=4)
    unlabelled_x, _ = lab_cells(40, seed=5)
    reports: list[Progress] = []

    class Installed:
        id = 1

        def load(self) -> dict:
            return checkpoint

    done = retrain(
        x,
        y.tolist(),
        unlabelled_x,
        NAMES,
        method="supervised",
        profile="tiny",
        params={"epochs": 1},
        seed=0,
        reference=Installed(),
        progress=reports.append,
    )
    assert done.data["fitted_to_lab"] is True
    fit = [p for p in reports if p.phase == FIT_PHASE]
    assert fit and reports[: len(fit)] == fit  # the fit comes first
    assert fit[-1].step == fit[-1].steps == done.data["n_train"] + len(unlabelled_x)
    assert all(p.epoch == 0 and p.unit == "cells" for p in fit)
    assert any(p.phase.startswith("train") for p in reports[len(fit) :])


def test_interpolate_mixes_every_float_tensor_and_keeps_counters() -> None:
    from ml.transfer import interpolate

    start = reference()
    tuned = copy.deepcopy(start)
    for which in ("teacher", "student"):
        for name, value in tuned[which].items():
            if value.is_floating_point():
                tuned[which][name] = value + 1.0
            else:
                tuned[which][name] = value + 7  # BatchNorm's num_batches_tracked
    mixed = interpolate(start, tuned, 0.25)
    assert mixed["interpolated"] == {"keep": 0.25} and "interpolated" not in tuned
    for name, value in mixed["teacher"].items():
        if value.is_floating_point():
            assert torch.allclose(value, start["teacher"][name] + 0.25), name
        else:
            assert torch.equal(value, tuned["teacher"][name]), name
    assert all(torch.equal(v, tuned["student"][k]) for k, v in interpolate(start, tuned, 1.0)["student"].items())
    with pytest.raises(ValueError, match="keep"):
        interpolate(start, tuned, 1.5)
    renamed = dict(tuned, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="classes"):
        interpolate(start, renamed, 0.5)
