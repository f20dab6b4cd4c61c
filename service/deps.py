"""Dependencies, declared once as `Annotated` aliases and used by every route.

They are `async def` although they do not await: FastAPI runs a plain `def` dependency in its thread
pool, which costs a thread hand-off per request.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request

from service.adapters.plots import PlotCache
from service.drain import Drain
from service.models import ModelRepository
from service.settings import Settings
from service.worker import Worker


def _state(attribute: str, what: str) -> Callable[[Request], Coroutine[Any, Any, Any]]:
    """A dependency answering the app's `state.<attribute>` (`what` is its docstring)."""

    async def dependency(request: Request) -> Any:
        return getattr(request.app.state, attribute)

    dependency.__name__ = f"get_{attribute}"
    dependency.__doc__ = what
    return dependency


get_settings = _state("settings", "The app's settings (see `service.settings`).")
get_worker = _state("worker", "The app's worker (see `service.worker`), started by the lifespan.")
get_http_warm = _state("http_warm", "Whether the app's own warm-up requests are done (see `service.app`).")
get_drain = _state("drain", "The app's drain state: set by SIGTERM (see `service.drain`).")
get_models = _state("models", "The app's model repository (see `service.models`).")
get_plot_cache = _state("plot_cache", "The PNGs the app has rendered (see `service.adapters.plots`).")


SettingsDep = Annotated[Settings, Depends(get_settings)]
WorkerDep = Annotated[Worker, Depends(get_worker)]
HttpWarmDep = Annotated[bool, Depends(get_http_warm)]
DrainDep = Annotated[Drain, Depends(get_drain)]
ModelsDep = Annotated[ModelRepository, Depends(get_models)]
PlotCacheDep = Annotated[PlotCache, Depends(get_plot_cache)]
