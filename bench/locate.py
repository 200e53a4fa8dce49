"""``leukolab bench locate``: the locator against BCCD-style WBC boxes (JPEGImages/ + wbc_boxes.json)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from scipy.optimize import linear_sum_assignment

from ml.locate import Box, LocateConfig, locate_cells, read_field

IOU_MATCH = 0.5


def load_truth(data_dir: Path) -> dict[str, list[Box]]:
    """The WBC boxes per image, converted from VOC (1-based, inclusive) to 0-based, end-exclusive."""
    raw = json.loads((data_dir / "wbc_boxes.json").read_text())
    return {name: [(x0 - 1, y0 - 1, x1, y1) for x0, y0, x1, y1 in entry["wbc"]] for name, entry in sorted(raw.items())}


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def match(found: list[Box], truth: list[Box]) -> list[tuple[int, int, float]]:
    """One-to-one matches (found index, truth index, IoU) at IoU >= 0.5, maximising the total IoU."""
    if not found or not truth:
        return []
    scores = np.array([[iou(f, t) for t in truth] for f in found])
    rows, cols = linear_sum_assignment(-scores)
    return [(int(r), int(c), float(scores[r, c])) for r, c in zip(rows, cols, strict=True) if scores[r, c] >= IOU_MATCH]


def evaluate(data_dir: Path, config: LocateConfig | None = None, *, names: list[str] | None = None) -> dict:
    """Locate cells in every field and score them against the boxes; timings with and without decoding."""
    config = config or LocateConfig()
    truth = load_truth(data_dir)
    names = names if names is not None else list(truth)
    images = {}
    start = time.perf_counter()
    for name in names:
        images[name] = read_field(data_dir / "JPEGImages" / name, config)
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    found = {name: locate_cells(images[name], config, field=name) for name in names}
    locate_s = time.perf_counter() - start
    tp = n_found = n_truth = centre_inside = 0
    ious: list[float] = []
    per_field = []
    for name in names:
        boxes = [cell.box for cell in found[name]]
        pairs = match(boxes, truth[name])
        tp += len(pairs)
        n_found += len(boxes)
        n_truth += len(truth[name])
        ious += [score for _, _, score in pairs]
        for cell in found[name]:
            cx, cy = cell.centre
            centre_inside += any(t[0] <= cx < t[2] and t[1] <= cy < t[3] for t in truth[name])
        per_field.append(
            {
                "field": name,
                "truth": truth[name],
                "found": boxes,
                "matched": len(pairs),
                "min_iou": min([score for _, _, score in pairs], default=None),
                "errors": len(boxes) - len(pairs) + len(truth[name]) - len(pairs),
            }
        )
    precision = tp / n_found if n_found else 1.0
    recall = tp / n_truth if n_truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n_fields": len(names),
        "n_truth": n_truth,
        "n_found": n_found,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "mean_iou": float(np.mean(ious)) if ious else 0.0,
        "crop_centre_in_true_box": centre_inside / n_found if n_found else 1.0,
        "fields_per_s": len(names) / locate_s,
        "fields_per_s_with_decode": len(names) / (locate_s + decode_s),
        "decode_fields_per_s": len(names) / decode_s,
        "config": asdict(config),
        "per_field": per_field,
    }


def locate_command(
    data: Annotated[Path, typer.Option("--data", help="folder with JPEGImages/ and wbc_boxes.json (like BCCD)")],
    json_out: Annotated[Path, typer.Option("--json", help="where to write the JSON report")],
    um_per_px: Annotated[float, typer.Option(help="pixel size of the fields in µm")] = LocateConfig.um_per_px,
) -> None:
    """Locate WBCs in smear fields and score them against the true boxes (IoU >= 0.5)."""
    if not (data / "wbc_boxes.json").is_file() or not (data / "JPEGImages").is_dir():
        typer.secho(f"error: {data} has no wbc_boxes.json and JPEGImages/", err=True, fg=typer.colors.RED)
        raise typer.Exit(2)
    report = evaluate(data, LocateConfig(um_per_px=um_per_px))
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(report, indent=1))
    typer.echo(
        " ".join(
            f"{key}={report[key]:.3f}"
            for key in ("precision", "recall", "f1", "mean_iou", "crop_centre_in_true_box", "fields_per_s")
        )
        + f" n_fields={report['n_fields']}"
    )


def hardest_fields_figure(report: dict, data_dir: Path, out_png: Path, n: int = 6) -> list[str]:
    """Draw the ``n`` fields with the most errors (then the lowest IoU): true boxes green, found red."""
    from PIL import Image, ImageDraw

    fields = sorted(report["per_field"], key=lambda f: (-f["errors"], f["min_iou"] if f["min_iou"] is not None else 0))
    chosen = fields[:n]
    sheet = Image.new("RGB", (3 * 320, ((len(chosen) + 2) // 3) * 260), "white")
    for i, entry in enumerate(chosen):
        image = Image.open(data_dir / "JPEGImages" / entry["field"]).convert("RGB")
        draw = ImageDraw.Draw(image)
        for box in entry["truth"]:
            draw.rectangle(tuple(box), outline=(0, 200, 0), width=5)
        for box in entry["found"]:
            draw.rectangle(tuple(box), outline=(230, 0, 0), width=3)
        draw.text((6, 6), entry["field"], fill=(0, 0, 0))
        sheet.paste(image.resize((316, 237)), ((i % 3) * 320, (i // 3) * 260))
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    return [entry["field"] for entry in chosen]
