"""Images per second: leukolab's loop against a plain torchvision reference, same model.

The reference is the textbook pipeline: ``ImageFolder`` + ``DataLoader`` + per-image PIL
transforms (resize, random translation, flips), an NCHW model in float32. leukolab decodes
the images once into a uint8 tensor (timed separately, as ``decode_seconds``), augments whole
batches on tensors and runs the model channels_last, under bf16 autocast on CUDA, and on a CPU
with native bf16 where the profile sets ``cpu_bf16`` (the cpu profile does). The loop is timed
both in float32 and, where the CPU has native bf16, in bf16; ``train`` is the profile's own.
``leukolab bench throughput`` (bench.cli) runs it.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def _synthetic_folder(root: Path, per_class: int = 80, size: int = 128) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(5):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(img).save(folder / f"{i}.jpg", quality=95)
    return root


def _timed(fn, steps: int, warmup: int = 3) -> float:
    """Seconds for ``steps`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return time.perf_counter() - start


def measure(
    data: Path | None = None, profile: str = "cpu", steps: int = 40, images: int = 2000, reference_workers: int = 0
) -> dict:
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision.transforms import v2

    from ml.augment import Augmenter
    from ml.config import make_config
    from ml.data import autocast, load_image_folder, uses_bf16
    from ml.device import cpu_has_bf16, device_name, pick_device
    from ml.infer import predict
    from ml.model import ModelConfig, build_model

    device = pick_device()
    config = make_config(profile, "supervised")
    size = config.image_size
    tmp = None
    if data is None:
        tmp = tempfile.TemporaryDirectory()
        data = _synthetic_folder(Path(tmp.name))
    torch.manual_seed(0)
    model_config = ModelConfig(n_classes=5, arch=config.arch, width=config.width, image_size=size)
    base = build_model(model_config)
    batch = config.batch_size
    lr_kwargs = dict(lr=config.lr, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay)

    # --- leukolab: decode once, tensors on the device, batched augmentation, channels_last
    start = time.perf_counter()
    folder = load_image_folder(data, size)
    keep = torch.randperm(len(folder.y), generator=torch.Generator().manual_seed(0))[:images]
    x_all, y_all = folder.x[keep].to(device), folder.y[keep].to(device)
    decode_seconds = time.perf_counter() - start
    ours = copy.deepcopy(base).to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(ours.parameters(), **lr_kwargs)
    augment = Augmenter(config.translate, config.hflip, config.vflip, config.rot90)
    gen = torch.Generator().manual_seed(0)

    def our_step(cpu_bf16: bool) -> None:
        idx = torch.randint(0, len(y_all), (batch,), generator=gen).to(device)
        x = augment.weak(x_all[idx]).contiguous(memory_format=torch.channels_last)
        with autocast(device, cpu_bf16):
            loss = F.cross_entropy(ours(x).float(), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # float32, and bf16 where this CPU has it natively; the profile's setting picks ``train``
    our_train_fp32 = batch * steps / _sync(_timed, lambda: our_step(False), steps, device)
    our_train_bf16 = None
    if device.type == "cpu" and cpu_has_bf16():
        our_train_bf16 = batch * steps / _sync(_timed, lambda: our_step(True), steps, device)
    # what training itself uses: bf16 only where it is also measured faster (ml.device.cpu_bf16_pays)
    configured_bf16 = uses_bf16(device, config.cpu_bf16)
    our_train = our_train_bf16 if configured_bf16 and our_train_bf16 is not None else our_train_fp32
    n_infer = min(len(x_all), 2048)
    infer_start = time.perf_counter()
    predict(ours, x_all[:n_infer], batch_size=256)
    _sync_device(device)
    our_infer = n_infer / (time.perf_counter() - infer_start)

    # --- reference: ImageFolder + DataLoader + per-image PIL transforms, NCHW float32
    shift = config.translate
    train_tf = v2.Compose(
        [
            v2.Resize(size),
            v2.RandomAffine(degrees=0, translate=(shift, shift)),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.PILToTensor(),
        ]
    )
    ref_set = datasets.ImageFolder(str(data), transform=train_tf)
    loader = DataLoader(ref_set, batch_size=batch, shuffle=True, num_workers=reference_workers, drop_last=True)
    reference = copy.deepcopy(base).to(device).train()
    ref_opt = torch.optim.SGD(reference.parameters(), **lr_kwargs)
    batches = iter(loader)

    def ref_step() -> None:
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(reference(x), y)
        ref_opt.zero_grad(set_to_none=True)
        loss.backward()
        ref_opt.step()

    ref_train = batch * steps / _sync(_timed, ref_step, steps, device)
    eval_set = datasets.ImageFolder(str(data), transform=v2.Compose([v2.Resize(size), v2.PILToTensor()]))
    eval_set.samples = eval_set.samples[:n_infer]
    eval_loader = DataLoader(eval_set, batch_size=256, num_workers=reference_workers)
    reference.eval()
    infer_start = time.perf_counter()
    with torch.no_grad():
        for x, _ in eval_loader:
            reference(x.to(device)).softmax(dim=1).cpu()
    _sync_device(device)
    ref_infer = n_infer / (time.perf_counter() - infer_start)
    if tmp is not None:
        tmp.cleanup()

    return {
        "train": {"leukolab": our_train, "reference": ref_train},
        "inference": {"leukolab": our_infer, "reference": ref_infer},
        "train_speedup": our_train / ref_train,
        "train_precision": "bf16" if configured_bf16 else "float32",
        "train_fp32": {"leukolab": our_train_fp32, "speedup": our_train_fp32 / ref_train},
        "train_bf16": None
        if our_train_bf16 is None
        else {"leukolab": our_train_bf16, "speedup": our_train_bf16 / ref_train, "cpu_bf16": True},
        "inference_speedup": our_infer / ref_infer,
        "device": device_name(device),
        "torch": torch.__version__,
        "model": {"arch": config.arch, "width": config.width, "image_size": size, "batch_size": batch},
        "steps": steps,
        "data": str(data) if tmp is None else "generated 128 px JPEGs",
        "leukolab_decode_seconds": decode_seconds,
        "leukolab_images_decoded": len(folder.y),
        "reference_workers": reference_workers,
    }


def _sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _sync(timed, fn, steps: int, device: torch.device) -> float:
    def wrapped() -> None:
        fn()
        _sync_device(device)

    return timed(wrapped, steps)
