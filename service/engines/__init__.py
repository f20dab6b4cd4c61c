"""The engines the service runs, as registrations with its worker; and `Call`, the job of the engines that
run named compute functions.

Nothing here imports TensorFlow: the worker imports the factories (`service.engines.factories`) in its
own threads, by the paths below. A new engine is one more entry in `ENGINES` and one factory there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.worker import MAIN_LANE, Worker

FACTORIES = "service.engines.factories"

PLOTS_LANE = "plots"
"""Rendering a figure takes a quarter of a second of matplotlib: in a lane of its own, it never holds up
the TensorFlow jobs queued in the main lane."""
PLOT_QUEUE_LIMIT = 4
"""Renders waiting at most (429 beyond)."""

ENGINES: tuple[tuple[str, str, str], ...] = (
    # (name, factory, lane), built in this order
    ("networks", f"{FACTORIES}:networks", MAIN_LANE),
    ("explanations", f"{FACTORIES}:explanations", MAIN_LANE),
    ("programs", f"{FACTORIES}:programs", MAIN_LANE),
    ("activations", f"{FACTORIES}:activations", MAIN_LANE),
    ("gradient checks", f"{FACTORIES}:gradient_checks", MAIN_LANE),
    ("models", f"{FACTORIES}:models", MAIN_LANE),
    ("plots", f"{FACTORIES}:plots", PLOTS_LANE),
)


@dataclass(frozen=True, slots=True)
class Call:
    """A job of an engine of compute functions: `function(**kwargs)`, `function` named in the engine's table
    (so a route names what runs without importing it)."""

    function: str
    kwargs: Mapping[str, Any]


def install(worker: Worker) -> None:
    """Register the service's engines and their lanes with `worker` (before it starts)."""
    worker.add_lane(
        PLOTS_LANE, PLOT_QUEUE_LIMIT, f"{PLOT_QUEUE_LIMIT} plots are already waiting to be rendered; retry shortly."
    )
    for name, factory, lane in ENGINES:
        worker.register(name, factory, lane)
