"""The device to train and predict on, and its name as benchmark reports and runs record it.

``docs/results/*.json`` hold names in ``device_name``'s format and ``scripts/make_results.py``
reads the vector unit back, so the format stays as it is. torch is imported inside the
functions: the results script reads ``CPU_VECTOR_UNITS`` without it.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# The unit a CPU device string names in brackets (bf16 matrix tiles, bf16 vectors, neither): two
# CPUs with one model name can differ 4x per step. scripts/make_results.py reads it back.
CPU_VECTOR_UNITS = ("AMX BF16", "AVX-512 BF16", "no native bf16")


@functools.cache
def pick_device(requested: str | torch.device | None = None) -> torch.device:
    """``requested`` where a caller names a device; else CUDA when there is a usable one, else the CPU (asked once
    per process)."""
    import torch

    if requested is not None:
        return torch.device(requested)
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


# bf16 must train at least this much faster than float32 to be used (cpu_bf16_pays).
BF16_MIN_SPEEDUP = 1.1


@functools.cache
def cpu_bf16_pays() -> bool:
    """Whether bf16 autocast is worth it for training on this CPU: native bf16 (``cpu_has_bf16``)
    and measured faster than float32 (``bf16_speedup`` >= ``BF16_MIN_SPEEDUP``). Native is not
    enough: a Zen 4 EPYC trained 1.5-1.8x faster in bf16, while an Intel Xeon with AVX-512 BF16 but
    no AMX gained nothing (``bench throughput`` on a quiet machine: 288 against 282 images/s), so
    there float32 keeps its precision at no cost. Measured once per process, at the first training
    step that asks. ``LEUKOLAB_CPU_BF16=on`` skips the measurement and uses native bf16 even where it
    is slower (to rerun a bf16 benchmark seed for seed on such a CPU), ``off`` never uses it."""
    choice = os.environ.get("LEUKOLAB_CPU_BF16", "auto").strip().lower()
    if choice not in ("auto", "on", "off"):
        raise ValueError(f"LEUKOLAB_CPU_BF16={choice!r}: use auto, on or off")
    if choice == "off" or not cpu_has_bf16():
        return False
    return choice == "on" or bf16_speedup() >= BF16_MIN_SPEEDUP


def bf16_speedup(batch: int = 40, repeats: int = 5) -> float:
    """float32 time over bf16 time of one training step (forward, backward, SGD) of the cpu
    profile's network on a batch of ``batch`` 64 px images: the best of ``repeats`` interleaved
    tries each, after one warm-up (3-7 s on a 2-core machine). On the Xeon above three probes gave
    0.74-0.89 on a quiet machine and 0.75-1.01 beside a benchmark: noisy, yet on the same side of the bar."""
    import time

    import torch
    import torch.nn.functional as F

    from ml.model import ModelConfig, build_model

    generator = torch.Generator().manual_seed(0)
    model = build_model(ModelConfig(n_classes=5, width=0.25, image_size=64)).to(memory_format=torch.channels_last)
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 3, 64, 64, generator=generator).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (batch,), generator=generator)

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return time.perf_counter() - start

    step(False), step(True)
    best = {False: float("inf"), True: float("inf")}
    for _ in range(repeats):
        for bf16 in (False, True):
            best[bf16] = min(best[bf16], step(bf16))
    return best[False] / best[True]


def _cpuinfo(field: str) -> str | None:
    """The first value of ``field`` in Linux's ``/proc/cpuinfo``; None elsewhere or when absent."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return None


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    return frozenset((_cpuinfo("flags") or "").split())


def cpu_model() -> str:
    """The CPU's model name (Linux), else the machine type: timings differ several-fold by CPU."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_name() -> str:
    """``cpu: MODEL (VECTOR UNIT), N threads``."""
    import torch

    if not cpu_has_bf16():
        unit = CPU_VECTOR_UNITS[2]
    else:
        unit = CPU_VECTOR_UNITS[0] if "amx_bf16" in cpu_flags() else CPU_VECTOR_UNITS[1]
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
