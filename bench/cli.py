"""The benchmark commands: ``leukolab bench ssl|throughput|active|locate|transfer`` (the leukolab CLI registers
them; ``review`` and ``pack`` only here), and ``python -m bench.cli`` to run them without the rest of leukolab.

torch is imported inside the commands, so that importing this module stays cheap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from bench.active import bench_active
from bench.locate import locate_command as locate
from bench.ood import ood_command as ood
from bench.pack import pack_command as pack
from bench.pretrain import pretrain_command as pretrain
from bench.review import review_command as review
from bench.ssl import ssl, write_json
from bench.transfer import transfer_command as transfer


def throughput(
    json_out: Annotated[Path | None, typer.Option("--json", help="write the results here")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="an ImageFolder; default: generated images")] = None,
    profile: Annotated[str, typer.Option("--profile")] = "cpu",
    steps: Annotated[int, typer.Option("--steps", help="timed training steps per loop")] = 40,
    images: Annotated[int, typer.Option("--images", help="images to load for the leukolab loop")] = 2000,
    reference_workers: Annotated[
        int, typer.Option("--reference-workers", help="DataLoader workers of the reference")
    ] = 0,
) -> dict:
    """Training and inference images/s: leukolab's loop against torchvision ImageFolder +
    DataLoader + per-image PIL transforms, same model, same process."""
    from bench.throughput import measure

    out = measure(data=data, profile=profile, steps=steps, images=images, reference_workers=reference_workers)
    typer.echo(json.dumps(out, indent=2))
    if json_out is not None:
        write_json(json_out, out)
    return out


app = typer.Typer(help="leukolab benchmarks (standalone)", no_args_is_help=True, add_completion=False)
app.command("ssl")(ssl)
app.command("throughput")(throughput)
app.command("active")(bench_active)
app.command("locate")(locate)
app.command("review")(review)
app.command("ood")(ood)
app.command("transfer")(transfer)
app.command("pack")(pack)
app.command("pretrain")(pretrain)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
