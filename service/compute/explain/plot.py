"""The PNG of an explanation: one horizontal bar chart of attributions per instance, as the activation plot
is drawn (a `Figure` on the Agg canvas, explicit colours, no pyplot)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from io import BytesIO

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from service.compute.explain.prepare import Array
from service.compute.plots import DPI, PALETTES, Theme

METHOD_TITLES = {
    "integrated_gradients": "Integrated gradients",
    "saliency": "Saliency",
    "gradient_x_input": "Gradient × input",
    "smoothgrad": "SmoothGrad",
}
POSITIVE = "#d62728"
"""Bars that push the explained class's output up."""
NEGATIVE = "#1f77b4"
"""Bars that pull it down."""


def plot_attributions(
    attributions: Array,
    names: Sequence[str],
    classes: Sequence[int],
    predictions: Sequence[float],
    *,
    method: str,
    deltas: Sequence[float] | None = None,
    theme: Theme = "dark",
) -> bytes:
    """A PNG with one panel per row of `attributions` (instances × features): a bar per feature."""
    rows = np.asarray(attributions, dtype=np.float64).reshape(len(classes), -1)
    palette = PALETTES[theme]
    panels = len(rows)
    columns = 1 if panels == 1 else 2 if panels <= 4 else 4
    grid_rows = math.ceil(panels / columns)
    height = max(2.4, 0.9 + 0.32 * len(names))
    figure = Figure(figsize=(6.0 * columns, height * grid_rows), dpi=DPI, facecolor=palette.figure_face)
    FigureCanvasAgg(figure)
    axes = figure.subplots(grid_rows, columns, squeeze=False).ravel()
    positions = np.arange(len(names))
    for n, (panel, values) in enumerate(zip(axes, rows, strict=False)):
        panel.set_facecolor(palette.axes_face)
        panel.barh(positions, values, color=[POSITIVE if v >= 0 else NEGATIVE for v in values])
        panel.axvline(0.0, color=palette.axes_edge, linewidth=0.8)
        panel.set_yticks(positions, labels=list(names))
        panel.invert_yaxis()  # the first feature on top, as the request lists them
        title = f"instance {n}: class {classes[n]} (F = {predictions[n]:.4g})"
        if deltas is not None:
            title += f", δ = {deltas[n]:.2g}"
        panel.set_title(title, color=palette.text, fontsize=10)
        panel.set_xlabel(f"{METHOD_TITLES.get(method, method)} attribution", color=palette.text)
        panel.tick_params(colors=palette.ticks, labelcolor=palette.text)
        for spine in panel.spines.values():
            spine.set_edgecolor(palette.axes_edge)
    for unused in axes[panels:]:
        figure.delaxes(unused)
    figure.tight_layout()
    png = BytesIO()
    figure.savefig(png, format="png", dpi=DPI, facecolor=palette.figure_face, pil_kwargs={"compress_level": 1})
    return png.getvalue()
