"""`prepare_small_network` against the way every other request takes: the codec decoding each tensor, then
`prepare_network`. Where the small way answers, it must give the same problem (the same spec object, equal
arrays of the same dtype and shape); where it raises, the same error; and it must leave everything the
codec or `prepare_network` would refuse, or might read differently, to them (None)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from schemas.networks import SEED_REQUEST
from service import codec
from service.compute.errors import InvalidInput
from service.compute.networks import NetworkProblem, prepare_network, prepare_small_network
from service.compute.networks.prepare import SMALL
from service.compute.networks.problem import BIASES, INCLUDES, LOSSES, REDUCTIONS
from service.errors import ValidationFailed
from service.vocabulary import ACTIVATIONS

FLOAT32_MAX = float(np.finfo(np.float32).max)
LARGE = 10**7

plain = st.one_of(st.floats(-1e3, 1e3, allow_nan=False), st.integers(-1000, 1000))
EDGE_FLOATS = [0.0, -0.0, 5e-324, FLOAT32_MAX, -FLOAT32_MAX, 3.5e38, -1e39, 1.7e308]
EDGE_INTS = [2**53, -(2**53), 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1]
edges = st.sampled_from([*EDGE_FLOATS, *EDGE_INTS])
odd = st.one_of(st.booleans(), st.none(), st.just("1.0"), st.just({"shape": [1], "data": [1.0]}))


@st.composite
def tensor(draw: st.DrawFn, rows: int, columns: int, clean: bool) -> Any:
    """A (rows, columns) nested list of numbers, rank 1 when rows is 0. Unless `clean`, it may hold an edge
    value or a value that is no number, be ragged or deeper, or be no list at all."""
    value: list[Any] = [draw(st.lists(plain, min_size=columns, max_size=columns)) for _ in range(max(rows, 1))]
    if not clean:
        flaw = draw(st.sampled_from(["edge", "edge", "odd", "ragged", "deeper", "other"]))
        row = draw(st.integers(0, len(value) - 1))
        if flaw in {"edge", "odd"}:
            value[row][draw(st.integers(0, columns - 1))] = draw(edges if flaw == "edge" else odd)
        elif flaw == "ragged":
            value[row].append(draw(plain))
        elif flaw == "deeper":
            value = [value]
        else:
            return draw(st.one_of(plain, odd, st.just([])))
    return value[0] if rows == 0 and len(value) == 1 else value


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """A network request, most of the time one the small way takes; otherwise with a flaw or two."""
    clean = draw(st.integers(0, 3)) > 0

    def flawed(good: Any, bad: Any) -> Any:
        return good if clean or draw(st.integers(0, 4)) else bad

    inputs = features = draw(st.integers(1, 5))
    samples = draw(st.sampled_from([0, 0, 1, 2, 3, 9]))  # 0: one sample of rank 1
    bias = flawed(draw(st.sampled_from(BIASES)), "sideways")
    widths = [draw(st.integers(1, 9)) for _ in range(draw(st.integers(1, 3)))]
    weights = []
    for units in widths:
        columns = inputs + (1 if bias == "augmented" else 0) + flawed(0, draw(st.sampled_from([1, -1])))
        weights.append(draw(tensor(units, max(columns, 1), clean or draw(st.booleans()))))
        inputs = units
    rows = max(samples, 1)
    use_labels = draw(st.booleans())
    label = st.integers(0, widths[-1] - 1)
    labels = draw(
        st.one_of(label, st.lists(label, min_size=rows, max_size=rows))
        if clean
        else st.one_of(st.integers(-1, 4), st.lists(st.integers(-1, 4), max_size=4), st.booleans(), st.just(1.0))
    )
    return {
        "features": draw(tensor(samples, features, clean or draw(st.booleans()))),
        "labels": labels if use_labels else None,
        "targets": None if use_labels else draw(tensor(samples, widths[-1], clean or draw(st.booleans()))),
        "weights": weights,
        "activations": [flawed(draw(st.sampled_from(ACTIVATIONS)), "cubic") for _ in weights],
        "alphas": draw(st.sampled_from([None, [None] * len(weights), *([] if clean else [[0.2] * len(weights)])])),
        "bias": bias,
        "loss": flawed(draw(st.sampled_from(LOSSES)), "hinge"),
        "reduction": flawed(draw(st.sampled_from(REDUCTIONS)), "max"),
        "dtype": draw(st.sampled_from(["float32", "float64"])),
        "includes": draw(st.sets(st.sampled_from(INCLUDES), max_size=2)) | flawed(set(), {"everything"}),
        "max_elements": flawed(LARGE, draw(st.sampled_from([12, 4]))),
    }


def the_other_way(request: dict[str, Any]) -> NetworkProblem:
    """What the network adapter does with a body that does not take the small way."""
    options = {key: value for key, value in request.items() if key not in {"features", "targets", "weights"}}
    dtype, max_elements = options["dtype"], options.pop("max_elements")

    def decode(value: Any, *loc: str | int) -> Any:
        return codec.decode(value, ("body", *loc), max_elements=max_elements, dtype=dtype)

    targets = request.get("targets")
    return prepare_network(
        decode(request["features"], "features"),
        targets=None if targets is None else decode(targets, "targets"),
        weights=[decode(matrix, "layers", index, "weights") for index, matrix in enumerate(request["weights"])],
        **options,
    )


def assert_same_problem(small: NetworkProblem, other: NetworkProblem) -> None:
    assert small.spec is other.spec
    assert small.alphas == other.alphas
    pairs = [(small.features, other.features), (small.targets, other.targets)]
    pairs += list(zip(small.weights, other.weights, strict=True))
    for mine, theirs in pairs:
        assert mine.dtype == theirs.dtype
        assert mine.shape == theirs.shape
        assert mine.flags.c_contiguous
        np.testing.assert_array_equal(mine, theirs)


def small(request: dict[str, Any]) -> NetworkProblem | None:
    """`prepare_small_network` on a request given as `prepare_network`'s keyword arguments (and max_elements),
    its defaults where one is missing."""
    get = request.get
    return prepare_small_network(
        (request["features"], request["weights"], get("targets")),
        labels=get("labels"),
        layers=(request["activations"], get("alphas")),
        options=(
            get("bias", "augmented"),
            get("loss", "cross_entropy"),
            get("reduction", "sum"),
            get("dtype", "float32"),
            get("includes", ()),
        ),
        max_elements=request["max_elements"],
    )


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_the_small_way_gives_what_the_other_way_gives(request: dict[str, Any]) -> None:
    try:
        answer = small(request)
    except InvalidInput as error:
        event("the small way raised")
        with pytest.raises(InvalidInput) as other:
            the_other_way(request)
        assert (other.value.message, other.value.loc) == (error.message, error.loc)
        return
    if answer is None:
        event("left to the other way")
        return
    event("the small way answered")
    assert_same_problem(answer, the_other_way(request))


def seed(**changes: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "features": list(SEED_REQUEST["features"]),
        "labels": SEED_REQUEST["labels"],
        "weights": [layer["weights"] for layer in SEED_REQUEST["layers"]],
        "activations": [layer["activation"] for layer in SEED_REQUEST["layers"]],
        "includes": SEED_REQUEST["include"],
        "max_elements": LARGE,
    }
    return {**request, **changes}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_seed_and_a_small_batch_take_the_small_way(dtype: str) -> None:
    for request in (
        seed(dtype=dtype),
        seed(dtype=dtype, includes=[]),
        seed(dtype=dtype, features=[[76, 120, 37.5], [80.0, 130.0, 38.0]], labels=[1, 0]),
        seed(dtype=dtype, labels=None, targets=[0.0, 1.0]),
        seed(dtype=dtype, bias="none", weights=[[[0.01, -0.02, 0.03], [-0.01, 0.02, -0.015]]]),
    ):
        problem = small(request)
        assert problem is not None
        assert_same_problem(problem, the_other_way({"alphas": None, "bias": "augmented", **request, "dtype": dtype}))


@pytest.mark.parametrize(
    "change",
    [
        {"features": [76.0, True, 37.5]},  # numpy would read True as 1.0: the codec refuses it
        {"features": [76.0, 2**53 + 1, 37.5]},  # past 2**53 an int is no longer exact as a float
        {"features": [76.0, 1e39, 37.5]},  # overflows float32
        {"features": [[76.0, 120.0, 37.5], [80.0, 130.0]]},  # ragged
        {"features": [[[76.0, 120.0, 37.5]]]},  # rank 3
        {"features": {"shape": [3], "data": [76.0, 120.0, 37.5]}},  # a tensor object
        {"features": [0.5] * (SMALL + 1), "weights": [[[0.0] * (SMALL + 2)] * 2]},
        {"max_elements": 2},  # the codec's limit
        {"alphas": [0.2], "activations": ["leaky_relu"]},
        {"weights": [[[0.01, -0.02, 0.03], [-0.01, 0.02, -0.015]]]},  # a column short of augmented
        {"activations": ["cubic"]},
        {"includes": ["everything"]},
    ],
)
def test_anything_else_is_left_to_the_other_way(change: dict[str, Any]) -> None:
    assert small(seed(**change)) is None


def test_a_float32_overflow_is_left_to_the_codec_and_float64_takes_it() -> None:
    request = seed(features=[76.0, 1e39, 37.5])
    with pytest.raises(ValidationFailed, match="overflow float32"):
        the_other_way({"alphas": None, "bias": "augmented", "dtype": "float32", **request})
    assert small(request) is None
    assert small({**request, "dtype": "float64"}) is not None


def test_a_label_that_does_not_fit_raises_as_the_other_way_does() -> None:
    request = seed(labels=2)
    with pytest.raises(InvalidInput) as error:
        small(request)
    with pytest.raises(InvalidInput) as other:
        the_other_way({"alphas": None, "bias": "augmented", "dtype": "float32", **request})
    assert (error.value.message, error.value.loc) == (other.value.message, other.value.loc)
    assert error.value.loc == ("labels",)
