"""The application factory: `create_app(settings)`, and `app` for `uvicorn service.app:app`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import __version__
from service.auth import install_auth
from service.docs import install_docs
from service.errors import install_error_handlers
from service.http import RequestContextMiddleware
from service.observability import configure_logging, install_observability
from service.routes import activations, gradient_check, networks, system, tape
from service.settings import Settings
from service.worker import Worker

DESCRIPTION = """\
TensorFlow's `GradientTape` as a REST service: post JSON tensors, weights and activation names; get back
losses, gradients, the gradients `tape.gradient` gives for non-scalar targets, and full Jacobians — with
shapes and values. Errors are RFC 9457 `application/problem+json`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """A tapeserve application; its lifespan starts the TensorFlow worker and drains it on shutdown."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = Worker(settings)
        await worker.start()
        app.state.worker = worker
        try:
            yield
        finally:
            await worker.stop()
            renderer = getattr(app.state, "plot_renderer", None)
            if renderer is not None:
                renderer.close()

    app = FastAPI(
        title="tapeserve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # install_docs serves both pages with local assets
        redoc_url=None,
    )
    app.state.settings = settings
    install_error_handlers(app)
    # middleware added later wraps what came before: observability (outermost) > request context > auth
    install_auth(app, settings.api_key_list)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    install_observability(app, access_log=settings.access_log)
    install_docs(app)
    # the hottest route first: FastAPI matches routes in order
    for module in (networks, system, tape, activations, gradient_check):
        app.include_router(module.router)
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn service.app:app` gets an app built from the environment, only when asked for
    if name == "app":
        settings = Settings()
        configure_logging(settings.log_level)
        return create_app(settings)
    raise AttributeError(name)
