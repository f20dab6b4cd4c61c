"""API keys: Bearer tokens on /v1/* and /metrics, open probes and docs, 401 problem+json, keys never logged."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from schemas.networks import SEED_REQUEST
from service import auth
from service.settings import Settings
from tests.conftest import make_client

KEYS = ("alpha-0123456789", "beta-9876543210")
PROTECTED = [
    ("GET", "/v1/info"),
    ("GET", "/metrics"),
    ("POST", "/v1/networks/gradients"),
    ("GET", "/v1/no-such-thing"),
    ("DELETE", "/v1/networks/gradients"),
]
OPEN = ["/healthz", "/readyz", "/docs", "/redoc", "/openapi.json", "/docs/assets/swagger-ui-bundle.js"]


@pytest.fixture(scope="module")
def keyed() -> Iterator[TestClient]:
    with make_client(api_keys=f" {KEYS[0]}, {KEYS[1]} ,") as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_protected_paths_need_a_key(keyed: TestClient, method: str, path: str) -> None:
    response = keyed.request(method, path, json=SEED_REQUEST if method == "POST" else None)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["x-request-id"]
    problem = response.json()
    assert problem["status"] == 401 and problem["type"].endswith("/unauthorized")


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer wrong-key",
        f"Bearer {KEYS[0]}x",
        f"Bearer {KEYS[0][:-1]}",
        f"Bearer {KEYS[0]},{KEYS[1]}",
        f"Basic {KEYS[0]}",
        f"{KEYS[0]}",
        "Bearer ",
        "Bearer",
        "",
    ],
)
def test_anything_but_a_configured_key_is_refused(keyed: TestClient, authorization: str) -> None:
    response = keyed.get("/v1/info", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_behind_a_root_path_the_same_paths_need_a_key(keyed: TestClient, method: str, path: str) -> None:
    """A server given a root path (uvicorn's `--root-path`) puts it in front of every path: the keys still guard
    the paths the routes see."""
    prefixed = TestClient(keyed.app, root_path="/tapeserve")
    response = prefixed.request(method, "/tapeserve" + path, json=SEED_REQUEST if method == "POST" else None)
    assert response.status_code == 401 and response.json()["type"].endswith("/unauthorized")


@pytest.mark.parametrize("root_path", ["", "/tapeserve"])
def test_a_refusal_on_tf_servings_paths_carries_the_error_member(keyed: TestClient, root_path: str) -> None:
    """The 401 is answered before any route, and still in TF Serving's form on its paths (behind a root path
    too); the open paths stay open."""
    client = TestClient(keyed.app, root_path=root_path)
    served = client.post(root_path + "/v1/models/diabetes:predict", json={"instances": [[80, 120, 37]]}).json()
    assert served["status"] == 401 and served["error"] == served["detail"]
    assert "error" not in client.get(root_path + "/v1/info").json()
    assert client.get(root_path + "/healthz").status_code == 200


def test_a_wrong_key_is_reported_as_invalid_token(keyed: TestClient) -> None:
    response = keyed.get("/v1/info", headers=bearer("wrong-key"))
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    missing = keyed.get("/v1/info")
    assert "error=" not in missing.headers["www-authenticate"]


@pytest.mark.parametrize("key", KEYS)
def test_every_configured_key_is_accepted(keyed: TestClient, key: str) -> None:
    response = keyed.post("/v1/networks/gradients", json=SEED_REQUEST, headers=bearer(key))
    assert response.status_code == 200, response.text
    assert response.json()["loss"]["shape"] == []
    assert keyed.get("/metrics", headers={"Authorization": f"bearer {key}"}).status_code == 200


@pytest.mark.parametrize("path", OPEN)
def test_probes_and_docs_stay_open(keyed: TestClient, path: str) -> None:
    assert keyed.get(path).status_code in {200, 503}  # /readyz may still be warming up


def test_the_key_is_checked_before_the_body_is_read(keyed: TestClient) -> None:
    response = keyed.post("/v1/networks/gradients", content=b"{not json", headers={"content-type": "text/plain"})
    assert response.status_code == 401


def test_open_service_needs_no_key(client: TestClient) -> None:
    assert client.get("/v1/info").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_openapi_declares_the_bearer_scheme(keyed: TestClient, client: TestClient) -> None:
    schema = keyed.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["HTTPBearer"]["description"],
    }
    assert schema["paths"]["/v1/networks/gradients"]["post"]["security"] == [{"HTTPBearer": []}]
    assert schema["paths"]["/v1/info"]["get"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    # open: the scheme is shown (Swagger UI's "Authorize") but optional
    open_schema = client.get("/openapi.json").json()
    assert open_schema["paths"]["/v1/networks/gradients"]["post"]["security"] == [{"HTTPBearer": []}, {}]


def test_every_key_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    keys = [key.encode() for key in KEYS]
    assert auth.key_matches(keys[0], keys)
    assert len(compared) == len(keys)  # no early exit on the first match
    assert not auth.key_matches(b"nope", keys)
    assert not auth.key_matches(b"", keys)


def test_keys_come_from_the_environment_and_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAPESERVE_API_KEYS", ",".join(KEYS))
    settings = Settings()
    assert settings.api_key_list == KEYS
    for text in (repr(settings), str(settings), str(settings.model_dump())):
        assert all(key not in text for key in KEYS)


def test_keys_never_reach_the_logs(keyed: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        keyed.get("/v1/info", headers=bearer(KEYS[0]))
        keyed.get("/v1/info", headers=bearer(KEYS[1] + "-wrong"))
        keyed.post("/v1/networks/gradients", json={"features": 1}, headers=bearer(KEYS[1]))
    assert caplog.records, "the access log should have recorded these requests"
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert all(key not in logged for key in KEYS)
