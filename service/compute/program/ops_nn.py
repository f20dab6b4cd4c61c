"""The op table, neural-network half: convolutions and pooling, losses, embedding lookups and segment
reductions. Each entry is an `OpSpec` built by keyword; add a function by adding one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from service.compute.program import sizes, windows
from service.compute.program.opspec import OpSpec, params, with_choices

PADDING = ("SAME", "VALID")
"""Padding as a string; convolutions (but conv1d) and pools also take explicit [before, after] pairs."""


IMAGE_FORMATS = ("NHWC", "NCHW")
POOL = params("input", "ksize", "strides", "padding", data_format="NHWC")


def window_op(
    *,
    name: str,
    fn: Callable[..., Any],
    parameters: Any,
    summary: str,
    rule: Callable[..., windows.Window],
    data: tuple[str, ...] = ("input",),
    formats: tuple[str, ...] = IMAGE_FORMATS,
) -> OpSpec:
    """A sliding-window op `tf.nn.<name>`, sized and costed by its window `rule`."""
    size, work = windows.sized(rule)
    return OpSpec(
        fn=fn,
        tf_names=(f"tf.nn.{name}",),
        params=with_choices(parameters, padding=PADDING, data_format=formats),
        summary=summary,
        size=size,
        work=work,
        data=data,
    )


def convolution(
    *,
    name: str,
    fn: Callable[..., Any],
    summary: str,
    spatial: int = 2,
    filters: str = "filters",
    depthwise: bool = False,
) -> OpSpec:
    """A convolution `tf.nn.<name>` of `input` with `filters` (k..., in, out or multiplier), in TensorFlow's
    signature: `stride` for one spatial axis, `strides` for two; a depthwise one has no default data_format."""
    strides = "stride" if spatial == 1 else "strides"
    formats = ("NWC", "NCW") if spatial == 1 else IMAGE_FORMATS
    return window_op(
        name=name,
        fn=fn,
        parameters=params(
            "input", filters, strides, "padding", data_format=None if depthwise else formats[0], dilations=None
        ),
        summary=summary,
        rule=windows.convolution(spatial, strides, filters, depthwise=depthwise),
        data=("input", filters),
        formats=formats,
    )


def pool(*, name: str, fn: Callable[..., Any], summary: str) -> OpSpec:
    """A 2-D pooling op `tf.nn.<name>` of `input` over ksize windows."""
    return window_op(name=name, fn=fn, parameters=POOL, summary=summary, rule=windows.pooling)


def loss(*, name: str, fn: Callable[..., Any], parameters: Any, summary: str, data: tuple[str, ...]) -> OpSpec:
    """A loss `tf.nn.<name>`: its result is no larger than its arguments."""
    return OpSpec(fn=fn, tf_names=(f"tf.nn.{name}",), params=parameters, summary=summary, data=data)


def segment(*, name: str, fn: Callable[..., Any], what: str, unsorted: bool = False) -> OpSpec:
    """A segment reduction of `data` by `segment_ids` (sorted ones; or any, into `num_segments` rows)."""
    return OpSpec(
        fn=fn,
        tf_names=(f"tf.math.{name}",),
        params=params("data", "segment_ids", "num_segments") if unsorted else params("data", "segment_ids"),
        summary=(
            f"The {what} of data's rows per segment id, into num_segments rows (ids may come in any order; "
            "negative ids are dropped)."
            if unsorted
            else f"The {what} of data's rows per segment id; the ids are sorted, one output row per id up to "
            "the largest."
        ),
        size=sizes.unsorted_segments if unsorted else sizes.segments,
        data=("data",),
    )


NN: tuple[OpSpec, ...] = (
    # convolutions and pooling
    convolution(
        name="conv1d",
        fn=tf.nn.conv1d,
        summary="1-D convolution of input (batch, width, channels) with filters (width, in, out).",
        spatial=1,
    ),
    convolution(
        name="conv2d",
        fn=tf.nn.conv2d,
        summary="2-D convolution of input (batch, height, width, channels) with filters (height, width, in, out).",
    ),
    convolution(
        name="depthwise_conv2d",
        fn=tf.nn.depthwise_conv2d,
        summary="Each input channel convolved with its own filters (height, width, in, multiplier); "
        "strides is a list of 4.",
        filters="filter",
        depthwise=True,
    ),
    pool(name="max_pool2d", fn=tf.nn.max_pool2d, summary="The largest entry of each ksize window."),
    pool(
        name="avg_pool2d",
        fn=tf.nn.avg_pool2d,
        summary="The mean of each ksize window (SAME padding averages the entries inside the input only).",
    ),
    # losses
    loss(
        name="softmax_cross_entropy_with_logits",
        fn=tf.nn.softmax_cross_entropy_with_logits,
        parameters=params("labels", "logits", axis=-1),
        summary="-Σ labels · log_softmax(logits) along axis; differentiable in labels and logits.",
        data=("labels", "logits"),
    ),
    loss(
        name="sparse_softmax_cross_entropy_with_logits",
        fn=tf.nn.sparse_softmax_cross_entropy_with_logits,
        parameters=params("labels", "logits"),
        summary="-log_softmax(logits)[labels] for integer class labels (one per row of logits).",
        data=("logits",),
    ),
    loss(
        name="sigmoid_cross_entropy_with_logits",
        fn=tf.nn.sigmoid_cross_entropy_with_logits,
        parameters=params(labels=None, logits=None),
        summary="Element-wise logistic loss max(logits, 0) - logits · labels + log(1 + e^-|logits|).",
        data=("labels", "logits"),
    ),
    loss(name="l2_loss", fn=tf.nn.l2_loss, parameters=params("t"), summary="Σ t² / 2.", data=("t",)),
    # lookups and segments
    OpSpec(
        fn=tf.nn.embedding_lookup,
        tf_names=("tf.nn.embedding_lookup",),
        params=params("params", "ids", max_norm=None),
        summary="Rows of params (or of a list of shards, split by 'div') at ids; its gradient is densified.",
        size=sizes.embedding_lookup,
        data=("params",),
    ),
    segment(name="segment_sum", fn=tf.math.segment_sum, what="sum"),
    segment(name="segment_mean", fn=tf.math.segment_mean, what="mean"),
    segment(name="segment_max", fn=tf.math.segment_max, what="maximum (0 for an empty segment)"),
    segment(name="segment_min", fn=tf.math.segment_min, what="minimum (0 for an empty segment)"),
    segment(name="unsorted_segment_sum", fn=tf.math.unsorted_segment_sum, what="sum", unsorted=True),
    segment(name="unsorted_segment_mean", fn=tf.math.unsorted_segment_mean, what="mean", unsorted=True),
    segment(
        name="unsorted_segment_max",
        fn=tf.math.unsorted_segment_max,
        what="maximum (the dtype's lowest value for an empty segment)",
        unsorted=True,
    ),
    segment(
        name="unsorted_segment_min",
        fn=tf.math.unsorted_segment_min,
        what="minimum (the dtype's highest value for an empty segment)",
        unsorted=True,
    ),
)
