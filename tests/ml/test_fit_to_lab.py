"""``ml.transfer.fit_to_lab``: a reference's BatchNorm statistics and head fitted to a new lab."""

from __future__ import annotations

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
    assert fitted["fitted_to_lab"] == {"cells": 32, "labelled": 12, "probe_steps": 300}
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


def test_no_labels_keeps_the_reference_head() -> None:
    checkpoint = reference()
    unlabelled_x, _ = lab_cells(8, seed=3)
    fitted = fit_to_lab(checkpoint, unlabelled_x[:0], torch.empty(0, dtype=torch.long), unlabelled_x, NAMES)
    assert torch.equal(fitted["teacher"]["head.weight"], checkpoint["teacher"]["head.weight"])
    assert fitted["fitted_to_lab"]["labelled"] == 0
