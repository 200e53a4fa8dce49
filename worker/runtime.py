"""The worker's device: CUDA when there is one, else the CPU."""

from __future__ import annotations

import platform
from functools import lru_cache

import torch


@lru_cache
def device() -> torch.device:
    if torch.cuda.is_available():
        try:
            torch.zeros(1, device="cuda")
            return torch.device("cuda")
        except RuntimeError:  # a driver that is present but unusable: fall back
            pass
    return torch.device("cpu")


def device_name() -> str:
    current = device()
    if current.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(current)})"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def fork_safe_device_name() -> str:
    """What ``device()`` will pick, without initialising CUDA (prefork children need it untouched)."""
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.device_count()} device(s); chosen per worker process)"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
