"""Hostile calls of the ops issue 15 added, over HTTP: each a 422 problem naming the call's line, column
and function, the argument at fault and why; sizes over the limits refused before TensorFlow allocates."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from fastapi.testclient import TestClient

from tests.hostile_case import Hostile
from tests.test_hostile import LIMIT, PROGRAM, TAPE, assert_problem, document, send

IMAGE = "img = tf.ones([1, 8, 8, 2])\n"
"""A program's first line: an 8×8 two-channel image (the call under test is on line 2)."""


def call(source: str, says: str, *, slug: str = PROGRAM, column: int = 5, name: str | None = None) -> Hostile:
    """`y = <source>` on line 2 of a program, answered with `says` in the detail at (2, column)."""
    body = {"program": IMAGE + "y = " + source, "inputs": {"x": {"value": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]}}}
    return document(TAPE, body, 422, slug, name or source[:60], says=says, extra={"line": 2, "column": column})


OPS = [
    # wrong dtypes
    call("tf.math.xlogy(tf.constant([1, 2]), tf.constant([1, 2]))", "xlogy(): InvalidArgumentError"),
    call("tf.math.nextafter(tf.constant([1, 2]), 3)", "nextafter(): InvalidArgumentError"),
    call("tf.nn.l2_loss(tf.constant([1, 2]))", "l2_loss(): InvalidArgumentError"),
    call("tf.math.segment_sum(x, [0.0, 1.0])", "segment_sum(): segment_ids must be an integer tensor"),
    call("tf.nn.embedding_lookup(x, [0.5])", "embedding_lookup(): InvalidArgumentError"),
    call("tf.nn.sparse_softmax_cross_entropy_with_logits([0.0, 1.0], x)", "'Tlabels' of float"),
    call("tf.math.add_n([x, tf.cast(x, tf.float64)])", "add_n(): InvalidArgumentError"),
    call("tf.math.multiply_no_nan(x, tf.constant([1, 2, 3]))", "multiply_no_nan(): ValueError: y:"),
    call("tf.math.unsorted_segment_sum(x, [0, 1], 2.5)", "num_segments must be an integer"),
    # wrong shapes and values
    call("tf.math.xlogy(x, tf.ones([4]))", "Incompatible shapes"),
    call("tf.math.segment_sum(x, [0, 1, 2])", "does not start with segment_ids.shape"),
    call("tf.math.segment_sum(x, [1, 0])", "segment ids are not increasing"),
    call("tf.math.segment_sum(x, [0, -1])", "segment ids must be >= 0"),
    call("tf.math.unsorted_segment_sum(x, [0, 5], 2)", "segment_ids[1] = 5 is out of range"),
    call("tf.math.unsorted_segment_min(x, [0, 1], -3)", "num_segments must be non-negative"),
    call("tf.nn.embedding_lookup(x, [5])", "indices[0] = 5 is not in [0, 2)"),
    call("tf.nn.embedding_lookup(3.0, [0])", "params must be a tensor of rank 1 or more"),
    call("tf.nn.conv2d(img, tf.ones([3, 3, 2]), 1, 'SAME')", "conv2d(): filters must have rank 4"),
    call("tf.nn.conv2d(x, tf.ones([3, 3, 2, 4]), 1, 'SAME')", "conv2d(): input must have rank 4 or more"),
    call("tf.nn.conv2d(img, tf.ones([3, 3, 3, 4]), 1, 'SAME')", "input depth must be evenly divisible"),
    call("tf.nn.conv2d(img, tf.ones([9, 9, 2, 1]), 1, 'VALID')", "larger than the padded input [8, 8]"),
    call("tf.nn.conv1d(img, tf.ones([3, 2]), 1, 'SAME')", "conv1d(): filters must have rank 3"),
    call("tf.nn.conv1d(x, tf.ones([3, 2, 4]), 1, 'SAME')", "conv1d(): input must have rank 3 or more"),
    call("tf.nn.conv2d(img, tf.ones([3, 3, 2, 4]), 0, 'SAME')", "conv2d(): strides must be positive"),
    call("tf.nn.conv2d(img, tf.ones([3, 3, 2, 4]), [1, 2, 3], 'SAME')", "strides must be an int or a list of 1, 2"),
    call("tf.nn.conv2d(img, tf.ones([3, 3, 2, 4]), 1, 'SAME', dilations=-2)", "dilations must be positive"),
    call("tf.nn.conv2d(img, tf.ones([3, 3, 2, 4]), 1, 'same')", "padding must be one of 'SAME', 'VALID'", column=49),
    call("tf.nn.conv2d(img, tf.ones([3, 3, 2, 4]), 1, 3)", 'padding must be "SAME", "VALID" or a list'),
    call(
        "tf.nn.conv2d(img, tf.ones([3, 3, 2, 4]), 1, [[0, 0], [-1, 0], [0, 0], [0, 0]])",
        "padding: each entry is a [before, after] pair of non-negative ints",
    ),
    call(
        "tf.nn.conv2d(img, tf.ones([3, 3, 2, 4]), 1, 'SAME', data_format='NCW')",
        "data_format must be one of",
        column=69,
    ),
    call("tf.nn.depthwise_conv2d(img, tf.ones([3, 3, 2, 2]), 1, 'SAME')", "Expected list for 'strides'"),
    call("tf.nn.max_pool2d(img, 0, 1, 'SAME')", "max_pool2d(): ksize must be positive"),
    call("tf.nn.avg_pool2d(img, 2, 1, [[0, 0], [1, 1], [0, 0], [0, 0]])", "Expected string for argument 'padding'"),
    call("tf.nn.softmax_cross_entropy_with_logits(tf.ones([2, 4]), x)", "logits and labels must be broadcastable"),
    call("tf.nn.sparse_softmax_cross_entropy_with_logits([0, 7], x)", "label value of 7"),
    call("tf.nn.sigmoid_cross_entropy_with_logits(logits=x)", "must be provided"),
    call("tf.split(x, 4)", "evenly divide the split dimension"),
    call("tf.split(x, 0)", "split(): num_or_size_splits must be at least 1, not 0"),
    call("tf.split(x, [1, 5], axis=1)", "split(): InvalidArgumentError"),
    call("tf.split(x, 3, axis=2)", "split_dim"),
    call("tf.tensordot(x, x, 3)", "tensordot(): axes must be between 0 and 2"),
    call("tf.tensordot(x, x, -1)", "axes must be between 0 and 2"),
    call("tf.tensordot(x, x, [[0, 0], [0, 1]])", "its axes must be distinct and within it"),
    call("tf.tensordot(x, x, [[0], [1]])", "tensordot(): InvalidArgumentError: Matrix size-incompatible"),
    call("tf.math.reduce_euclidean_norm(x, axis=-3)", "Invalid reduction dimension"),
    call("tf.math.add_n([])", "add_n(): ValueError"),
    call("tf.math.floormod(tf.constant([1, 2]), tf.constant([0, 1]))", "Integer division by zero"),
    call("tf.nn.embedding_lookup(x, [0], max_norm=x)", "embedding_lookup():"),
]

LIMITS = [
    call("tf.nn.conv2d(img, tf.ones([1, 1, 2, 100000]), 1, 'SAME')", "6,400,000 elements", slug=LIMIT),
    call("tf.nn.conv2d(tf.ones([1, 512, 512, 16]), tf.ones([5, 5, 16, 16]), 1, 'SAME')", "multiply-adds", slug=LIMIT),
    call(
        "tf.nn.conv2d(img, tf.ones([3, 3, 2, 4]), 1, [[0, 0], [10**6, 10**6], [0, 0], [0, 0]])", "elements", slug=LIMIT
    ),
    call("tf.nn.depthwise_conv2d(img, tf.ones([3, 3, 2, 10**5]), [1, 1, 1, 1], 'SAME')", "elements", slug=LIMIT),
    call("tf.nn.conv1d(tf.ones([1, 16, 2]), tf.ones([3, 2, 300000]), 1, 'SAME')", "elements", slug=LIMIT),
    call("tf.nn.max_pool2d(img, 10**5, 1, 'SAME')", "multiply-adds", slug=LIMIT),
    call("tf.nn.avg_pool2d(tf.ones([1, 2048, 2048, 1]), 64, 1, 'SAME')", "multiply-adds", slug=LIMIT),
    call("tf.math.segment_max(x, [0, 2**31 - 1])", "elements", slug=LIMIT),
    call("tf.math.unsorted_segment_mean(x, [0, 1], 1099511627776)", "elements", slug=LIMIT),
    call("tf.nn.embedding_lookup(x, tf.zeros([3000000], tf.int32))", "9,000,000 elements", slug=LIMIT),
    call("tf.split(tf.zeros([100000]), 100000)", "100,000 tensors", slug=LIMIT),
    call("tf.unstack(tf.zeros([100000]))", "100,000 tensors", slug=LIMIT),
    call("tf.tensordot(tf.ones([3000]), tf.ones([3000]), 0)", "9,000,000 elements", slug=LIMIT),
    call("tf.tensordot(tf.ones([2048, 2048]), tf.ones([2048, 2048]), 1)", "multiply-adds", slug=LIMIT),
]


@pytest.mark.parametrize("case", [*OPS, *LIMITS], ids=[case.name for case in [*OPS, *LIMITS]])
def test_hostile_call_of_a_new_op_is_a_located_problem(client: TestClient, case: Hostile) -> None:
    started = time.perf_counter()
    problem = assert_problem(send(client, case), case)
    assert problem["errors"][0]["loc"] == ["body", "program", "line 2", f"col {problem['column']}"]
    if case.slug == LIMIT:
        assert time.perf_counter() - started < 5.0  # refused before TensorFlow allocates or computes


def post(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(TAPE, json=body)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def test_nan_flows_as_in_tensorflow(client: TestClient) -> None:
    """NaN made inside a program (JSON cannot carry one in) meets the no-NaN ops as it does in TensorFlow."""
    program = (
        "n = tf.math.log(x - 3.0)\n"  # NaN where x < 3
        "a = tf.math.multiply_no_nan(n, x * 0.0)\n"
        "b = tf.math.divide_no_nan(n, x * 0.0)\n"
        "c = tf.math.xlogy(x * 0.0, n)\n"
        "d = tf.math.segment_sum(n, [0, 0, 1])\n"
        "e = tf.nn.max_pool2d(tf.reshape(n, [1, 3, 1, 1]), 2, 1, 'SAME')"
    )
    body = {
        "program": program,
        "inputs": {"x": {"value": [1.0, 4.0, 5.0]}},
        "watch": ["x"],
        "compute": [{"kind": "gradient", "target": "a", "sources": ["x"]}],
    }
    document = post(client, body)
    x = tf.constant([1.0, 4.0, 5.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        n = tf.math.log(x - 3.0)
        expected = {
            "a": tf.math.multiply_no_nan(n, x * 0.0),
            "b": tf.math.divide_no_nan(n, x * 0.0),
            "c": tf.math.xlogy(x * 0.0, n),
            "d": tf.math.segment_sum(n, [0, 0, 1]),
            "e": tf.nn.max_pool2d(tf.reshape(n, [1, 3, 1, 1]), 2, 1, "SAME"),
        }
    gradient = tape.gradient(expected["a"], x)
    for name, value in expected.items():
        np.testing.assert_array_equal(decoded(document["values"][name]), value.numpy(), err_msg=name)
    np.testing.assert_array_equal(decoded(document["results"][0]["values"][0]), gradient.numpy())
    assert np.isnan(decoded(document["values"]["b"])).sum() == 0 and np.isnan(decoded(document["values"]["d"])).any()


def decoded(tensor: dict[str, Any]) -> np.ndarray:
    """A response tensor as float32, its "NaN" strings as NaN."""
    flat = np.asarray(tensor["values"], dtype=object).reshape(-1)
    return np.array([np.nan if v == "NaN" else v for v in flat], dtype=np.float32).reshape(tensor["shape"])
