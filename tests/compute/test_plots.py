"""The activation figure: a real PNG of the seed's layout, in either theme, safe to render from threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from matplotlib.path import Path
from PIL import Image

from service.compute.activations import ActivationCurve, GradientSummary
from service.compute.plots import activation_figure, plot_activations

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
Z = np.linspace(-10.0, 10.0, 129)
# first two colours of the dark_background style's cycle and of matplotlib's default one
DARK_LINES = [(0x8D, 0xD3, 0xC7), (0xFE, 0xFF, 0xB3)]
LIGHT_LINES = [(0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)]


def _curve(name: str, z: npt.NDArray[np.float64]) -> ActivationCurve:
    """Closed-form curves built here, so the figure is tested without the tape."""
    sigmoid = 1.0 / (1.0 + np.exp(-z))
    curves = {
        "sigmoid": (sigmoid, sigmoid * (1.0 - sigmoid)),
        "tanh": (np.tanh(z), 1.0 - np.tanh(z) ** 2),
        "relu": (np.maximum(z, 0.0), (z > 0).astype(np.float64)),
        "leaky_relu": (np.where(z > 0, z, 0.01 * z), np.where(z > 0, 1.0, 0.01)),
        "softmax": (np.exp(z) / np.exp(z).sum(), np.zeros_like(z)),
    }
    values, gradients = curves[name]
    summary = GradientSummary(
        max_abs_gradient=float(np.abs(gradients).max()),
        argmax_z=float(z[np.argmax(np.abs(gradients))]),
        fraction_attenuating=float(np.mean(np.abs(gradients) < 1.0)),
        fraction_saturated=float(np.mean(np.abs(gradients) < 1e-3)),
        amplifies=False,
        verdict="",
    )
    return ActivationCurve(name=name, values=values, gradients=gradients, summary=summary)


SEED_CURVES = [_curve(name, Z) for name in ("sigmoid", "tanh", "relu", "leaky_relu")]


def _pixels(png: bytes) -> npt.NDArray[np.uint8]:
    with Image.open(BytesIO(png)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def _count_near(pixels: npt.NDArray[np.uint8], colour: tuple[int, int, int]) -> int:
    distance = np.abs(pixels.astype(np.int16) - np.array(colour, dtype=np.int16)).max(axis=-1)
    return int(np.count_nonzero(distance <= 8))


@pytest.fixture(scope="module")
def seed_pngs() -> dict[str, bytes]:
    return {theme: plot_activations(SEED_CURVES, Z, theme=theme) for theme in ("dark", "light")}


def test_four_panels_make_a_seed_sized_png_in_both_themes(seed_pngs: dict[str, bytes]) -> None:
    for png in seed_pngs.values():
        assert png.startswith(PNG_SIGNATURE)
        assert _pixels(png).shape == (800, 800, 3)


def test_dark_theme_is_the_dark_background_style(seed_pngs: dict[str, bytes]) -> None:
    dark, light = _pixels(seed_pngs["dark"]), _pixels(seed_pngs["light"])
    assert seed_pngs["dark"] != seed_pngs["light"]
    assert dark.mean() < light.mean()
    assert dark.mean() < 40
    assert light.mean() > 215
    np.testing.assert_array_equal(dark[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(light[0, 0], [255, 255, 255])
    for colour in DARK_LINES:
        assert _count_near(dark, colour) > 500
        assert _count_near(light, colour) == 0
    for colour in LIGHT_LINES:
        assert _count_near(light, colour) > 500
        assert _count_near(dark, colour) == 0


@pytest.mark.parametrize(
    ("names", "size"),
    [(["sigmoid"], (400, 400)), (["sigmoid", "tanh", "relu", "leaky_relu", "softmax"], (800, 1200))],
)
def test_panels_are_laid_out_in_a_grid(names: list[str], size: tuple[int, int]) -> None:
    png = plot_activations([_curve(name, Z) for name in names], Z, theme="light")
    assert _pixels(png).shape == (*size, 3)


def test_the_grid_order_of_z_does_not_matter() -> None:
    z = np.linspace(-4.0, 4.0, 33)
    shuffled = np.random.default_rng(7).permutation(z.size)
    in_order = plot_activations([_curve("tanh", z)], z)
    out_of_order = plot_activations([_curve("tanh", z[shuffled])], z[shuffled])
    assert in_order == out_of_order


def test_threads_rendering_both_themes_at_once_get_the_sequential_images(seed_pngs: dict[str, bytes]) -> None:
    themes = ["dark", "light", "dark", "light"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        rendered = list(pool.map(lambda theme: plot_activations(SEED_CURVES, Z, theme=theme), themes))
    for theme, png in zip(themes, rendered, strict=True):
        assert png == seed_pngs[theme]


def test_bad_input_is_rejected() -> None:
    unknown_theme: Any = "sepia"
    with pytest.raises(ValueError, match="no activation curves"):
        plot_activations([], Z)
    with pytest.raises(ValueError, match="theme"):
        plot_activations(SEED_CURVES, Z, theme=unknown_theme)
    with pytest.raises(ValueError, match="129 values for 64 points"):
        plot_activations(SEED_CURVES, Z[:64])


@pytest.mark.parametrize("theme", ["dark", "light"])
@pytest.mark.parametrize("names", [["sigmoid", "tanh", "relu", "leaky_relu"], ["tanh"], ["softmax", "relu", "tanh"]])
def test_no_legend_covers_a_curve(names: list[str], theme: Any) -> None:
    # where the renderer puts each legend box and each curve, in pixels of the drawn figure
    figure = activation_figure([_curve(name, Z) for name in names], Z, theme=theme)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    panels = figure.get_axes()
    assert len(panels) == len(names)
    for panel, name in zip(panels, names, strict=True):
        legend = panel.get_legend()
        assert legend is not None
        box = legend.get_window_extent(renderer)
        assert panel.get_window_extent(renderer).contains(box.x0 + 1, box.y0 + 1)  # inside its panel
        lines = panel.get_lines()
        assert len(lines) == 2
        for line in lines:
            drawn = Path(panel.transData.transform(line.get_xydata()))
            # neither a point nor a segment between points crosses the box
            assert not drawn.intersects_bbox(box, filled=False), (name, line.get_label())
            assert not box.count_contains(drawn.vertices), (name, line.get_label())
