"""/docs and /redoc work with no internet access: every asset comes from the service, checked in real Chromium,
which sees no request to another origin and no console error on either page.

The browser is Debian's `chromium`, driven over the Chrome DevTools protocol (a websocket, no extra package).
When it is missing and the tests run as root (as CI does), it is installed with apt-get; otherwise the test fails.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from websockets.sync.client import ClientConnection, connect

from tests.live_server import live_server
from tests.packages import ensure_debian_package

GRADIENTS = "/v1/networks/gradients"
ASSET_ATTRIBUTE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
SPEC_URL = re.compile(r"""(?:url:\s*'|spec-url=")([^'"]+)""")


def referenced_urls(html: str) -> list[str]:
    return ASSET_ATTRIBUTE.findall(html) + SPEC_URL.findall(html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_everything_from_the_service(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    urls = referenced_urls(response.text)
    assert len(urls) >= 3  # script, favicon and the schema at least
    assert not [url for url in urls if re.match(r"^(https?:)?//", url)], urls
    assert "fonts.googleapis" not in response.text and "cdn" not in response.text.lower()
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 0


@pytest.mark.parametrize(
    ("asset", "media_type", "at_least"),
    [
        ("swagger-ui-bundle.js", "javascript", 500_000),
        ("swagger-ui.css", "text/css", 50_000),
        ("redoc.standalone.js", "javascript", 500_000),
        ("favicon.png", "image/png", 100),
    ],
)
def test_assets_are_the_real_bundles(client: TestClient, asset: str, media_type: str, at_least: int) -> None:
    response = client.get(f"/docs/assets/{asset}")
    assert response.status_code == 200
    assert media_type in response.headers["content-type"]
    assert len(response.content) >= at_least


def test_swagger_ui_does_not_post_the_schema_to_an_online_validator(client: TestClient) -> None:
    assert '"validatorUrl": null' in client.get("/docs").text


def test_oauth2_redirect_page_is_served(client: TestClient) -> None:
    response = client.get("/docs/oauth2-redirect")
    assert response.status_code == 200 and "<script" in response.text


# ------------------------------------------------------------------------------------------------ the browser
def chromium_executable() -> str:
    """Debian's chromium (or a chromium-browser already on PATH); installed when absent (see tests.packages)."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or ensure_debian_package("chromium")[0]


class Browser:
    """One page of a headless Chromium, driven over the DevTools protocol; records every URL the page fetches."""

    def __init__(self, page: ClientConnection) -> None:
        self.page = page
        self.fetched: list[str] = []
        self.blocked: list[str] = []
        self.exceptions: list[dict[str, Any]] = []
        self.console_errors: list[str] = []
        self._urls: dict[str, str] = {}
        self._ids = itertools.count(1)
        self.call("Network.enable")
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Log.enable")  # the browser's own messages: policy violations, failed loads

    def _next_message(self, timeout: float) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(self.page.recv(timeout=timeout))
        event, params = message.get("method"), message.get("params", {})
        if event == "Network.requestWillBeSent":
            self.fetched.append(params["request"]["url"])
            self._urls[params["requestId"]] = params["request"]["url"]
        elif event == "Network.loadingFailed" and params.get("blockedReason"):
            self.blocked.append(self._urls.get(params["requestId"], "?"))
        elif event == "Runtime.exceptionThrown":
            self.exceptions.append(params["exceptionDetails"])
        elif event == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.console_errors.append(f"{params['entry'].get('url', '')}: {params['entry']['text']}")
        elif event == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            words = [str(arg.get("value", arg.get("description"))) for arg in params["args"]]
            self.console_errors.append(" ".join(words))
        return message

    def external_fetches(self, origin: str) -> list[str]:
        """URLs the page fetched (not merely tried and was refused by its policy) from anywhere but `origin`."""
        return [
            url
            for url in self.fetched
            if not url.startswith((origin + "/", "data:", f"blob:{origin}/")) and url not in self.blocked
        ]

    def outside_requests(self, origin: str) -> list[str]:
        """Every URL the page asked for anywhere but `origin`, whether it was fetched or its policy refused it."""
        return [url for url in self.fetched if not url.startswith((origin + "/", "data:", f"blob:{origin}/"))]

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        request_id = next(self._ids)
        self.page.send(json.dumps({"id": request_id, "method": method, "params": params}))
        while True:
            message = self._next_message(timeout)
            if message.get("id") == request_id:
                assert "error" not in message, message
                result: dict[str, Any] = message["result"]
                return result

    def navigate(self, url: str, timeout: float = 30.0) -> None:
        """Open `url` and return once its load event fired (scripts and stylesheets loaded)."""
        self.fetched.clear()
        self.blocked.clear()
        self.exceptions.clear()
        self.console_errors.clear()
        self.call("Page.navigate", url=url)
        while self._next_message(timeout).get("method") != "Page.loadEventFired":
            pass

    def evaluate(self, script: str, timeout: float = 30.0) -> Any:
        """Run a JavaScript expression (awaiting it when it is a promise) and return its JSON value."""
        result = self.call(
            "Runtime.evaluate", timeout=timeout, expression=script, awaitPromise=True, returnByValue=True
        )
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")


@contextmanager
def headless_chromium(executable: str) -> Iterator[Browser]:
    # chromium's helper processes may still write to the profile as it exits: leftovers are not a failure
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        process = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # Chromium writes the port it picked into the profile
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 20
            while not (port_file.exists() and "\n" in port_file.read_text()):
                assert process.poll() is None, "chromium exited at start"
                assert time.monotonic() < deadline, "chromium did not open its DevTools port"
                time.sleep(0.05)
            port = int(port_file.read_text().split("\n")[0])
            targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            page = next(target for target in targets if target["type"] == "page")
            with connect(page["webSocketDebuggerUrl"], max_size=None) as connection:
                yield Browser(connection)
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=20)


WAIT_HELPERS = """
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));
const until = async (find, what) => {
  const end = Date.now() + 15000;
  while (Date.now() < end) { const found = find(); if (found) return found; await sleep(50); }
  throw new Error('timed out waiting for ' + what);
};
"""

TRY_IT_OUT = (
    "(async () => {"
    + WAIT_HELPERS
    + """
const block = await until(() => [...document.querySelectorAll('.opblock.opblock-post')].find(
  b => b.querySelector('.opblock-summary-path')?.textContent.trim() === '__PATH__'), 'the POST operation');
if (!block.classList.contains('is-open')) block.querySelector('.opblock-summary-control').click();
(await until(() => block.querySelector('.try-out__btn'), 'Try it out')).click();
(await until(() => block.querySelector('.btn.execute'), 'Execute')).click();
const status = await until(
  () => block.querySelector('.live-responses-table tbody .response-col_status'), 'the response');
const body = block.querySelector('.live-responses-table tbody .response-col_description pre');
return {status: status.textContent.trim(), body: body ? body.textContent : ''};
})()"""
).replace("__PATH__", GRADIENTS)

RENDERED_OPERATIONS = (
    "(async () => {"
    + WAIT_HELPERS
    + """
await until(() => document.querySelectorAll('.opblock').length > 0, 'operations');
return [...document.querySelectorAll('.opblock-summary-path')].map(path => path.textContent.trim());
})()"""
)

REDOC_RENDERED = (
    "(async () => {"
    + WAIT_HELPERS
    + """
await until(() => document.body.innerText.includes('__PATH__'), 'the operation');
return document.body.innerText;
})()"""
).replace("__PATH__", GRADIENTS)


@pytest.fixture(scope="module")
def browser_and_server() -> Iterator[tuple[Browser, str]]:
    executable = chromium_executable()
    with live_server() as base, headless_chromium(executable) as browser:
        yield browser, base


def test_swagger_ui_renders_the_operations_and_try_it_out_returns_200(
    browser_and_server: tuple[Browser, str],
) -> None:
    browser, base = browser_and_server
    started = time.monotonic()
    browser.navigate(base + "/docs")
    paths = browser.evaluate(RENDERED_OPERATIONS)
    assert GRADIENTS in paths and "/healthz" in paths
    answer = browser.evaluate(TRY_IT_OUT)
    assert answer["status"] == "200", answer
    document = json.loads(answer["body"])
    assert document["loss"]["shape"] == [] and len(document["gradients"]) == 1
    assert time.monotonic() - started < 30
    browser.evaluate("1")  # flush the events of the page's last requests
    assert not browser.external_fetches(base), browser.fetched
    assert not browser.exceptions, browser.exceptions
    assert not browser.outside_requests(base), browser.fetched
    assert not browser.console_errors, browser.console_errors
    assert base + "/docs/assets/swagger-ui-bundle.js" in browser.fetched
    assert base + GRADIENTS in browser.fetched


def test_redoc_renders_the_operations(browser_and_server: tuple[Browser, str]) -> None:
    browser, base = browser_and_server
    browser.navigate(base + "/redoc")
    text = browser.evaluate(REDOC_RENDERED)
    assert "tapeserve" in text and "/healthz" in text
    browser.evaluate("1")
    assert not browser.external_fetches(base), browser.fetched
    assert not browser.exceptions, browser.exceptions
    # ReDoc's sidebar logo came from a CDN (refused by the page's policy, a console error on every load)
    assert not browser.outside_requests(base), browser.fetched
    assert not browser.console_errors, browser.console_errors
    assert base + "/docs/assets/redoc.standalone.js" in browser.fetched
