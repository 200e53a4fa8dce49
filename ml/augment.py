"""Batched augmentation on image tensors: no per-image Python in the training loop.

Inputs are N×3×S×S tensors in pixel units (uint8 or float); outputs are float32 in pixel
units. Every random choice is drawn per sample as a tensor, and applied with indexing or
``torch.where`` over the whole batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


def shift_and_flip(
    x: torch.Tensor,
    max_shift: int,
    hflip: bool,
    vflip: bool,
    rot90: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``translate`` then ``flips_and_rotations`` as one gather, in float32.

    It draws the same random numbers in the same order as the two steps, so it gives exactly
    their result; but it reads each source pixel once, on the input's own dtype (uint8 for the
    training pool), instead of a padded float copy and a full copy per flip. Each output pixel's
    source is traced back through the transpose, the flips and the shift, and clamped to the image
    (the replicated edge of ``translate``). The output is contiguous, where the two steps may return
    a transposed layout: the pixels are equal, but a reduction that follows (the stain jitter's
    per-image means) can sum in another order and round differently, at about 1e-5 of a pixel value.
    So only the weak view uses it: ``strong`` keeps the two steps, and its colour jitter its figures."""
    n, c, h, w = x.shape
    device = x.device
    shift_y = shift_x = torch.zeros(n, dtype=torch.long, device=device)
    if max_shift > 0:
        shift_y = torch.randint(0, 2 * max_shift + 1, (n,), device=device, generator=generator) - max_shift
        shift_x = torch.randint(0, 2 * max_shift + 1, (n,), device=device, generator=generator) - max_shift

    def coin(enabled: bool) -> torch.Tensor:
        if not enabled:
            return torch.zeros(n, 1, dtype=torch.bool, device=device)
        return (torch.rand(n, device=device, generator=generator) < 0.5)[:, None]

    flip_x, flip_y = coin(hflip), coin(vflip)
    # Before the transpose, pixel (i, j) of sample b comes from (source_row[b, i], source_col[b, j]).
    i, j = torch.arange(h, device=device), torch.arange(w, device=device)
    source_row = (torch.where(flip_y, h - 1 - i, i) + shift_y[:, None]).clamp_(0, h - 1)
    source_col = (torch.where(flip_x, w - 1 - j, j) + shift_x[:, None]).clamp_(0, w - 1)
    # offsets into each H·W image: a row part and a column part, which the transpose swaps
    first, second = source_row * w, source_col
    if rot90 and h == w:
        swap = coin(True)
        first, second = torch.where(swap, source_col, first), torch.where(swap, first, source_col)
    offsets = (first[:, :, None] + second[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return torch.gather(x.reshape(n, c, h * w), 2, offsets).view(n, c, h, w).float()


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


def stain_mix(x: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Another lab's dyes: each image's optical densities (per RGB channel) remixed by its own 3×3
    matrix I + U(±strength). Where ``hed_jitter`` changes how much of each stain a cell took up, this
    changes the stains' colours themselves (a rapid stain, another Giemsa batch)."""
    if strength <= 0:
        return x
    n = x.shape[0]
    mix = torch.eye(3, device=x.device) + strength * (2 * torch.rand(n, 3, 3, device=x.device, generator=generator) - 1)
    od = -torch.log((x.float() + 1.0) / 256.0)
    od = torch.einsum("nij,njhw->nihw", mix, od).clamp_min(0)
    return (256.0 * torch.exp(-od) - 1.0).clamp(0, 255)


# skimage.color's H&E-DAB colour deconvolution (Ruifrok & Johnston 2001): rows are the RGB optical
# densities of haematoxylin, eosin and DAB; its inverse separates a pixel's OD into the three stains.
_HED_CACHE: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _hed_matrices(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if device not in _HED_CACHE:
        from skimage.color.colorconv import hed_from_rgb, rgb_from_hed

        _HED_CACHE[device] = (
            torch.as_tensor(hed_from_rgb, dtype=torch.float32, device=device),
            torch.as_tensor(rgb_from_hed, dtype=torch.float32, device=device),
        )
    return _HED_CACHE[device]


def rgb_to_hed(x: torch.Tensor) -> torch.Tensor:
    """Stain optical densities (N×3×S×S: H, E, D) of pixel images, as ``skimage.color.rgb2hed``
    without its clip at zero and in natural OD units (skimage divides by -log(1e-6))."""
    hed_from_rgb, _ = _hed_matrices(x.device)
    od = -torch.log((x.float() / 255.0).clamp_min(1e-6))
    return torch.einsum("nchw,cd->ndhw", od, hed_from_rgb)


def hed_to_rgb(stains: torch.Tensor) -> torch.Tensor:
    """Pixel images (float 0-255) from stain optical densities: the inverse of ``rgb_to_hed``."""
    _, rgb_from_hed = _hed_matrices(stains.device)
    od = torch.einsum("ndhw,dc->nchw", stains, rgb_from_hed)
    return (torch.exp(-od) * 255.0).clamp(0, 255)


def hed_jitter(x: torch.Tensor, alpha: float, beta: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stain augmentation (Tellez et al. 2018): each image's haematoxylin, eosin and DAB densities
    are scaled by U(1-alpha, 1+alpha) and shifted by U(-beta, beta) OD, per stain and image."""
    if alpha <= 0 and beta <= 0:
        return x.float()
    n = x.shape[0]
    scale = 1.0 + alpha * (2 * torch.rand(n, 3, 1, 1, device=x.device, generator=generator) - 1)
    shift = beta * (2 * torch.rand(n, 3, 1, 1, device=x.device, generator=generator) - 1)
    return hed_to_rgb(rgb_to_hed(x) * scale + shift)


def random_grey(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image turned to grey (three equal channels) with probability ``p``: shape without colour."""
    if p <= 0:
        return x
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
    return _where(torch.rand(x.shape[0], device=x.device, generator=generator) < p, grey, x)


def random_blur(x: torch.Tensor, p: float, max_sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian blur of a random sigma in (0, ``max_sigma``] px on each image with probability ``p``
    (focus and optics differ between microscopes); one grouped convolution for the batch."""
    if p <= 0 or max_sigma <= 0:
        return x
    n, c, h, w = x.shape
    radius = max(1, int(math.ceil(2 * max_sigma)))
    sigma = max_sigma * torch.rand(n, device=x.device, generator=generator).clamp_min(1e-3)
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernel_1d = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    kernel_1d = kernel_1d / kernel_1d.sum(dim=1, keepdim=True)
    kernel = (kernel_1d[:, :, None] * kernel_1d[:, None, :]).repeat_interleave(c, dim=0)[:, None]
    padded = F.pad(x.float().reshape(1, n * c, h, w), (radius,) * 4, mode="replicate")
    blurred = F.conv2d(padded, kernel, groups=n * c).reshape(n, c, h, w)
    return _where(torch.rand(n, device=x.device, generator=generator) < p, blurred, x)


def zoom(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Scale each image about its centre by ``factor`` (one per image, or one for all; > 1
    enlarges), edges replicated; float32 out."""
    n = x.shape[0]
    factor = torch.as_tensor(factor, dtype=torch.float32, device=x.device).expand(n)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / factor
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_zoom(x: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``zoom`` by a factor per image, log-uniform in [1/(1+strength), 1+strength] (microscopes
    differ in magnification and labs in how they cut a cell)."""
    if strength <= 0:
        return x
    bound = math.log1p(strength)
    return zoom(x, torch.exp(bound * (2 * torch.rand(x.shape[0], device=x.device, generator=generator) - 1)))


@dataclass(frozen=True)
class StainAugment:
    """Stain and optics augmentation of the weak (training) view, magnification included; all zero: off."""

    hed_alpha: float = 0.0
    hed_beta: float = 0.0
    colour: float = 0.0
    grey_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: float = 1.0
    zoom: float = 0.0
    mix: float = 0.0

    @property
    def enabled(self) -> bool:
        values = (self.hed_alpha, self.hed_beta, self.colour, self.grey_p, self.blur_p, self.zoom, self.mix)
        return any(v > 0 for v in values)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = random_zoom(x, self.zoom, generator)
        x = hed_jitter(x, self.hed_alpha, self.hed_beta, generator)
        x = stain_mix(x, self.mix, generator)
        if self.colour > 0:
            x = colour_jitter(x, self.colour, generator)
        x = random_grey(x, self.grey_p, generator)
        return random_blur(x, self.blur_p, self.blur_sigma, generator).clamp(0, 255)  # float error at the ends


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
    """Weak (translation + flips/rotations, then ``stain`` when given) and strong (plus colour and
    cutout) views."""

    def __init__(
        self,
        translate_fraction: float,
        hflip: bool,
        vflip: bool,
        rot90: bool,
        seed: int = 0,
        stain: StainAugment | None = None,
    ):
        self.translate_fraction = translate_fraction
        self.hflip, self.vflip, self.rot90 = hflip, vflip, rot90
        self.stain = stain if stain is not None and stain.enabled else None
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
        shift = int(round(self.translate_fraction * x.shape[-1]))
        x = shift_and_flip(x, shift, self.hflip, self.vflip, self.rot90, gen)
        return self.stain(x, gen) if self.stain is not None else x

    def strong(self, x: torch.Tensor) -> torch.Tensor:
        gen = self._generator(x.device)
        x = x.float()
        x = translate(x, int(round(1.5 * self.translate_fraction * x.shape[-1])), gen)
        x = flips_and_rotations(x, True, True, True, gen)
        # Stain colour separates basophils from lymphocytes: jitter it only mildly.
        x = colour_jitter(x, 0.2, gen)
        return cutout(x, x.shape[-1] // 4, gen)
