"""PNG figures of activations and their local gradients, laid out and labelled as in the seed notebook.

Rendering uses a `Figure` on the Agg canvas, never pyplot: no GUI, no global figure registry. The
themes are applied as explicit colours on each artist instead of through the global rcParams, so
figures can be rendered from several threads at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Any, Literal

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

if TYPE_CHECKING:
    import numpy.typing as npt

    from service.compute.activations import ActivationCurve

Theme = Literal["dark", "light"]

PANEL_INCHES = 4.0
DPI = 100

DISPLAY_NAMES = {
    "linear": "Linear",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "relu": "ReLU",
    "leaky_relu": "Leaky ReLU",
    "elu": "ELU",
    "selu": "SELU",
    "gelu": "GELU",
    "softplus": "Softplus",
    "swish": "Swish",
    "softmax": "Softmax",
    "log_softmax": "Log-softmax",
}
"""Panel titles read '<display name> activation and gradient', as in the seed."""

VALUES_LABEL = "activated score"
GRADIENTS_LABEL = "gradient of activated score"
# softmax couples all z: its curve is the gradient of the summed outputs, not a local derivative
SUMMED_GRADIENTS_LABEL = "gradient of summed scores"
SUMMED_GRADIENT_ACTIVATIONS = frozenset({"softmax", "log_softmax"})


@dataclass(frozen=True)
class _Palette:
    figure_face: str
    axes_face: str
    axes_edge: str
    text: str
    ticks: str
    values_line: str
    gradients_line: str
    legend_face: str
    legend_edge: str


def _palette(style: Mapping[str, Any]) -> _Palette:
    """The colours a matplotlib style gives the artists drawn here; unset keys fall back to the defaults."""

    def setting(key: str) -> Any:
        return style[key] if key in style else matplotlib.rcParamsDefault[key]

    line_colors = setting("axes.prop_cycle").by_key()["color"]
    axes_face = to_hex(setting("axes.facecolor"))
    legend_face = setting("legend.facecolor")
    return _Palette(
        figure_face=to_hex(setting("figure.facecolor")),
        axes_face=axes_face,
        axes_edge=to_hex(setting("axes.edgecolor")),
        text=to_hex(setting("text.color")),
        ticks=to_hex(setting("xtick.color")),
        values_line=to_hex(line_colors[0]),
        gradients_line=to_hex(line_colors[1]),
        legend_face=axes_face if legend_face == "inherit" else to_hex(legend_face),
        legend_edge=to_hex(setting("legend.edgecolor")),
    )


PALETTES: dict[str, _Palette] = {
    "dark": _palette(matplotlib.style.library["dark_background"]),
    "light": _palette({}),
}
"""dark: the seed's `plt.style.use('dark_background')`; light: matplotlib's default style."""


LEGEND_HEADROOM = 0.5
"""Space above the curves, as a fraction of their range, that the legend (upper left) takes: it covers none."""


def plot_activations(curves: Sequence[ActivationCurve], z: npt.ArrayLike, theme: Theme = "dark") -> bytes:
    """A PNG with one panel per curve (two columns up to four panels, three beyond): activation and gradient.

    `z` is the grid the curves were evaluated on (flattened and sorted for drawing); each panel is
    `PANEL_INCHES` square at `DPI`, so four panels make an 800×800 image as in the seed.
    """
    figure = activation_figure(curves, z, theme)
    png = BytesIO()
    # zlib level 1: a quarter of the default level's encoding time for a file about 9% larger
    figure.savefig(png, format="png", dpi=DPI, facecolor=figure.get_facecolor(), pil_kwargs={"compress_level": 1})
    return png.getvalue()


def activation_figure(curves: Sequence[ActivationCurve], z: npt.ArrayLike, theme: Theme = "dark") -> Figure:
    """The figure `plot_activations` renders, on an Agg canvas: one panel (Axes) per curve, in order."""
    if not curves:
        raise ValueError("no activation curves to plot")
    if theme not in PALETTES:
        raise ValueError(f"theme must be one of {', '.join(PALETTES)}, not {theme!r}")
    palette = PALETTES[theme]
    z_axis = np.asarray(z, dtype=np.float64).ravel()
    order = np.argsort(z_axis, kind="stable")

    columns = 1 if len(curves) == 1 else 2 if len(curves) <= 4 else 3
    rows = math.ceil(len(curves) / columns)
    figure = Figure(
        figsize=(PANEL_INCHES * columns, PANEL_INCHES * rows),
        dpi=DPI,
        facecolor=palette.figure_face,
        edgecolor=palette.figure_face,
    )
    FigureCanvasAgg(figure)
    panels = figure.subplots(rows, columns, squeeze=False).ravel()
    for panel, curve in zip(panels, curves, strict=False):
        values = np.asarray(curve.values, dtype=np.float64).ravel()
        gradients = np.asarray(curve.gradients, dtype=np.float64).ravel()
        if values.size != z_axis.size or gradients.size != z_axis.size:
            raise ValueError(f"{curve.name}: {values.size} values for {z_axis.size} points of z")
        gradients_label = SUMMED_GRADIENTS_LABEL if curve.name in SUMMED_GRADIENT_ACTIVATIONS else GRADIENTS_LABEL
        panel.set_facecolor(palette.axes_face)
        panel.plot(z_axis[order], values[order], color=palette.values_line, label=VALUES_LABEL)
        panel.plot(z_axis[order], gradients[order], color=palette.gradients_line, label=gradients_label)
        low, high = _range(values, gradients)
        panel.set_ylim(low - 0.05 * (high - low), high + LEGEND_HEADROOM * (high - low))
        panel.legend(
            loc="upper left",
            facecolor=palette.legend_face,
            edgecolor=palette.legend_edge,
            labelcolor=palette.text,
        )
        panel.set_xlabel("z", color=palette.text)
        title = DISPLAY_NAMES.get(curve.name, curve.name)
        panel.set_title(f"{title} activation and gradient", color=palette.text)
        panel.tick_params(colors=palette.ticks, labelcolor=palette.text)
        for spine in panel.spines.values():
            spine.set_edgecolor(palette.axes_edge)
    for unused in panels[len(curves) :]:
        figure.delaxes(unused)
    figure.tight_layout()
    return figure


def _range(*curves: np.ndarray) -> tuple[float, float]:
    """The lowest and highest finite value of the curves; a span of 1 around a constant."""
    finite = np.concatenate([curve[np.isfinite(curve)] for curve in curves])
    if finite.size == 0:
        return -1.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    return (low, high) if high > low else (low - 0.5, high + 0.5)
