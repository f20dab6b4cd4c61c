"""The engines' factories: the compute classes and functions, adapted to the worker's `Engine` protocol.

Imported by the worker in its lanes' threads only (by the paths in `service.engines.ENGINES`): this
module loads TensorFlow and matplotlib when it is imported.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from service.compute.activations import evaluate_activations
from service.compute.explain.engine import ExplainEngine
from service.compute.explain.plot import plot_attributions
from service.compute.gradcheck.model import check_model
from service.compute.gradcheck.network import check_network
from service.compute.gradcheck.tape import check_tape
from service.compute.models.engine import ModelsEngine
from service.compute.networks import NetworkProblem
from service.compute.networks.engine import NetworkEngine
from service.compute.plots import plot_activations
from service.compute.program.ops import list_ops
from service.compute.program.runner import run_tape
from service.engines import Call
from service.settings import Settings
from service.worker import Engine, EngineContext


class Functions:
    """An engine of named compute functions: the job `Call(function, kwargs)` runs `function(**kwargs)`,
    always alone (nothing to merge)."""

    def __init__(self, functions: Mapping[str, Callable[..., Any]]) -> None:
        self.functions = dict(functions)

    def merge_key(self, job: Call) -> None:
        return None

    def run(self, jobs: Sequence[Call]) -> list[Any]:
        return [self.functions[job.function](**job.kwargs) for job in jobs]


class Networks(NetworkEngine):
    """The network engine, keyed by structure: requests of one `NetworkSpec` merge into one compiled call."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(cache_size=settings.function_cache_size, jit_compile=settings.xla)
        # merged calls pad to the smallest compiled size: 8 and the merge limit cover every burst without
        # compiling on the request path, at two compiles' cost of start-up time
        self.merged_sizes = sorted({min(8, settings.max_batch_requests), settings.max_batch_requests} - {1})

    def merge_key(self, job: NetworkProblem) -> Hashable:
        return job.spec

    def warmup(self, merged_sizes: Sequence[int] = ()) -> None:
        super().warmup(merged_sizes or self.merged_sizes)


def networks(context: EngineContext) -> Engine:
    """`NetworkProblem` -> `NetworkResult`, merged by structure."""
    return Networks(context.settings)


def explanations(context: EngineContext) -> Engine:
    """`NetworkExplanation` -> `ExplanationResult`, merged by structure and method."""
    settings = context.settings
    return ExplainEngine(settings.max_elements, settings.function_cache_size, settings.xla)


def programs(context: EngineContext) -> Engine:
    """`Call("run_tape", ...)` -> `TapeRun`; `Call("list_ops", {})` -> the `OpInfo`s a program may call."""
    return Functions({"run_tape": run_tape, "list_ops": list_ops})


def activations(context: EngineContext) -> Engine:
    """`Call("evaluate_activations", ...)` -> `ActivationCurve`s."""
    return Functions({"evaluate_activations": evaluate_activations})


def models(context: EngineContext) -> Engine:
    """`PredictJob` -> the signature's outputs; Keras jobs of one version, signature and instance shape merged."""
    return ModelsEngine()


def gradient_checks(context: EngineContext) -> Engine:
    """`Call("check_network" | "check_tape" | "check_model", ...)` -> `GradientCheck`; a network's autodiff runs
    on the networks engine (its compiled functions are shared)."""
    networks = context.engine("networks")
    if not isinstance(networks, NetworkEngine):
        raise TypeError("gradient checks of networks need the networks engine")
    return Functions(
        {
            "check_network": functools.partial(check_network, engine=networks),
            "check_tape": check_tape,
            "check_model": check_model,
        }
    )


def plots(context: EngineContext) -> Engine:
    """`Call("plot_activations" | "plot_attributions", ...)` -> PNG bytes."""
    return Functions({"plot_activations": plot_activations, "plot_attributions": plot_attributions})
