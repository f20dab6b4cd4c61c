"""A Python client for tapeserve: `Client` (blocking) and `AsyncClient` (asyncio), both on httpx.

    from service.client import Client, to_numpy
    from schemas.networks import SEED_REQUEST

    with Client("http://127.0.0.1:8000", api_key="...") as tapeserve:
        result = tapeserve.network_gradients(SEED_REQUEST)
        dL_dW1 = to_numpy(result.gradients[0].weights)

Bodies are dicts or the request models of `schemas`; numpy arrays may stand for tensors in either.
Answers are the response models of `schemas`, validated from the JSON. A response that is not 2xx raises
a `TapeserveError` (a subclass per status family) carrying the parsed problem details; connection
failures and client-side timeouts are httpx's own `httpx.TransportError`s.

The module imports neither TensorFlow nor FastAPI, so it is light to use from other programs.
"""

from __future__ import annotations

import base64
import email.utils
import math
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
import numpy as np
import orjson
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from schemas.activations import ActivationCatalogue, ActivationsRequest, ActivationsResponse
from schemas.gradient_check import GradientCheckRequest, GradientCheckResponse
from schemas.networks import NetworkRequest, NetworkResponse
from schemas.problems import Problem
from schemas.system import Health, Info, Readiness
from schemas.tape import OpsResponse, TapeRequest, TapeResponse
from schemas.tensors import TensorOut

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_TIMEOUT_S",
    "AsyncClient",
    "AuthError",
    "Client",
    "RateLimited",
    "ServerError",
    "TapeserveError",
    "ValidationError",
    "from_numpy",
    "to_numpy",
]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 35.0
"""A little above the service's own 30 s deadline, so its 504 problem arrives before the client gives up."""

ResponseModel = TypeVar("ResponseModel", bound=BaseModel)
Body = Mapping[str, Any] | BaseModel


# ------------------------------------------------------------------------------------------------------ errors
class TapeserveError(Exception):
    """The service answered with an error status.

    `problem` is the RFC 9457 body (`type`, `title`, `status`, `detail`, `errors`, and extras such as
    `compute_index`), or None when the body was not problem JSON (a proxy's HTML page, say); `text` is the
    raw body then. `request_id` is the service's `X-Request-ID` for the request, to quote in a report.
    """

    def __init__(self, status: int, problem: Problem | None, text: str, request_id: str | None) -> None:
        self.status = status
        self.problem = problem
        self.text = text
        self.request_id = request_id
        if problem is not None:
            message = f"{status} {problem.title}: {problem.detail}"
        else:
            message = f"{status}: {text[:500]}" if text.strip() else f"{status} (empty body)"
        super().__init__(message)

    @property
    def type(self) -> str | None:
        """The problem type URI; its last segment names it (`validation`, `non-persistent-tape`, ...)."""
        return None if self.problem is None else self.problem.type

    @property
    def errors(self) -> list[tuple[list[str | int], str]]:
        """Every offending value as (JSON location, message); empty when the problem lists none."""
        if self.problem is None or not self.problem.errors:
            return []
        return [(item.loc, item.msg) for item in self.problem.errors]


class ValidationError(TapeserveError):
    """422: the request is well-formed JSON but its schema, shapes, dtypes, values, program or tape use are not.

    Not pydantic's `ValidationError`: this one comes from the service, with `errors` locating each value in
    the body sent.
    """


class AuthError(TapeserveError):
    """401 (or 403): the service wants `Authorization: Bearer <key>` with one of its keys."""


class RateLimited(TapeserveError):
    """429: the service's work queue is full; `retry_after` is its `Retry-After`, in seconds, if it sent one."""

    def __init__(
        self, status: int, problem: Problem | None, text: str, request_id: str | None, retry_after: float | None
    ) -> None:
        super().__init__(status, problem, text, request_id)
        self.retry_after = retry_after


class ServerError(TapeserveError):
    """5xx: 500 a bug (quote `request_id`), 503 still starting, 504 the request's deadline passed."""


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delay-seconds or an HTTP date."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def error_from_response(response: httpx.Response) -> TapeserveError:
    """The `TapeserveError` subclass that stands for an error response."""
    text = response.text
    problem: Problem | None = None
    if "json" in response.headers.get("content-type", ""):
        try:
            problem = Problem.model_validate_json(response.content)
        except PydanticValidationError:
            problem = None
    request_id = response.headers.get("x-request-id")
    if request_id is None and problem is not None and isinstance(problem.model_extra, dict):
        found = problem.model_extra.get("request_id")
        request_id = found if isinstance(found, str) else None
    status = response.status_code
    if status == 429:
        return RateLimited(status, problem, text, request_id, _retry_after(response.headers.get("retry-after")))
    kind: type[TapeserveError] = TapeserveError
    if status == 422:
        kind = ValidationError
    elif status in (401, 403):
        kind = AuthError
    elif status >= 500:
        kind = ServerError
    return kind(status, problem, text, request_id)


# ------------------------------------------------------------------------------------------------------ tensors
def to_numpy(tensor: TensorOut | Mapping[str, Any]) -> np.ndarray:
    """A response tensor as a numpy array of its shape and dtype.

    Reads both encodings: nested `values` (a bare number for rank 0; "NaN", "Infinity" and "-Infinity"
    strings become the IEEE values) and `b64` (little-endian raw bytes, row-major).
    """
    if isinstance(tensor, TensorOut):
        shape_given, dtype_name, b64, values = tensor.shape, tensor.dtype, tensor.b64, tensor.values
    else:
        shape_given, dtype_name, b64, values = tensor["shape"], tensor["dtype"], tensor.get("b64"), tensor.get("values")
    shape = tuple(int(size) for size in shape_given)
    dtype = np.dtype(str(dtype_name))
    if b64 is not None:
        raw = base64.b64decode(b64, validate=True)
        little_endian = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
        if little_endian.size != int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"b64 holds {little_endian.size} {dtype} values; shape {list(shape)} needs another count")
        return little_endian.astype(dtype).reshape(shape)
    if values is None:
        raise ValueError("a response tensor has either values or b64")
    # numpy parses the "NaN"/"Infinity"/"-Infinity" strings itself when casting to a float dtype
    array = np.asarray(values, dtype=dtype)
    if array.shape != shape:
        raise ValueError(f"values have shape {list(array.shape)}, the tensor says {list(shape)}")
    return array


def from_numpy(array: np.ndarray | np.generic) -> dict[str, Any]:
    """A numpy array as a request tensor in the base64 form: exact bytes, compact for large arrays.

    dtypes other than float32, float64, int32 and int64 are cast to float64 (floats, bools) or int64 (integers).
    """
    array = np.asarray(array)
    if array.dtype.name not in ("float32", "float64", "int32", "int64"):
        array = array.astype(np.int64 if array.dtype.kind in "iu" else np.float64)
    little_endian = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return {
        "shape": list(array.shape),
        "dtype": array.dtype.name,
        "b64": base64.b64encode(little_endian.tobytes()).decode(),
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_none=True)
    if isinstance(value, np.ndarray):
        return value.tolist()  # arrays orjson does not write natively: non-contiguous, other dtypes
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _non_finite(value: Any, where: str) -> tuple[str, str] | None:
    """(location, value) of the first NaN or infinity in a request document, or None."""
    if isinstance(value, float | np.floating):
        return None if math.isfinite(value) else (where, str(float(value)))
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fc":
            return None
        bad = np.argwhere(~np.isfinite(value))
        return None if bad.size == 0 else (where + "".join(f"[{int(i)}]" for i in bad[0]), str(value[tuple(bad[0])]))
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_none=True)
    if isinstance(value, Mapping):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite(item, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}")
        if found is not None:
            return found
    return None


def encode_body(body: Body) -> bytes:
    """A request body as JSON bytes: a request model (None fields left out, so defaults apply) or a mapping.

    numpy arrays and scalars may appear anywhere as tensors. JSON has no NaN or infinity (a JSON encoder
    writes null for them), and the service computes on finite numbers only: a non-finite value raises
    `ValueError` naming its place in the body, before anything is sent.
    """
    document = body.model_dump(exclude_none=True) if isinstance(body, BaseModel) else dict(body)
    encoded = orjson.dumps(document, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY)
    if b"null" in encoded:  # where a NaN would have gone; only then is the document walked
        found = _non_finite(document, "body")
        if found is not None:
            where, value = found
            raise ValueError(f"{where} is {value}: requests take finite numbers only (JSON has no NaN or infinity)")
    return encoded


# ------------------------------------------------------------------------------------------------------ clients
class _Base:
    """What both clients share: URLs, headers, body encoding, and turning responses into models or errors."""

    def __init__(self, base_url: str | None, api_key: str | None, default_base_url: str) -> None:
        self.base_url = (base_url or default_base_url or DEFAULT_BASE_URL).rstrip("/")
        self._api_key = api_key

    def __repr__(self) -> str:
        # the key stays out of reprs and tracebacks
        return f"{type(self).__name__}({self.base_url!r}, api_key={'***' if self._api_key else None})"

    def _url(self, path: str) -> str:
        return self.base_url + path

    def _headers(self, request_id: str | None, body: bool = False) -> dict[str, str]:
        headers = {"Accept": "application/json, application/problem+json"}
        if body:
            headers["Content-Type"] = "application/json"
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        if request_id is not None:
            headers["X-Request-ID"] = request_id
        return headers

    @staticmethod
    def _model(response: httpx.Response, model: type[ResponseModel]) -> ResponseModel:
        if not response.is_success:
            raise error_from_response(response)
        return model.model_validate_json(response.content)

    @staticmethod
    def _readiness(response: httpx.Response) -> Readiness:
        # 503 {"status": "starting"} is an answer, not an error
        if response.status_code == 503 and "json" in response.headers.get("content-type", ""):
            try:
                return Readiness.model_validate_json(response.content)
            except PydanticValidationError:
                pass
        return _Base._model(response, Readiness)

    @staticmethod
    def _png(response: httpx.Response) -> bytes:
        if not response.is_success:
            raise error_from_response(response)
        return response.content

    @staticmethod
    def _plot_params(
        activations: str | Sequence[str] | None,
        *,
        start: float | None,
        stop: float | None,
        num: int | None,
        alpha: float | None,
        theme: str | None,
    ) -> dict[str, str | int | float]:
        given: dict[str, str | int | float | None] = {
            "activations": activations
            if activations is None or isinstance(activations, str)
            else ",".join(activations),
            "start": start,
            "stop": stop,
            "num": num,
            "alpha": alpha,
            "theme": theme,
        }
        return {name: value for name, value in given.items() if value is not None}


class Client(_Base):
    """A blocking tapeserve client. Use it as a context manager, or call `close()`.

    base_url: the service's root (default http://127.0.0.1:8000, or the base URL of `http_client`).
    api_key: sent as `Authorization: Bearer <key>` when given.
    timeout: seconds (or an `httpx.Timeout`) for the client this makes; ignored with `http_client`.
    http_client: an `httpx.Client` to send through (its timeout and transport apply; it is not closed here).
    transport: an httpx transport for the client this makes (a proxy, retries, an in-process app...).
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        http_client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if http_client is not None and transport is not None:
            raise ValueError("pass http_client or transport, not both")
        default = str(http_client.base_url) if http_client is not None else ""
        super().__init__(base_url, api_key, default)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=timeout, transport=transport)

    def close(self) -> None:
        """Close the connections, unless the httpx client was passed in."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _get(
        self, path: str, request_id: str | None, params: Mapping[str, str | int | float] | None = None
    ) -> httpx.Response:
        return self._http.get(self._url(path), params=params, headers=self._headers(request_id))

    def _post(self, path: str, body: Body, request_id: str | None) -> httpx.Response:
        return self._http.post(self._url(path), content=encode_body(body), headers=self._headers(request_id, body=True))

    def network_gradients(
        self, body: NetworkRequest | Mapping[str, Any], *, request_id: str | None = None
    ) -> NetworkResponse:
        """`POST /v1/networks/gradients`: loss, predictions and dL/dWᵢ of a dense network (plus `include`)."""
        return self._model(self._post("/v1/networks/gradients", body, request_id), NetworkResponse)

    def tape(self, body: TapeRequest | Mapping[str, Any], *, request_id: str | None = None) -> TapeResponse:
        """`POST /v1/tape`: run a program on a GradientTape; its values and every `compute` result, in order."""
        return self._model(self._post("/v1/tape", body, request_id), TapeResponse)

    def activations(
        self, body: ActivationsRequest | Mapping[str, Any] | None = None, *, request_id: str | None = None
    ) -> ActivationsResponse:
        """`POST /v1/activations`: activations and their local gradients (default: the seed's four on its grid)."""
        return self._model(self._post("/v1/activations", {} if body is None else body, request_id), ActivationsResponse)

    def activation_catalogue(self, *, request_id: str | None = None) -> ActivationCatalogue:
        """`GET /v1/activations`: every activation's formula, derivative and parameters."""
        return self._model(self._get("/v1/activations", request_id), ActivationCatalogue)

    def activation_plot(
        self,
        activations: str | Sequence[str] | None = None,
        *,
        start: float | None = None,
        stop: float | None = None,
        num: int | None = None,
        alpha: float | None = None,
        theme: str | None = None,
        request_id: str | None = None,
    ) -> bytes:
        """`GET /v1/activations/plot.png`: the PNG (the service's defaults for whatever is left None)."""
        params = self._plot_params(activations, start=start, stop=stop, num=num, alpha=alpha, theme=theme)
        return self._png(self._get("/v1/activations/plot.png", request_id, params))

    def gradient_check(
        self, body: GradientCheckRequest | Mapping[str, Any], *, request_id: str | None = None
    ) -> GradientCheckResponse:
        """`POST /v1/gradient-check`: autodiff against finite differences and any claimed gradients."""
        return self._model(self._post("/v1/gradient-check", body, request_id), GradientCheckResponse)

    def info(self, *, request_id: str | None = None) -> Info:
        """`GET /v1/info`: versions, pinned device, visible devices, limits."""
        return self._model(self._get("/v1/info", request_id), Info)

    def ops(self, *, request_id: str | None = None) -> OpsResponse:
        """`GET /v1/ops`: the functions and constants a tape program may use."""
        return self._model(self._get("/v1/ops", request_id), OpsResponse)

    def health(self, *, request_id: str | None = None) -> Health:
        """`GET /healthz`: liveness."""
        return self._model(self._get("/healthz", request_id), Health)

    def ready(self, *, request_id: str | None = None) -> Readiness:
        """`GET /readyz`: status `ready`, or `starting` (the service's 503) while the worker warms up."""
        return self._readiness(self._get("/readyz", request_id))


class AsyncClient(_Base):
    """An asyncio tapeserve client. Use it as an async context manager, or await `aclose()`.

    Arguments as `Client`'s, with `httpx.AsyncClient` and an async transport (e.g.
    `httpx.ASGITransport(app=app)` to call an app in-process).
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if http_client is not None and transport is not None:
            raise ValueError("pass http_client or transport, not both")
        default = str(http_client.base_url) if http_client is not None else ""
        super().__init__(base_url, api_key, default)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        """Close the connections, unless the httpx client was passed in."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _get(
        self, path: str, request_id: str | None, params: Mapping[str, str | int | float] | None = None
    ) -> httpx.Response:
        return await self._http.get(self._url(path), params=params, headers=self._headers(request_id))

    async def _post(self, path: str, body: Body, request_id: str | None) -> httpx.Response:
        return await self._http.post(
            self._url(path), content=encode_body(body), headers=self._headers(request_id, body=True)
        )

    async def network_gradients(
        self, body: NetworkRequest | Mapping[str, Any], *, request_id: str | None = None
    ) -> NetworkResponse:
        """`POST /v1/networks/gradients`: loss, predictions and dL/dWᵢ of a dense network (plus `include`)."""
        return self._model(await self._post("/v1/networks/gradients", body, request_id), NetworkResponse)

    async def tape(self, body: TapeRequest | Mapping[str, Any], *, request_id: str | None = None) -> TapeResponse:
        """`POST /v1/tape`: run a program on a GradientTape; its values and every `compute` result, in order."""
        return self._model(await self._post("/v1/tape", body, request_id), TapeResponse)

    async def activations(
        self, body: ActivationsRequest | Mapping[str, Any] | None = None, *, request_id: str | None = None
    ) -> ActivationsResponse:
        """`POST /v1/activations`: activations and their local gradients (default: the seed's four on its grid)."""
        return self._model(
            await self._post("/v1/activations", {} if body is None else body, request_id), ActivationsResponse
        )

    async def activation_catalogue(self, *, request_id: str | None = None) -> ActivationCatalogue:
        """`GET /v1/activations`: every activation's formula, derivative and parameters."""
        return self._model(await self._get("/v1/activations", request_id), ActivationCatalogue)

    async def activation_plot(
        self,
        activations: str | Sequence[str] | None = None,
        *,
        start: float | None = None,
        stop: float | None = None,
        num: int | None = None,
        alpha: float | None = None,
        theme: str | None = None,
        request_id: str | None = None,
    ) -> bytes:
        """`GET /v1/activations/plot.png`: the PNG (the service's defaults for whatever is left None)."""
        params = self._plot_params(activations, start=start, stop=stop, num=num, alpha=alpha, theme=theme)
        return self._png(await self._get("/v1/activations/plot.png", request_id, params))

    async def gradient_check(
        self, body: GradientCheckRequest | Mapping[str, Any], *, request_id: str | None = None
    ) -> GradientCheckResponse:
        """`POST /v1/gradient-check`: autodiff against finite differences and any claimed gradients."""
        return self._model(await self._post("/v1/gradient-check", body, request_id), GradientCheckResponse)

    async def info(self, *, request_id: str | None = None) -> Info:
        """`GET /v1/info`: versions, pinned device, visible devices, limits."""
        return self._model(await self._get("/v1/info", request_id), Info)

    async def ops(self, *, request_id: str | None = None) -> OpsResponse:
        """`GET /v1/ops`: the functions and constants a tape program may use."""
        return self._model(await self._get("/v1/ops", request_id), OpsResponse)

    async def health(self, *, request_id: str | None = None) -> Health:
        """`GET /healthz`: liveness."""
        return self._model(await self._get("/healthz", request_id), Health)

    async def ready(self, *, request_id: str | None = None) -> Readiness:
        """`GET /readyz`: status `ready`, or `starting` (the service's 503) while the worker warms up."""
        return self._readiness(await self._get("/readyz", request_id))
