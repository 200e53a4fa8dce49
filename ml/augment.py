"""Batched augmentation on image tensors: no per-image Python in the training loop.

Inputs are N×3×S×S tensors in pixel units (uint8 or float); outputs are float32 in pixel
units. Every random choice is drawn per sample as a tensor, and applied with indexing or
``torch.where`` over the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def translate(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by its own random (dy, dx) in [-max_shift, max_shift], edges replicated."""
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    dy = torch.randint(0, 2 * max_shift + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), device=x.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask[:, None, None, None], a, b)


def flips_and_rotations(
    x: torch.Tensor, hflip: bool, vflip: bool, rot90: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    n = x.shape[0]

    def coin() -> torch.Tensor:
        return torch.rand(n, device=x.device, generator=generator) < 0.5

    if hflip:
        x = _where(coin(), x.flip(-1), x)
    if vflip:
        x = _where(coin(), x.flip(-2), x)
    if rot90 and x.shape[-1] == x.shape[-2]:
        # a transpose plus the flips above gives all eight symmetries of the square
        x = _where(coin(), x.transpose(-1, -2), x)
    return x


def colour_jitter(x: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample brightness, contrast, saturation and per-channel gain (stain variation)."""
    n = x.shape[0]

    def uniform(*shape: int) -> torch.Tensor:
        return 1.0 + strength * (2 * torch.rand(*shape, device=x.device, generator=generator) - 1)

    x = x * uniform(n, 1, 1, 1)  # brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * uniform(n, 1, 1, 1) + mean  # contrast
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * uniform(n, 1, 1, 1) + grey  # saturation
    x = x * (1.0 + 0.5 * strength * (2 * torch.rand(n, 3, 1, 1, device=x.device, generator=generator) - 1))
    return x.clamp(0, 255)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Blank one size×size square per image (grey), at a random centre."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), device=x.device, generator=generator)
    cx = torch.randint(0, w, (n,), device=x.device, generator=generator)
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    in_y = (ys - cy[:, None]).abs() <= size // 2
    in_x = (xs - cx[:, None]).abs() <= size // 2
    mask = (in_y[:, :, None] & in_x[:, None, :])[:, None]
    return torch.where(mask, torch.full_like(x, 127.5), x)


class Augmenter:
    """Weak (translation + flips/rotations) and strong (plus colour and cutout) views."""

    def __init__(self, translate_fraction: float, hflip: bool, vflip: bool, rot90: bool, seed: int = 0):
        self.translate_fraction = translate_fraction
        self.hflip, self.vflip, self.rot90 = hflip, vflip, rot90
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            self._generators[device] = gen
        return self._generators[device]

    def weak(self, x: torch.Tensor) -> torch.Tensor:
        gen = self._generator(x.device)
        x = x.float()
        x = translate(x, int(round(self.translate_fraction * x.shape[-1])), gen)
        return flips_and_rotations(x, self.hflip, self.vflip, self.rot90, gen)

    def strong(self, x: torch.Tensor) -> torch.Tensor:
        gen = self._generator(x.device)
        x = x.float()
        x = translate(x, int(round(1.5 * self.translate_fraction * x.shape[-1])), gen)
        x = flips_and_rotations(x, True, True, True, gen)
        # Stain colour separates basophils from lymphocytes: jitter it only mildly.
        x = colour_jitter(x, 0.2, gen)
        return cutout(x, x.shape[-1] // 4, gen)
