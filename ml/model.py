"""The networks: the paper's VGG-style classifier with channel attention, and ResNet-50.

Modules and their config only; no I/O. Every network takes images in pixel units
(uint8 or float 0-255, N×3×S×S) and normalises them itself, so exported models and
``ml.infer`` need no separate preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ml.augment import zoom

# Paper Fig. 3: ten 3×3 conv blocks, "M" = the block ends with 2×2 max-pooling.
VGG_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M")


@dataclass
class ModelConfig:
    n_classes: int = 5
    arch: str = "vgg"  # "vgg" or "resnet50"
    width: float = 1.0
    image_size: int = 64
    dropout: float = 0.2
    hidden: int = 1024  # classifier width at width 1.0 (Table 1)
    attention_reduction: int = 8
    tta: bool = False  # ml.infer.predict averages the eight symmetries of the square
    mean: tuple[float, float, float] = (0.5 * 255, 0.5 * 255, 0.5 * 255)
    std: tuple[float, float, float] = (0.25 * 255, 0.25 * 255, 0.25 * 255)
    # "dataset": (x - mean) / std with the training set's channel statistics. "lab-instance": each image in
    # CIELAB, standardised per channel over its own pixels (Reinhard-style colour normalisation inside the
    # network, so every lab's stain and background cast is removed the same way at training and at use).
    input_norm: str = "dataset"
    # Training only: with this probability a batch, the first stages' per-image feature statistics are
    # perturbed (StyleNoise). 0: off, and the forward pass is the plain one.
    style_noise: float = 0.0


class StyleNoise(nn.Module):
    """Feature-statistics uncertainty (Li et al. 2022, "DSU"): in training, with probability ``p``, each
    image's per-channel mean and sd of a feature map are moved by Gaussian noise scaled by how much those
    statistics vary across the batch, and the map is re-standardised to them. A stain or camera changes
    these low-level statistics; a network that sees them vary while the label stays learns to ignore them.
    No weights; the identity in eval mode."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0 or x.shape[0] < 2 or float(torch.rand(())) >= self.p:
            return x
        h = x.float()
        mean = h.mean(dim=(2, 3), keepdim=True)
        std = (h.var(dim=(2, 3), keepdim=True) + 1e-6).sqrt()
        mean_spread = (mean.var(dim=0, keepdim=True) + 1e-6).sqrt()
        std_spread = (std.var(dim=0, keepdim=True) + 1e-6).sqrt()
        new_mean = mean + torch.randn_like(mean) * mean_spread
        new_std = std + torch.randn_like(std) * std_spread
        return ((h - mean) / std * new_std + new_mean).to(x.dtype)


class ConvBlock(nn.Sequential):
    """C-B-R (C-B-M-R with ``pool``): 3×3 conv, stride 1, padding 1, BN, ReLU (2×2 max-pool).

    With ``pool`` the ReLU runs after the max-pool: the same function (the maximum of rectified
    values is the rectified maximum) and the same gradients, on a quarter of the values. Only the
    conv and BN hold weights, so checkpoints of either order load."""

    def __init__(self, c_in: int, c_out: int, pool: bool):
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)]
        if pool:
            layers.append(nn.MaxPool2d(2))
        layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ChannelAttention(nn.Module):
    """Global average pool, FC, ReLU, FC, sigmoid; the weights rescale the map's channels."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.fc(x.mean(dim=(2, 3)))
        return x * weights[:, :, None, None]


_RGB_TO_XYZ = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_D65_WHITE = (0.950456, 1.0, 1.088754)


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """sRGB pixels (0-255, N×3×S×S) to CIELAB (D65), as ``skimage.color.rgb2lab``."""
    c = (x / 255.0).clamp(0, 1)
    linear = torch.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = torch.einsum("ij,njhw->nihw", _RGB_TO_XYZ.to(x.device, x.dtype), linear)
    white = torch.tensor(_D65_WHITE, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    t = xyz / white
    f = torch.where(t > 0.008856, t.clamp_min(1e-12) ** (1.0 / 3.0), 7.787 * t + 16.0 / 116.0)
    fx, fy, fz = f[:, 0:1], f[:, 1:2], f[:, 2:3]
    light = torch.where(t[:, 1:2] > 0.008856, 116.0 * fy - 16.0, 903.3 * t[:, 1:2])
    return torch.cat([light, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


class _Normalised(nn.Module):
    def _init_normalisation(self, config: ModelConfig) -> None:
        self.register_buffer("input_mean", torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("input_std", torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1))
        # Another lab's magnification: each input is enlarged by this factor first (ml.adapt.adapt_to_lab).
        self.input_zoom = 1.0

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_zoom != 1.0:
            x = zoom(x, self.input_zoom)
        if getattr(self.config, "input_norm", "dataset") == "lab-instance":
            lab = rgb_to_lab(x.float())
            mean = lab.mean(dim=(2, 3), keepdim=True)
            std = lab.std(dim=(2, 3), keepdim=True)
            return (lab - mean) / (std + 1.0)  # +1 (in LAB units): a flat image stays flat, not amplified noise
        return (x.float() - self.input_mean) / self.input_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate embedding (used for label propagation)."""
        return self.forward_with_features(x)[1]

    def ood_taps(self) -> dict[str, nn.Module]:
        """Mid-level modules whose pooled outputs the "unlike any known class" score compares as well
        (``ml.infer.predict(layers=True)``, ``ml.ood`` method ``knn-layers``): the penultimate layer
        is trained to tell the known classes apart and so maps a cell of another kind onto one of
        them; the texture and shape of the depths before it are not yet squeezed into the classes."""
        return {}


class WBCNet(_Normalised):
    """Song & Wang 2024 Fig. 3 / Table 1, with a width multiplier."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self._init_normalisation(config)
        blocks: list[nn.Module] = []
        c_in = 3
        layout = list(VGG_LAYOUT)
        for i, item in enumerate(layout):
            if item == "M":
                continue
            c_out = max(int(round(item * config.width)), 8)
            pool = i + 1 < len(layout) and layout[i + 1] == "M"
            blocks.append(ConvBlock(c_in, c_out, pool))
            c_in = c_out
        self.backbone = nn.Sequential(*blocks)
        self.style_noise = StyleNoise(config.style_noise)
        self.attention = ChannelAttention(c_in, config.attention_reduction)
        side = config.image_size // 16
        hidden = max(int(round(config.hidden * config.width)), 64)
        self.embed = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(c_in * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(hidden, config.n_classes)
        self.feature_dim = hidden

    def ood_taps(self) -> dict[str, nn.Module]:
        # the first two of the last stage's blocks (8×8 maps at 64 px) and the attention output
        return {"block8": self.backbone[7], "block9": self.backbone[8], "attention": self.attention}

    # StyleNoise after the first two stages (blocks 1-4 at 64 px), where stain and texture statistics live
    STYLE_AFTER = (1, 3)

    def _backbone(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.style_noise.p > 0):
            return self.backbone(x)
        for i, block in enumerate(self.backbone):
            x = block(x)
            if i in self.STYLE_AFTER:
                x = self.style_noise(x)
        return x

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.attention(self._backbone(self.normalise(x)))
        # Flatten in (C, H, W) order whatever the memory format, so weights are portable.
        features = self.embed(z.contiguous())
        return self.head(features), features


class ResNet50(_Normalised):
    """torchvision ResNet-50, random initialisation, for the paper's §V comparison."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        from torchvision.models import resnet50

        self.config = config
        self._init_normalisation(config)
        net = resnet50(weights=None)
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(self.feature_dim, config.n_classes))

    def ood_taps(self) -> dict[str, nn.Module]:
        return {"layer3": self.net.layer3, "layer4": self.net.layer4}

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net(self.normalise(x))
        return self.head(features), features


def build_model(config: ModelConfig) -> nn.Module:
    if config.arch == "vgg":
        return WBCNet(config)
    if config.arch == "resnet50":
        return ResNet50(config)
    raise ValueError(f"unknown arch {config.arch!r}")
