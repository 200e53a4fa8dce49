"""Pictures for the admin pages: training curves as inline SVG (they redraw on every poll) and
the confusion matrix as a matplotlib PNG. matplotlib is fine in the web process; torch is not."""

from __future__ import annotations

import io
import math

from markupsafe import Markup, escape


def curve_svg(
    history: list[dict],
    key: str,
    *,
    title: str,
    width: int = 320,
    height: int = 140,
    y_range: tuple[float, float] | None = None,
) -> Markup:
    """A small line chart of ``history[i][key]`` against the epoch, as an ``<svg>`` element."""
    points = [(h.get("epoch"), h.get(key)) for h in history or []]
    points = [(float(x), float(y)) for x, y in points if x is not None and y is not None and math.isfinite(y)]
    pad_l, pad_r, pad_t, pad_b = 38, 8, 18, 20
    body = [
        f'<text x="{pad_l}" y="12" class="chart-title">{escape(title)}</text>',
        f'<rect x="{pad_l}" y="{pad_t}" width="{width - pad_l - pad_r}" height="{height - pad_t - pad_b}" '
        'fill="none" stroke="#ccd"/>',
    ]
    if points:
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        x0, x1 = min(xs), max(xs)
        y0, y1 = y_range if y_range else (min(ys), max(ys))
        if x1 == x0:
            x0, x1 = x0 - 1, x1 + 1
        if y1 == y0:
            y0, y1 = y0 - 0.5, y1 + 0.5

        def sx(x: float) -> float:
            return pad_l + (x - x0) / (x1 - x0) * (width - pad_l - pad_r)

        def sy(y: float) -> float:
            return height - pad_b - (y - y0) / (y1 - y0) * (height - pad_t - pad_b)

        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        body += [
            f'<polyline points="{line}" fill="none" stroke="#6a3fb5" stroke-width="2"/>',
            *(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="#6a3fb5"/>' for x, y in points),
            f'<text x="{pad_l - 4}" y="{pad_t + 8}" text-anchor="end" class="chart-tick">{y1:.3g}</text>',
            f'<text x="{pad_l - 4}" y="{height - pad_b}" text-anchor="end" '
            f'class="chart-tick">{y0:.3g}</text>',
            f'<text x="{pad_l}" y="{height - 4}" class="chart-tick">epoch {x0:g}</text>',
            f'<text x="{width - pad_r}" y="{height - 4}" text-anchor="end" class="chart-tick">{x1:g}</text>',
        ]
    else:
        body.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" '
            'class="chart-tick">no data yet</text>'
        )
    return Markup(
        f'<svg class="chart" data-key="{escape(key)}" data-points="{len(points)}" '
        f'width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">{"".join(body)}</svg>'
    )


def confusion_png(confusion: list[list[int]], class_names: list[str], title: str = "") -> bytes:
    """A heatmap of the confusion matrix (rows: true class, columns: predicted), as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.figure import Figure

    matrix = np.asarray(confusion, dtype=float)
    n = len(class_names)
    figure = Figure(figsize=(1.1 + 0.75 * n, 0.9 + 0.7 * n), dpi=100)
    axes = figure.add_subplot()
    rows = matrix.sum(axis=1, keepdims=True)
    shade = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    axes.imshow(shade, cmap="Purples", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            axes.text(
                j,
                i,
                f"{int(matrix[i, j])}",
                ha="center",
                va="center",
                color="white" if shade[i, j] > 0.6 else "black",
                fontsize=9,
            )
    axes.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(n), class_names, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if title:
        axes.set_title(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
