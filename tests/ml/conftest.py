import numpy as np
import pytest
import torch

# One thread: the test machine is shared, and oversubscribed OpenMP threads slow down badly.
torch.set_num_threads(1)

CLASS_NAMES = ["red_disc", "green_square", "blue_ring", "purple_cross", "orange_bar"]


def synthetic_cells(n_per_class: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Five classes of generated 'cells': a coloured shape per class on a pale background,
    at a random position and scale, with pixel noise and brightness jitter."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    colours = np.array([[200, 40, 40], [40, 170, 60], [50, 60, 200], [140, 50, 160], [230, 140, 30]], np.float32)
    images, labels = [], []
    for c in range(5):
        for _ in range(n_per_class):
            cy, cx = rng.uniform(0.35, 0.65, 2) * size
            r = rng.uniform(0.18, 0.28) * size
            dy, dx = np.abs(yy - cy), np.abs(xx - cx)
            dist = np.sqrt(dy**2 + dx**2)
            if c == 0:
                mask = dist < r
            elif c == 1:
                mask = (dy < r * 0.8) & (dx < r * 0.8)
            elif c == 2:
                mask = (dist < r) & (dist > r * 0.55)
            elif c == 3:
                mask = ((dy < r * 0.25) & (dx < r)) | ((dx < r * 0.25) & (dy < r))
            else:
                mask = (dy < r * 0.3) & (dx < r * 1.1)
            img = np.full((size, size, 3), 235.0, np.float32)
            img[mask] = colours[c] * rng.uniform(0.85, 1.15)
            img += rng.normal(0, 12, img.shape)
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            labels.append(c)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.long)


@pytest.fixture(scope="session")
def cells():
    """The generator of synthetic cells, as a fixture (tests/ml is not a package)."""
    return synthetic_cells


@pytest.fixture(scope="session")
def class_names():
    return list(CLASS_NAMES)
