"""Stain augmentation and BatchNorm adaptation: shapes, ranges, the skimage matrix, and that they act."""

from __future__ import annotations

import copy

import numpy as np
import torch
from skimage.color import rgb2hed

from ml.adapt import adapt_batchnorm, batchnorm_layers
from ml.augment import (
    Augmenter,
    StainAugment,
    hed_jitter,
    hed_to_rgb,
    random_blur,
    random_grey,
    random_zoom,
    rgb_to_hed,
    stain_mix,
)
from ml.config import STAIN_ROBUST, TrainConfig, make_config
from ml.model import ModelConfig, build_model
from tests.ml.conftest import synthetic_cells


def _batch(n: int = 2) -> torch.Tensor:
    x, _ = synthetic_cells(n, size=32, seed=3)
    return x


def test_rgb_to_hed_is_skimage_rgb2hed_in_natural_units() -> None:
    x = _batch(1)[:3]
    ours = rgb_to_hed(x).permute(0, 2, 3, 1).numpy()
    theirs = np.stack([rgb2hed(img) for img in x.permute(0, 2, 3, 1).numpy()])  # divided by -log(1e-6), clipped at 0
    scaled = np.maximum(ours / -np.log(1e-6), 0)
    assert np.allclose(scaled, theirs, atol=1e-5)


def test_hed_round_trip_gives_the_image_back() -> None:
    x = _batch()
    back = hed_to_rgb(rgb_to_hed(x))
    assert back.shape == x.shape
    assert (back - x.float()).abs().max() < 0.5  # pixels of 0 are clamped to 1e-6 first


def test_stain_augment_keeps_shape_dtype_and_range_and_changes_colour() -> None:
    x = _batch(4)
    augment = StainAugment(**{k.removeprefix("stain_"): v for k, v in STAIN_ROBUST.items()})
    assert augment.enabled
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 255
    # each image's mean colour moves, by a different amount per image
    shift = (out.mean(dim=(2, 3)) - x.float().mean(dim=(2, 3))).abs().sum(dim=1)
    assert float(shift.min()) > 0.5 and float(shift.std()) > 0.1


def test_hed_jitter_moves_colour_not_shape() -> None:
    x = _batch(2)
    out = hed_jitter(x, alpha=0.3, beta=0.1, generator=torch.Generator().manual_seed(1))
    assert (out - x.float()).abs().mean() > 2
    # where the image is dark it stays darker than where it is bright: the structure is kept
    grey_in, grey_out = x.float().mean(dim=1).flatten(1), out.mean(dim=1).flatten(1)
    corr = [np.corrcoef(a, b)[0, 1] for a, b in zip(grey_in.numpy(), grey_out.numpy(), strict=True)]
    assert min(corr) > 0.8
    assert torch.equal(hed_jitter(x, 0.0, 0.0), x.float())


def test_stain_mix_changes_the_dyes_colours_per_image_and_keeps_white_white() -> None:
    x = _batch(4).float()
    x[:, :, 0, 0] = 255.0  # one white (unstained) pixel per image
    out = stain_mix(x, 0.3, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 255
    assert torch.equal(stain_mix(x, 0.0), x)
    # no dye, no optical density: white stays white whatever the mix
    assert torch.allclose(out[:, :, 0, 0], torch.full_like(out[:, :, 0, 0], 255.0), atol=1e-3)
    # the hue of the stained pixels moves, by another matrix for each image
    ratio_in = (x[:, 0] + 1) / (x[:, 2] + 1)
    ratio_out = (out[:, 0] + 1) / (out[:, 2] + 1)
    moved = (ratio_out.log() - ratio_in.log()).abs().mean(dim=(1, 2))
    assert float(moved.min()) > 0.02 and float(moved.std()) > 0.005
    assert StainAugment(mix=0.2).enabled and TrainConfig(stain_mix=0.2).stain_augment["mix"] == 0.2


def test_style_noise_moves_feature_statistics_in_training_only() -> None:
    from ml.model import StyleNoise

    torch.manual_seed(0)
    h = torch.randn(8, 4, 6, 6) * torch.linspace(0.5, 2, 8).view(8, 1, 1, 1) + torch.randn(8, 4, 1, 1)
    noise = StyleNoise(1.0).train()
    out = noise(h)
    assert out.shape == h.shape
    mean_moved = (out.mean(dim=(2, 3)) - h.mean(dim=(2, 3))).abs()
    assert float(mean_moved.mean()) > 0.05
    # the pattern inside each map is kept: a per-map affine change
    corr = [
        np.corrcoef(a, b)[0, 1]
        for a, b in zip(h.flatten(2).flatten(0, 1).numpy(), out.flatten(2).flatten(0, 1).numpy(), strict=True)
    ]
    assert min(abs(c) for c in corr) > 0.999
    assert torch.equal(noise.eval()(h), h) and torch.equal(StyleNoise(0.0).train()(h), h)
    # in the network: training forward passes differ, eval ones do not, and the weights are the plain net's
    model = build_model(ModelConfig(n_classes=5, width=0.125, image_size=32, style_noise=1.0))
    plain = build_model(ModelConfig(n_classes=5, width=0.125, image_size=32))
    assert set(model.state_dict()) == set(plain.state_dict())
    x = _batch(4)
    model.load_state_dict(plain.state_dict())
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), plain(x))
        model.train()
        plain.train()
        assert not torch.allclose(model._backbone(model.normalise(x)), plain.backbone(plain.normalise(x)))
    assert make_config("tiny", "supervised", style_noise=0.5).style_noise == 0.5


def test_grey_and_blur() -> None:
    x = _batch(2).float()
    grey = random_grey(x, 1.0, torch.Generator().manual_seed(0))
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    blurred = random_blur(x, 1.0, 1.5, torch.Generator().manual_seed(0))
    assert blurred.shape == x.shape
    # a blur lowers the pixel-to-pixel differences, keeps the mean
    assert blurred.diff(dim=-1).abs().mean() < x.diff(dim=-1).abs().mean()
    assert torch.allclose(blurred.mean(), x.mean(), atol=1.0)
    assert torch.equal(random_blur(x, 0.0, 1.5), x)


def test_zoom_scales_a_centred_disc_by_a_per_image_factor_in_range() -> None:
    size, radius = 64, 12
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    disc = ((ys - size / 2) ** 2 + (xs - size / 2) ** 2 <= radius**2).float() * 200 + 20
    x = disc.expand(64, 3, size, size).clone()
    out = random_zoom(x, 0.5, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.equal(random_zoom(x, 0.0), x)
    # the disc's radius, read back from its area, is the original one times a factor in [1/1.5, 1.5]
    dark = (out[:, 0] > 120).float().sum(dim=(1, 2))
    factor = (dark / (torch.pi * radius**2)).sqrt()
    assert float(factor.min()) > 1 / 1.5 - 0.05 and float(factor.max()) < 1.5 + 0.05
    assert float(factor.min()) < 0.85 and float(factor.max()) > 1.2  # both ways, per image
    # the disc stays centred: its centre of mass does not move
    mass = (out[:, 0] > 120).float()
    centre_y = (mass * ys).sum(dim=(1, 2)) / mass.sum(dim=(1, 2))
    assert torch.allclose(centre_y, torch.full_like(centre_y, size / 2), atol=0.5)
    assert StainAugment(zoom=0.2).enabled


def test_augmenter_applies_stain_only_when_configured() -> None:
    x = _batch(2)
    plain = Augmenter(0.0, False, False, False, seed=0)
    stained = Augmenter(0.0, False, False, False, seed=0, stain=StainAugment(hed_alpha=0.2, hed_beta=0.05))
    assert torch.equal(plain.weak(x), x.float())
    assert (stained.weak(x) - x.float()).abs().mean() > 1


def test_config_fields_feed_the_stain_augment() -> None:
    assert not StainAugment(**TrainConfig().stain_augment).enabled  # off unless asked for
    config = make_config("tiny", "supervised", **STAIN_ROBUST)
    assert StainAugment(**config.stain_augment).enabled
    assert config.stain_augment["hed_alpha"] == STAIN_ROBUST["stain_hed_alpha"]


def test_adapt_batchnorm_takes_the_new_cells_statistics_and_keeps_the_weights() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_classes=5, width=0.125, image_size=32)).eval()
    x = _batch(4)
    yellow = (x.float() * torch.tensor([1.0, 0.95, 0.55]).view(1, 3, 1, 1)).to(torch.uint8)
    adapted = adapt_batchnorm(model, yellow, symmetries=False)
    first, first_adapted = batchnorm_layers(model)[0], batchnorm_layers(adapted)[0]
    assert not torch.allclose(first.running_mean, first_adapted.running_mean)
    assert torch.allclose(first.running_mean, torch.zeros_like(first.running_mean))  # the original is untouched
    # the first BN layer now sees the yellow cells' conv outputs as zero-mean
    with torch.no_grad():
        conv = adapted.backbone[0][0](adapted.normalise(yellow))
    assert torch.allclose(conv.mean(dim=(0, 2, 3)), first_adapted.running_mean, atol=1e-3)
    for (name, p), (_, q) in zip(model.named_parameters(), adapted.named_parameters(), strict=True):
        assert torch.equal(p, q), name


def test_lab_instance_normalisation_is_skimage_lab_standardised_per_image() -> None:
    from skimage.color import rgb2lab

    from ml.model import rgb_to_lab

    x = _batch(1)[:2]
    ours = rgb_to_lab(x.float()).permute(0, 2, 3, 1).numpy()
    theirs = np.stack([rgb2lab(img / 255.0) for img in x.permute(0, 2, 3, 1).numpy()])
    assert np.abs(ours - theirs).max() < 0.05
    model = build_model(ModelConfig(n_classes=5, width=0.125, image_size=32, input_norm="lab-instance")).eval()
    normalised = model.normalise(x)
    assert torch.allclose(normalised.mean(dim=(2, 3)), torch.zeros(2, 3), atol=1e-4)
    # a yellow cast (less blue) moves the dataset-normalised input far more than the per-image LAB one
    yellow = (x.float() * torch.tensor([1.0, 1.0, 0.7]).view(1, 3, 1, 1)).round()
    plain = build_model(ModelConfig(n_classes=5, width=0.125, image_size=32)).eval()
    moved_lab = (model.normalise(yellow) - normalised).abs().mean()
    moved_plain = (plain.normalise(yellow) - plain.normalise(x)).abs().mean()
    assert moved_lab < 0.5 * moved_plain
    with torch.no_grad():
        assert model(x).shape == (2, 5)
    config = make_config("tiny", "supervised", input_norm="lab-instance")
    assert config.input_norm == "lab-instance"


def test_input_zoom_enlarges_the_cell_before_the_network() -> None:
    from ml.augment import zoom

    torch.manual_seed(0)
    model = build_model(ModelConfig(n_classes=5, width=0.125, image_size=32)).eval()
    x = _batch(2)
    assert model.input_zoom == 1.0
    with torch.no_grad():
        plain, plain_of_zoomed = model.normalise(x), model.normalise(zoom(x, 1.3))
        model.input_zoom = 1.3
        zoomed = model.normalise(x)
    assert torch.allclose(zoomed, plain_of_zoomed, atol=1e-5)
    assert not torch.allclose(zoomed, plain, atol=1e-3)


def test_adapt_to_lab_keeps_the_zoom_the_network_is_surest_of_and_leaves_the_model_alone() -> None:
    from ml.adapt import adapt_to_lab
    from ml.infer import predict
    from ml.pseudo import entropy

    torch.manual_seed(0)
    model = build_model(ModelConfig(n_classes=5, width=0.125, image_size=32)).eval()
    x = _batch(4)
    adapted, scores = adapt_to_lab(model, x, zooms=(0.8, 1.0, 1.25))
    assert set(scores) == {0.8, 1.0, 1.25}
    assert adapted.input_zoom == min(scores, key=scores.get)
    assert model.input_zoom == 1.0  # the original is untouched
    # its score is the mean entropy of its own predictions, with BatchNorm adapted at that zoom
    assert np.isclose(scores[adapted.input_zoom], entropy(predict(adapted, x).probs).mean(), atol=1e-6)
    # its BatchNorm statistics are those of the cells seen at that zoom
    again = copy.deepcopy(model)
    again.input_zoom = adapted.input_zoom
    again = adapt_batchnorm(again, x)
    for ours, theirs in zip(batchnorm_layers(adapted), batchnorm_layers(again), strict=True):
        assert torch.allclose(ours.running_mean, theirs.running_mean)
    unzoomed = batchnorm_layers(adapt_batchnorm(model, x))[0].running_mean
    assert (adapted.input_zoom == 1.0) == torch.allclose(unzoomed, batchnorm_layers(adapted)[0].running_mean)


def test_adapt_information_trains_only_the_batchnorm_affine_towards_sure_and_spread_predictions() -> None:
    from ml.adapt import adapt_information
    from ml.infer import predict
    from ml.pseudo import entropy

    torch.manual_seed(0)
    model = build_model(ModelConfig(n_classes=5, width=0.125, image_size=32)).eval()
    x = _batch(6)
    yellow = (x.float() * torch.tensor([1.0, 0.95, 0.55]).view(1, 3, 1, 1)).to(torch.uint8)
    start = adapt_batchnorm(model, yellow)
    before = copy.deepcopy(start.state_dict())

    def spread(m: torch.nn.Module) -> float:  # the entropy of the cells' mean prediction
        return float(entropy(predict(m, yellow, tta=True).probs.mean(axis=0, keepdims=True))[0])

    def objective(m: torch.nn.Module) -> float:  # what the steps lower
        return float(entropy(predict(m, yellow, tta=True).probs).mean()) - spread(m)

    adapted = adapt_information(start, yellow, steps=10, lr=0.05)
    assert objective(adapted) < objective(start) - 0.01  # surer of each cell, its calls still spread
    assert not adapted.training and all(not p.requires_grad for p in adapted.parameters())
    for key, value in start.state_dict().items():  # the network it started from is untouched
        assert torch.equal(value, before[key]), key
    affine = {
        f"{n}.{w}" for n, m in adapted.named_modules() if m in batchnorm_layers(adapted) for w in ("weight", "bias")
    }
    moved = {k for k, v in adapted.state_dict().items() if not torch.equal(v, start.state_dict()[k])}
    assert moved and moved <= affine  # only BatchNorm scales and shifts move; its statistics are the lab's
    again = adapt_information(start, yellow, steps=10, lr=0.05)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in adapted.state_dict().items())  # deterministic
    # without the spread term the same steps call the cells more alike
    lone = adapt_information(start, yellow, steps=10, lr=0.05, diversity=0.0)
    assert spread(lone) < spread(adapted)
    one = adapt_information(model, yellow[:1]).state_dict()  # one cell: nothing to adapt to
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in one.items())
