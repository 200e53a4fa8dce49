"""Self-supervised pre-training on unlabelled cells (issue 15's last untried lever).

A lab has thousands of unlabelled cells before it has a hundred labels. Contrastive learning (SimCLR, Chen et
al. 2020) trains the network without labels to map two random views of one cell close together and the views
of other cells apart; ``ml.train.train`` then starts from it (``init_checkpoint``) instead of random weights.
The views differ in position, orientation, magnification and focus, ways in which two cells of one class differ,
so what the network keeps is what stays: the nucleus's shape, the chromatin, the granules (and the stain: see
``SelfSupConfig``).

The classifier head is not trained here: the checkpoint has no classes, so a warm start builds a fresh head
(``ml.train._load_init``) and loads the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ml.augment import Augmenter, StainAugment
from ml.checkpoint import make_checkpoint
from ml.data import autocast
from ml.model import ModelConfig, build_model
from ml.train import cosine_lr


@dataclass
class SelfSupConfig:
    epochs: int = 10
    batch_size: int = 128  # cells a step; each is seen in two views
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.05
    temperature: float = 0.2
    projection_dim: int = 128
    # The two views: translation (fraction of the side), the eight symmetries of the square, magnification
    # and focus. No stain or colour jitter: on PBC cells (1,280 of them, 20 steps of 128) even a mild one (HED
    # ±5 %, colour ±10 %) held the loss near chance (5.56 -> 5.15, chance ln 255 = 5.54) where these views
    # alone fell to 3.9; SimCLR's strong colour jitter held it at chance throughout. Within one lab a cell's
    # stain is a cue to its class (an eosinophil's granules, a basophil's), not a nuisance.
    translate: float = 0.125
    stain: StainAugment = StainAugment(zoom=0.2, blur_p=0.3)
    cpu_bf16: bool = True
    seed: int = 0


@dataclass
class SelfSupProgress:
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float


class Projector(nn.Module):
    """SimCLR's projection head: the contrastive loss is taken on its output, so the features below it keep
    what the views' differences would otherwise squeeze out."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        layers = (nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True), nn.Linear(dim, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """The normalised temperature-scaled cross-entropy: each view must pick its partner among the other
    2N - 1 views of the batch."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(similarity, partner)


def pretrain(
    images: torch.Tensor,
    model_config: ModelConfig,
    config: SelfSupConfig | None = None,
    device: torch.device | None = None,
    progress: Callable[[SelfSupProgress], None] | None = None,
) -> dict:
    """Train ``model_config``'s network on uint8 ``images`` (N×3×S×S) without labels; return a checkpoint
    without classes for ``ml.train.train(init_checkpoint=...)``, its history the loss of each epoch."""
    config = config or SelfSupConfig()
    device = device or torch.device("cpu")
    if len(images) < 2:
        raise ValueError(f"self-supervised pre-training needs at least 2 images, got {len(images)}")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    # No dropout while pre-training: it made two views of one cell differ as much as two cells (the loss fell
    # 5.37 -> 4.11 without it against 5.53 -> 4.70 with it over the same 20 steps). It has no weights, so the
    # checkpoint keeps ``model_config`` as given and the warm start trains with its dropout.
    model = build_model(replace(model_config, dropout=0.0)).to(device).to(memory_format=torch.channels_last)
    projector = Projector(model.feature_dim, config.projection_dim).to(device)
    augmenter = Augmenter(config.translate, True, True, True, config.seed, stain=config.stain)
    parameters = list(model.parameters()) + list(projector.parameters())
    optimizer = torch.optim.SGD(
        parameters, lr=config.lr, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay
    )
    images = images.to(device)
    batch = min(config.batch_size, len(images))
    steps = len(images) // batch
    total = config.epochs * steps
    warmup = int(config.warmup_fraction * total)
    history: list[dict] = []
    model.train()
    projector.train()
    step = 0
    for epoch in range(config.epochs):
        started = time.perf_counter()
        order = torch.randperm(len(images), generator=generator).to(device)
        losses = []
        for i in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(step, total, config.lr, warmup)
            x = images[order[i * batch : (i + 1) * batch]]
            views = torch.cat([augmenter.weak(x), augmenter.weak(x)]).contiguous(memory_format=torch.channels_last)
            with autocast(device, config.cpu_bf16):
                z = projector(model.features(views))
            loss = nt_xent(z[:batch], z[batch:], config.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
            step += 1
            if progress is not None and i % 5 == 0 and i + 1 < steps:  # the epoch's last step: its mean below
                progress(SelfSupProgress(epoch + 1, config.epochs, i + 1, steps, float(loss.detach())))
        mean_loss = float(torch.stack(losses).mean())
        history.append({"epoch": epoch + 1, "loss": mean_loss, "seconds": time.perf_counter() - started})
        if progress is not None:
            progress(SelfSupProgress(epoch + 1, config.epochs, steps, steps, mean_loss))
    model.eval()
    settings = {**asdict(config), "stain": asdict(config.stain), "method": "simclr"}
    return make_checkpoint(
        student=model,
        teacher=model,
        model_config=model_config,
        train_config=None,
        class_names=[],
        history=history,
        step=step,
    ) | {"selfsup_config": settings}
