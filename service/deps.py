"""Dependencies, declared once as `Annotated` aliases and used by every route.

They are `async def` although they do not await: FastAPI runs a plain `def` dependency in its thread
pool, which costs a thread hand-off per request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.adapters.plots import PlotCache
from service.drain import Drain
from service.models import ModelRepository
from service.settings import Settings
from service.worker import Worker


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_worker(request: Request) -> Worker:
    worker: Worker = request.app.state.worker
    return worker


async def get_http_warm(request: Request) -> bool:
    """Whether the app's own warm-up requests are done (see `service.app`)."""
    return bool(request.app.state.http_warm)


async def get_drain(request: Request) -> Drain:
    """The app's drain state: set by SIGTERM (see `service.drain`)."""
    drain: Drain = request.app.state.drain
    return drain


async def get_models(request: Request) -> ModelRepository:
    """The app's model repository (see `service.models`)."""
    models: ModelRepository = request.app.state.models
    return models


async def get_plot_cache(request: Request) -> PlotCache:
    """The PNGs the app has rendered (see `service.adapters.plots`)."""
    cache: PlotCache = request.app.state.plot_cache
    return cache


SettingsDep = Annotated[Settings, Depends(get_settings)]
WorkerDep = Annotated[Worker, Depends(get_worker)]
HttpWarmDep = Annotated[bool, Depends(get_http_warm)]
DrainDep = Annotated[Drain, Depends(get_drain)]
ModelsDep = Annotated[ModelRepository, Depends(get_models)]
PlotCacheDep = Annotated[PlotCache, Depends(get_plot_cache)]
