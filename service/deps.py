"""Dependencies, declared once as `Annotated` aliases and used by every route."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.settings import Settings
from service.worker import Worker


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_worker(request: Request) -> Worker:
    worker: Worker = request.app.state.worker
    return worker


SettingsDep = Annotated[Settings, Depends(get_settings)]
WorkerDep = Annotated[Worker, Depends(get_worker)]
