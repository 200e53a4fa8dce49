"""The device to train and predict on, and its name as benchmark reports and runs record it.

``docs/results/*.json`` hold names in ``device_name``'s format and ``scripts/make_results.py``
reads the vector unit back, so the format stays as it is. torch is imported inside the
functions: the results script reads ``CPU_VECTOR_UNITS`` without it.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# The vector unit a CPU device string names in brackets (with native bf16, without): two CPUs
# with one model name can differ 4x per step. scripts/make_results.py reads it back.
CPU_VECTOR_UNITS = ("AVX-512 BF16", "no native bf16")


@functools.cache
def pick_device() -> torch.device:
    """CUDA when there is a usable one, else the CPU (asked once per process)."""
    import torch

    if torch.cuda.is_available():
        try:
            torch.zeros(1, device="cuda")
            return torch.device("cuda")
        except RuntimeError:  # a driver that is present but unusable: fall back
            pass
    return torch.device("cpu")


@functools.cache
def cpu_has_bf16() -> bool:
    """True where oneDNN runs bf16 natively on this CPU (AVX-512 BF16 or AMX); asked once, as
    ``autocast`` runs on every training step."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_model() -> str:
    """The CPU's model name (Linux), else the machine type: timings differ several-fold by CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_name() -> str:
    """``cpu: MODEL (VECTOR UNIT), N threads``."""
    import torch

    unit = CPU_VECTOR_UNITS[0] if cpu_has_bf16() else CPU_VECTOR_UNITS[1]
    return f"cpu: {cpu_model()} ({unit}), {torch.get_num_threads()} threads"


def device_name(device: torch.device | None = None) -> str:
    """``cuda: NAME`` or ``cpu: MODEL (VECTOR UNIT), N threads``; default: ``pick_device()``'s."""
    import torch

    device = pick_device() if device is None else device
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return cpu_name()


def fork_safe_device_name() -> str:
    """What ``pick_device()`` will pick, without initialising CUDA (prefork children need it untouched)."""
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.device_count()} device(s), chosen per worker process"
    return cpu_name()
