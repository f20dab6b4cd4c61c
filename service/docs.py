"""`/docs` (Swagger UI) and `/redoc` served with their JavaScript and CSS from the service itself.

FastAPI's defaults load them from a CDN, which leaves a blank page on a machine without internet access. The
files come from the `fastapi-offline` package (Swagger UI: Apache-2.0, ReDoc: MIT; see NOTICE); ReDoc's
is served with the one image it would fetch from a CDN replaced by an empty inline one.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs/assets"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"

# the browser itself keeps the docs offline: nothing but this origin (and inline/blob/data parts of the bundles)
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    )
)

SWAGGER_UI_PARAMETERS = {
    "validatorUrl": None,  # the default posts the schema to an online validator
    "persistAuthorization": True,
    "displayRequestDuration": True,
}


def assets_directory() -> Path:
    """The directory holding swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and favicon.png."""
    return Path(str(files("fastapi_offline") / "static"))


REDOC_LOGO_URL = b'"https://cdn.redoc.ly/redoc/logo-mini.svg"'
NO_IMAGE = b'"data:image/svg+xml,%3Csvg xmlns=%27http://www.w3.org/2000/svg%27/%3E"'
"""An empty SVG: ReDoc's sidebar keeps its "API docs by Redocly" link, without fetching the logo from a CDN."""


@cache
def redoc_bundle() -> bytes:
    """ReDoc's bundle with its one outside request, the sidebar logo, replaced by an empty inline image."""
    bundle = (assets_directory() / "redoc.standalone.js").read_bytes()
    if bundle.count(REDOC_LOGO_URL) != 1:
        raise RuntimeError("ReDoc's bundle no longer fetches its logo as this expects; see service/docs.py")
    return bundle.replace(REDOC_LOGO_URL, NO_IMAGE)


def install_docs(app: FastAPI) -> None:
    """Serve the docs pages and their assets; the app must be built with `docs_url=None, redoc_url=None`."""

    # before the mount, so that this route answers for the file rather than the mount's copy
    @app.get(f"{ASSETS_URL}/redoc.standalone.js", include_in_schema=False)
    async def redoc_script() -> Response:
        return Response(redoc_bundle(), media_type="text/javascript; charset=utf-8")

    app.mount(ASSETS_URL, StaticFiles(directory=assets_directory()), name="docs-assets")

    def under_root(request: Request, url: str) -> str:
        return f"{request.scope.get('root_path', '')}{url}"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=under_root(request, app.openapi_url or "/openapi.json"),
            title=f"{app.title} — Swagger UI",
            swagger_js_url=under_root(request, f"{ASSETS_URL}/swagger-ui-bundle.js"),
            swagger_css_url=under_root(request, f"{ASSETS_URL}/swagger-ui.css"),
            swagger_favicon_url=under_root(request, f"{ASSETS_URL}/favicon.png"),
            oauth2_redirect_url=under_root(request, OAUTH2_REDIRECT_URL),
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )
        page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return page

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        page = get_swagger_ui_oauth2_redirect_html()
        page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return page

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=under_root(request, app.openapi_url or "/openapi.json"),
            title=f"{app.title} — ReDoc",
            redoc_js_url=under_root(request, f"{ASSETS_URL}/redoc.standalone.js"),
            redoc_favicon_url=under_root(request, f"{ASSETS_URL}/favicon.png"),
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return page
