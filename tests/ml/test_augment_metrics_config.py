import pytest
import torch

from ml.augment import Augmenter, colour_jitter, cutout, flips_and_rotations, shift_and_flip, translate
from ml.config import DEFAULT_METHOD, METHODS, make_config
from ml.metrics import classification_metrics


def test_translate_shifts_each_sample_by_its_own_offset():
    x = torch.zeros(64, 1, 9, 9)
    x[:, :, 4, 4] = 1.0  # one bright pixel in the centre
    out = translate(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    positions = {tuple(torch.nonzero(img[0])[0].tolist()) for img in out}
    assert len(positions) > 5  # different per sample
    assert all(2 <= r <= 6 and 2 <= c <= 6 for r, c in positions)
    assert torch.equal(translate(x, 0), x)


def _symmetries(img: torch.Tensor) -> list[torch.Tensor]:
    """The eight symmetries of the square: four rotations, each with and without a flip."""
    rotations = [torch.rot90(img, k, dims=(-2, -1)) for k in range(4)]
    return rotations + [r.flip(-1) for r in rotations]


def _which(out: torch.Tensor, img: torch.Tensor) -> int:
    matches = [k for k, s in enumerate(_symmetries(img)) if torch.equal(out, s)]
    assert len(matches) == 1, "the output is not one symmetry of its input"
    return matches[0]


def test_flips_and_rotations_apply_a_symmetry_per_sample():
    # a 4×4 ramp with distinct pixels: each symmetry of the square gives a different image
    img = torch.arange(3 * 4 * 4, dtype=torch.float32).view(3, 4, 4)
    x = img.expand(64, 3, 4, 4).clone()
    out = flips_and_rotations(x, True, True, True, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    chosen = [_which(o, img) for o in out]
    assert len(set(chosen)) == 8  # 64 draws of three coins reach every symmetry
    assert torch.equal(flips_and_rotations(x, False, False, False), x)


@pytest.mark.parametrize(("hflip", "vflip", "allowed"), [(True, False, {0, 4}), (False, True, {0, 6})])
def test_a_single_flip_flips_about_half_the_samples(hflip, vflip, allowed):
    img = torch.arange(3 * 4 * 4, dtype=torch.float32).view(3, 4, 4)
    x = img.expand(64, 3, 4, 4).clone()
    out = flips_and_rotations(x, hflip, vflip, False, torch.Generator().manual_seed(2))
    chosen = [_which(o, img) for o in out]
    assert set(chosen) == allowed  # identity, or exactly that flip
    assert 16 <= sum(k != 0 for k in chosen) <= 48


@pytest.mark.parametrize(
    "flags", [(True, True, True), (True, False, False), (False, True, True), (False, False, False)]
)
@pytest.mark.parametrize("shift", [0, 3, 8])
@pytest.mark.parametrize("shape", [(16, 3, 16, 16), (9, 3, 12, 20)])
def test_the_one_gather_gives_exactly_the_shift_then_the_flips(flags, shift, shape):
    # the weak view's fast path: the same draws in the same order, so the same pixels and the same
    # generator state afterwards (a non-square image takes no transpose, as in flips_and_rotations)
    x = torch.randint(0, 256, shape, dtype=torch.uint8)
    composed_gen, fused_gen = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    composed = flips_and_rotations(translate(x.float(), shift, composed_gen), *flags, composed_gen)
    fused = shift_and_flip(x, shift, *flags, fused_gen)
    assert fused.dtype == torch.float32 and torch.equal(fused, composed)
    assert torch.equal(fused_gen.get_state(), composed_gen.get_state())
    if shift and flags[0]:
        assert not torch.equal(fused, x.float())


def test_the_weak_view_is_a_shift_and_a_symmetry():
    img = torch.arange(3 * 8 * 8, dtype=torch.uint8).view(3, 8, 8)
    out = Augmenter(0.0, True, True, True).weak(img.expand(64, 3, 8, 8).clone())
    assert len({_which(o, img.float()) for o in out}) == 8


def test_strong_augmentation_range():
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    aug = Augmenter(0.125, True, True, True)
    s = aug.strong(x)
    assert s.dtype == torch.float32 and s.shape == x.shape
    assert s.min() >= 0 and s.max() <= 255
    assert (cutout(x.float(), 8) == 127.5).any()
    assert not torch.equal(colour_jitter(x.float(), 0.4), x.float())


def test_classification_metrics():
    m = classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["a"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["f1"] == 0.0 and m["per_class"]["c"]["support"] == 1
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_make_config():
    assert DEFAULT_METHOD in METHODS
    cfg = make_config("cpu", "mean-teacher+lp", seed=3)
    assert cfg.seed == 3 and cfg.algorithm == "mean-teacher" and cfg.pseudo_filter == "lp" and cfg.n_rounds == 2
    assert (cfg.batch_size, cfg.labelled_per_batch, cfg.lr, cfg.weight_decay, cfg.ema_decay) == (
        40,
        20,
        0.05,
        5e-5,
        0.97,
    )
    paper = make_config("paper")
    assert paper.width == 1.0 and paper.image_size == 64 and paper.epochs == 180
    assert make_config("cpu", "supervised").n_rounds == 1
    with pytest.raises(ValueError):
        make_config("cpu", "magic")
    with pytest.raises(ValueError):
        make_config("huge")
    with pytest.raises(ValueError):
        make_config("cpu", nonsense=1)


def test_training_stages_pretrain_then_fine_tune():
    from ml.train import training_stages

    cfg = make_config("tiny", "mean-teacher+lp", pretrain_epochs=3, epochs=2, round_epochs=1, lr=0.1)
    stages = training_stages(cfg, cfg.n_rounds)
    assert [(s.round, s.algorithm, s.epochs) for s in stages] == [
        (1, "supervised", 3),
        (1, "mean-teacher", 2),
        (2, "mean-teacher", 1),
    ]
    # the pre-training runs the full cosine cycle; what follows fine-tunes it from a lower peak
    assert [s.lr for s in stages] == pytest.approx([0.1, 0.1 * cfg.round_lr_scale, 0.1 * cfg.round_lr_scale])
    # beta ramps up when the mean teacher starts, not again in the warm round 2
    assert [s.ramps_up for s in stages[1:]] == [True, False]
    assert [s.pseudo_label_after for s in stages] == [False, True, False]
    # without pseudo-label rounds there is nothing after round 1 to label for
    assert [s.pseudo_label_after for s in training_stages(cfg, 1)] == [False, False]


def test_training_stages_pretrain_only_for_the_mean_teacher():
    from ml.train import training_stages

    for method in ("fixmatch", "supervised", "lp+mean-teacher"):
        cfg = make_config("tiny", method, pretrain_epochs=3)
        assert training_stages(cfg, cfg.n_rounds)[0].phase == "train"
    plain = make_config("tiny", "mean-teacher+lp")
    assert plain.pretrain_epochs == 0 and training_stages(plain, 2)[0].algorithm == "mean-teacher"
    cpu = make_config("cpu", "mean-teacher+lp")
    assert (cpu.pretrain_epochs, cpu.epochs) == (12, 8)
