"""Self-supervised pre-training (``ml.selfsup``): the contrastive loss, the pre-training on generated cells,
and the warm start that ``ml.train.train`` takes from it."""

from __future__ import annotations

import pytest
import torch

from ml.config import make_config
from ml.model import ModelConfig, build_model
from ml.selfsup import SelfSupConfig, nt_xent, pretrain
from ml.train import train

NET = ModelConfig(n_classes=5, width=0.125, image_size=32, dropout=0.2)


def test_nt_xent_is_low_when_each_view_points_at_its_partner_and_high_when_partners_are_shuffled() -> None:
    generator = torch.Generator().manual_seed(0)
    z1 = torch.randn(32, 64, generator=generator)
    z2 = z1 + 0.05 * torch.randn(32, 64, generator=generator)
    matched = nt_xent(z1, z2, temperature=0.2)
    shuffled = nt_xent(z1, z2[torch.randperm(32, generator=generator)], temperature=0.2)
    assert matched < 0.5 and shuffled > 3.0
    # all views alike: every candidate is as likely as the partner, ln(2N - 1)
    same = nt_xent(torch.ones(8, 4), torch.ones(8, 4), temperature=0.2)
    assert same.item() == pytest.approx(torch.log(torch.tensor(15.0)).item(), rel=1e-4)


def _pretrained(cells, epochs: int = 4) -> tuple[dict, torch.Tensor]:
    x, _ = cells(24, size=32, seed=3)
    config = SelfSupConfig(epochs=epochs, batch_size=30, lr=0.05, cpu_bf16=False, seed=0)
    return pretrain(x, NET, config), x


def test_pretraining_lowers_the_contrastive_loss_and_writes_a_checkpoint_without_classes(cells) -> None:
    checkpoint, x = _pretrained(cells)
    losses = [epoch["loss"] for epoch in checkpoint["history"]]
    assert len(losses) == 4
    assert losses[-1] < losses[0] - 0.2, losses
    assert checkpoint["class_names"] == []
    assert checkpoint["step"] == 4 * (len(x) // 30)
    # the network as given (dropout included) is what a warm start rebuilds
    assert checkpoint["model_config"]["dropout"] == 0.2 and checkpoint["model_config"]["width"] == 0.125
    assert checkpoint["selfsup_config"]["method"] == "simclr"


def test_pretraining_is_deterministic_for_a_seed(cells) -> None:
    first, _ = _pretrained(cells, epochs=1)
    second, _ = _pretrained(cells, epochs=1)
    for key, value in first["student"].items():
        assert torch.equal(value, second["student"][key]), key


def test_pretraining_refuses_fewer_than_two_cells() -> None:
    with pytest.raises(ValueError, match="at least 2 images"):
        pretrain(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), NET, SelfSupConfig(epochs=1))


def test_training_warm_starts_from_the_pretrained_network_with_a_fresh_head(cells, class_names) -> None:
    checkpoint, _ = _pretrained(cells, epochs=1)
    first_conv = "backbone.0.0.weight"
    for net in ("student", "teacher"):
        # far from any random initialisation, so that the test tells a warm start from a fresh network
        checkpoint[net][first_conv] += 0.5
        checkpoint[net]["head.weight"].fill_(7.0)  # never trained for any class: must not be loaded
    x, y = cells(6, size=32, seed=5)
    config = make_config("tiny", "supervised", epochs=1, steps_per_epoch=2, lr=0.001, fit_ood=False)
    result = train(config, x, y, None, class_names, init_checkpoint=checkpoint)
    trained = result.checkpoint["student"]
    torch.manual_seed(config.seed)
    random = build_model(NET).state_dict()
    to_pretrained = (trained[first_conv] - checkpoint["student"][first_conv]).norm()
    to_random = (trained[first_conv] - random[first_conv]).norm()
    assert to_pretrained < 0.1 * to_random
    assert result.checkpoint["class_names"] == class_names
    assert trained["head.weight"].abs().max() < 1.0
