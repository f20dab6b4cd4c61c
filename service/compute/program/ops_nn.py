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


def window_op(
    *,
    name: str,
    fn: Callable[..., Any],
    tf_names: tuple[str, ...],
    parameters: Any,
    summary: str,
    rule: Callable[..., windows.Window],
    data: tuple[str, ...],
    formats: tuple[str, ...],
) -> OpSpec:
    """A sliding-window op, sized and costed by its window `rule`."""
    size, work = windows.sized(rule)
    return OpSpec(
        name=name,
        fn=fn,
        tf_names=tf_names,
        params=with_choices(parameters, padding=PADDING, data_format=formats),
        summary=summary,
        size=size,
        work=work,
        data=data,
    )


def segment(*, name: str, fn: Callable[..., Any], what: str, unsorted: bool = False) -> OpSpec:
    """A segment reduction of `data` by `segment_ids` (sorted ones; or any, into `num_segments` rows)."""
    return OpSpec(
        name=name,
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
    window_op(
        name="conv1d",
        fn=tf.nn.conv1d,
        tf_names=("tf.nn.conv1d",),
        parameters=params("input", "filters", "stride", "padding", data_format="NWC", dilations=None),
        summary="1-D convolution of input (batch, width, channels) with filters (width, in, out).",
        rule=windows.convolution(1, "stride", "filters"),
        data=("input", "filters"),
        formats=("NWC", "NCW"),
    ),
    window_op(
        name="conv2d",
        fn=tf.nn.conv2d,
        tf_names=("tf.nn.conv2d",),
        parameters=params("input", "filters", "strides", "padding", data_format="NHWC", dilations=None),
        summary="2-D convolution of input (batch, height, width, channels) with filters (height, width, in, out).",
        rule=windows.convolution(2, "strides", "filters"),
        data=("input", "filters"),
        formats=("NHWC", "NCHW"),
    ),
    window_op(
        name="depthwise_conv2d",
        fn=tf.nn.depthwise_conv2d,
        tf_names=("tf.nn.depthwise_conv2d",),
        parameters=params("input", "filter", "strides", "padding", data_format=None, dilations=None),
        summary="Each input channel convolved with its own filters (height, width, in, multiplier); "
        "strides is a list of 4.",
        rule=windows.convolution(2, "strides", "filter", depthwise=True),
        data=("input", "filter"),
        formats=("NHWC", "NCHW"),
    ),
    window_op(
        name="max_pool2d",
        fn=tf.nn.max_pool2d,
        tf_names=("tf.nn.max_pool2d",),
        parameters=params("input", "ksize", "strides", "padding", data_format="NHWC"),
        summary="The largest entry of each ksize window.",
        rule=windows.pooling,
        data=("input",),
        formats=("NHWC", "NCHW"),
    ),
    window_op(
        name="avg_pool2d",
        fn=tf.nn.avg_pool2d,
        tf_names=("tf.nn.avg_pool2d",),
        parameters=params("input", "ksize", "strides", "padding", data_format="NHWC"),
        summary="The mean of each ksize window (SAME padding averages the entries inside the input only).",
        rule=windows.pooling,
        data=("input",),
        formats=("NHWC", "NCHW"),
    ),
    # losses
    OpSpec(
        name="softmax_cross_entropy_with_logits",
        fn=tf.nn.softmax_cross_entropy_with_logits,
        tf_names=("tf.nn.softmax_cross_entropy_with_logits",),
        params=params("labels", "logits", axis=-1),
        summary="-Σ labels · log_softmax(logits) along axis; differentiable in labels and logits.",
        size=sizes.no_growth,
        data=("labels", "logits"),
    ),
    OpSpec(
        name="sparse_softmax_cross_entropy_with_logits",
        fn=tf.nn.sparse_softmax_cross_entropy_with_logits,
        tf_names=("tf.nn.sparse_softmax_cross_entropy_with_logits",),
        params=params("labels", "logits"),
        summary="-log_softmax(logits)[labels] for integer class labels (one per row of logits).",
        size=sizes.no_growth,
        data=("logits",),
    ),
    OpSpec(
        name="sigmoid_cross_entropy_with_logits",
        fn=tf.nn.sigmoid_cross_entropy_with_logits,
        tf_names=("tf.nn.sigmoid_cross_entropy_with_logits",),
        params=params(labels=None, logits=None),
        summary="Element-wise logistic loss max(logits, 0) - logits · labels + log(1 + e^-|logits|).",
        size=sizes.no_growth,
        data=("labels", "logits"),
    ),
    OpSpec(
        name="l2_loss",
        fn=tf.nn.l2_loss,
        tf_names=("tf.nn.l2_loss",),
        params=params("t"),
        summary="Σ t² / 2.",
        size=sizes.no_growth,
        data=("t",),
    ),
    # lookups and segments
    OpSpec(
        name="embedding_lookup",
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
