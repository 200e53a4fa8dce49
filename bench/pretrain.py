"""``leukolab bench pretrain``: self-supervised pre-training (``ml.selfsup``) on a data set's train split less
its validation cells, labels unread, for ``bench ssl --init``. One pre-training serves every seed of the
labelled draw: it never sees which cells those are, nor their labels."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer


def pretrain_command(
    data: Annotated[Path, typer.Option("--data", help="ImageFolder with MANIFEST.csv (train/test split)")],
    out: Annotated[Path, typer.Option("--out", help="write the checkpoint (no classes) here")],
    profile: Annotated[str, typer.Option("--profile", help="the network of this training profile")] = "cpu",
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="passes over the cells")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=2, help="cells a step, two views each")] = None,
    lr: Annotated[float | None, typer.Option("--lr", min=0.0)] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", min=0.01)] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    extra_classes: Annotated[
        Path | None, typer.Option("--extra-classes", help="also the train cells of bench ssl's extra classes")
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch.set_num_threads")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the run's record here")] = None,
) -> dict:
    """Pre-train the profile's network without labels on the train split less the validation cells (options
    left out: ``ml.selfsup.SelfSupConfig``'s defaults)."""
    import torch

    from bench.ssl import extra_class_rows, names_with_extra, with_extra, write_json
    from ml.checkpoint import save_checkpoint
    from ml.config import make_config
    from ml.data import load_manifest_split, train_precision
    from ml.device import device_name, pick_device
    from ml.selfsup import SelfSupConfig, SelfSupProgress, pretrain
    from ml.train import fresh_model_config

    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    config = make_config(profile)
    train_set = load_manifest_split(data, "train", config.image_size, class_names=names_with_extra(data, extra_classes))
    if extra_classes is not None:
        rows = extra_class_rows(extra_classes, train_set.class_names)
        train_set = with_extra(train_set, extra_classes, *rows["train"], config.image_size)
    images = train_set.x
    model_config = fresh_model_config(config, len(train_set.class_names), images)
    device = pick_device()
    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "temperature": temperature}
    ssl_config = SelfSupConfig(
        cpu_bf16=config.cpu_bf16, seed=seed, **{key: value for key, value in given.items() if value is not None}
    )

    def on_progress(p: SelfSupProgress) -> None:
        if p.step == p.steps:
            elapsed = time.perf_counter() - started
            typer.echo(f"[{elapsed:6.0f} s] epoch {p.epoch}/{p.epochs} loss {p.loss:.3f}", err=True)

    checkpoint = pretrain(images, model_config, ssl_config, device, on_progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, checkpoint)
    record = {
        "dataset": str(data),
        "extra_classes": str(extra_classes) if extra_classes is not None else None,
        "profile": profile,
        "n_images": int(len(images)),
        "config": checkpoint["selfsup_config"],
        "history": checkpoint["history"],
        "wall_seconds": time.perf_counter() - started,
        "device": device_name(device),
        "train_precision": train_precision(device, ssl_config.cpu_bf16),
        "threads": torch.get_num_threads(),
        "checkpoint": str(out),
    }
    typer.echo(f"pre-trained on {len(images)} cells in {record['wall_seconds']:.0f} s: {out}")
    if json_out is not None:
        write_json(json_out, record)
    return record
