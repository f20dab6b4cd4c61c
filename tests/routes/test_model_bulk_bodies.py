"""Large served-model bodies, whose row-format `instances` or single-input `inputs` the parser reads straight
into numpy: every verb answers them as in-process TensorFlow does, and as the plain parse of the same body
would; every hostile large body gets exactly the answer the plain parse gives it (status and problem)."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
import orjson
import pytest
import tensorflow as tf
from fastapi.testclient import TestClient

from service import codec
from tests import model_repo

ROWS = 5_000  # rows of 4 numbers: a body well past the 64 KiB from which `parse` reads arrays directly
RNG = np.random.default_rng(23)
X = RNG.normal(size=(ROWS, 4)).astype(np.float32)
SEQ = "/v1/models/seq"
QUAD = "/v1/models/quad/versions/1"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = model_repo.new_repository(tmp_path_factory, "bulk")
    model_repo.save_keras(model_repo.sequential(2), root, "seq", 1)
    model_repo.save_quadratic(root)
    return root


@pytest.fixture(scope="module")
def served(repository: pathlib.Path) -> Iterator[TestClient]:
    with model_repo.serving(repository, max_elements=100_000) as client:
        yield client


@pytest.fixture(scope="module")
def model(repository: pathlib.Path) -> keras.Model:
    return model_repo.load_keras(repository, "seq")


@pytest.fixture
def read_directly(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many arrays each body had read straight into numpy (the spy records, the codec does the work)."""
    counts: list[int] = []
    set_aside = codec.set_aside

    def spied(document: Any, arrays: Any) -> dict[str, np.ndarray]:
        found = set_aside(document, arrays)
        counts.append(len(found))
        return found

    monkeypatch.setattr(codec, "set_aside", spied)
    return counts


def _post(client: TestClient, path: str, body: bytes) -> tuple[int, Any]:
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    return response.status_code, response.json()


def _both(client: TestClient, path: str, body: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """The answer to `body`, then the answer with the direct read switched off (every body parsed plainly)."""
    assert len(body) > 64 * 1024
    direct = _post(client, path, body)
    with monkeypatch.context() as patch:
        patch.setattr(codec, "_DIRECT_BYTES", 1 << 62)
        plain = _post(client, path, body)
    return direct, plain


def _tape(model: keras.Model, x: np.ndarray, target: Callable[[tf.Tensor], tf.Tensor]) -> tuple[Any, Any]:
    xt = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xt)
        out = model(xt, training=False)
        value = target(out)
    return tape.gradient(value, xt).numpy(), tape.batch_jacobian(out, xt).numpy()


def test_large_row_bodies_on_every_verb_answer_as_tensorflow_does(
    served: TestClient, model: keras.Model, read_directly: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = orjson.dumps(X.tolist())
    grads, jacobian = _tape(model, X, lambda out: out[:, 1])
    predict, plain = _both(served, f"{SEQ}:predict", b'{"instances":' + rows + b"}", monkeypatch)
    assert predict == plain and predict[0] == 200
    np.testing.assert_allclose(predict[1]["predictions"], model(X, training=False).numpy(), rtol=1e-5, atol=1e-6)
    body = b'{"instances":' + rows + b',"class_index":1}'
    gradients, plain = _both(served, f"{SEQ}:gradients", body, monkeypatch)
    assert gradients == plain and gradients[0] == 200
    np.testing.assert_allclose(model_repo.values(gradients[1]["input_gradients"]["x"]), grads, rtol=1e-5, atol=1e-6)
    batch = X[:1_000]
    body = b'{"instances":' + orjson.dumps(batch.tolist()) + b"}"
    answer, plain = _both(served, f"{SEQ}:jacobian", body, monkeypatch)
    assert answer == plain and answer[0] == 200
    assert answer[1]["jacobian"]["shape"] == [1_000, 3, 4]
    np.testing.assert_allclose(answer[1]["jacobian"]["values"], jacobian[:1_000], rtol=1e-5, atol=1e-6)
    assert read_directly == [1, 0, 1, 0, 1, 0]  # each body read directly, then plainly


def test_a_large_columnar_body_and_whole_numbers_in_a_float64_saved_model(
    served: TestClient, read_directly: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    x = RNG.integers(-5_000, 5_000, size=(3 * ROWS, 2))  # whole numbers: read as int64, taken as the model's float64
    body = orjson.dumps({"signature_name": "score", "inputs": x.tolist(), "output": "y"})
    answer, plain = _both(served, f"{QUAD}:gradients", body, monkeypatch)
    assert answer == plain and answer[0] == 200
    # y = (x*x) @ w, so d(sum y)/dx = 2 x (w's row sums), exactly, in float64
    expected = 2.0 * x * model_repo.QUADRATIC_W.sum(axis=1)
    got = model_repo.values(answer[1]["input_gradients"]["x"])
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, expected)
    assert read_directly == [1, 0]


def _rows_body(rows: list[Any], **fields: Any) -> bytes:
    return orjson.dumps({"instances": rows, **fields})


def _swap(index: int, row: Any) -> list[Any]:
    rows: list[Any] = X.tolist()
    rows[index] = row
    return rows


def _raw(text: bytes, index: int = 2_500) -> bytes:
    """The rows' body with the row at `index` written as `text` (JSON orjson would not write)."""
    marker = 1e9
    body = _rows_body(_swap(index, [marker] * 4))
    return body.replace(orjson.dumps([marker] * 4), text, 1)


HOSTILE = {
    "a short row": _rows_body(_swap(2_500, [1.0, 2.0, 3.0])),
    "ragged rows that make up the count": _rows_body([*_swap(10, [1.0] * 3), [1.0] * 5]),
    "a string among the numbers": _rows_body(_swap(2_500, [1.0, "2", 3.0, 4.0])),
    "a boolean among the numbers": _rows_body(_swap(2_500, [1.0, True, 3.0, 4.0])),
    "a row of booleans": _rows_body(_swap(2_500, [True] * 4)),
    "a null among the numbers": _rows_body(_swap(2_500, [1.0, None, 3.0, 4.0])),
    "a number among the rows": _rows_body(_swap(2_500, 1.0)),
    "a row one level deeper": _rows_body(_swap(2_500, [[1.0], [2.0], [3.0], [4.0]])),
    "a named instance among the rows": _rows_body(_swap(2_500, {"x": [1.0, 2.0, 3.0, 4.0]})),
    "an empty row": _rows_body(_swap(2_500, [])),
    "rows of the wrong width": _rows_body(X[:, :3].tolist()),
    "more elements than the server takes": _rows_body(np.tile(X, (6, 1)).tolist()),
    "a float that overflows": _raw(b"[1.0,1e400,3.0,4.0]"),
    "NaN": _raw(b"[1.0,NaN,3.0,4.0]"),
    "a trailing comma": _raw(b"[1.0,2.0,3.0,4.0,]"),
    "instances and inputs": _rows_body(X.tolist(), inputs=X.tolist()),
    "an unknown signature with a bracket": _rows_body(X.tolist(), signature_name="[score"),
    "an unknown field": _rows_body(X.tolist(), colour="red"),
    "a class index past the output": _rows_body(X.tolist(), class_index=3),
    "inputs of the wrong width": orjson.dumps({"inputs": X[:, 1:].tolist()}),
    "ragged inputs": orjson.dumps({"inputs": _swap(7, [1.0, 2.0])}),
}


TRICKY = {  # bodies the direct read must leave to the plain parse, which takes them
    "an integer past int64": _raw(b"[1.0,18446744073709551616,3.0,4.0]"),
    "a whole float past 2**53": _raw(b"[1.0,9007199254740993.0,3.0,4.0]"),
    "instances given twice": _rows_body(X.tolist()).replace(b"{", b'{"instances":[[1.0]],', 1),
}
VERBS = ["predict", "gradients", "jacobian", "explain"]


def _for(verb: str, body: bytes) -> bytes:
    """`body` as `verb` takes it: an explanation of two steps per instance keeps under the element limit."""
    return body[:-1] + b',"steps":2}' if verb == "explain" else body


LARGE_CASES = [*(("tricky", name) for name in sorted(TRICKY)), *(("hostile", name) for name in sorted(HOSTILE))]


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize(("kind", "name"), LARGE_CASES)
def test_a_large_body_gets_the_plain_parse_s_answer(
    served: TestClient, kind: str, name: str, verb: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tricky body (valid, at the edge of what the direct read takes) is answered, a hostile one is a 4xx
    problem, and either answer (status and JSON) is the one the plain parse gives."""
    body = (TRICKY if kind == "tricky" else HOSTILE)[name]
    direct, plain = _both(served, f"{SEQ}:{verb}", _for(verb, body), monkeypatch)
    assert direct == plain
    status, answer = direct
    if kind == "tricky":
        assert status == 200, answer
    else:
        assert 400 <= status < 500, answer
        assert answer["status"] == status and answer["detail"] and answer["error"]


def test_the_model_still_serves_after_the_hostile_bodies(served: TestClient, model: keras.Model) -> None:
    status, answer = _post(served, f"{SEQ}:predict", _rows_body(X[:3].tolist()))
    assert status == 200
    np.testing.assert_allclose(answer["predictions"], model(X[:3], training=False).numpy(), rtol=1e-5, atol=1e-6)
