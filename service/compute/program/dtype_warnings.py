"""TensorFlow's own warnings for tensors that cannot carry gradients, worded as TensorFlow words them.

TensorFlow answers a gradient by or of an integer (or bool) tensor with None and a log line, and
watches such a tensor with a warning; the tape language answers the same and returns those lines as
`warnings`. The wording is copied from `tf.GradientTape.watch` / `.gradient` and
`tf.autodiff.ForwardAccumulator` (the tests read it back from TensorFlow's source). TensorFlow says
nothing for a non-float jvp target; `JVP_TARGET` words that case the same way.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

WATCHED_TENSOR = "The dtype of the watched tensor must be floating (e.g. tf.float32), got %r"
"""tf.GradientTape.watch on a non-float tensor (TensorFlow logs it as a warning and watches it anyway)."""

GRADIENT_TARGET = (
    "The dtype of the target tensor must be floating (e.g. tf.float32) when calling GradientTape.gradient, got %r"
)
"""tf.GradientTape.gradient (and jacobian, batch_jacobian, which call it) of a non-float target."""

GRADIENT_SOURCE = (
    "The dtype of the source tensor must be floating (e.g. tf.float32) when calling GradientTape.gradient, got %r"
)
"""tf.GradientTape.gradient by a non-float source."""

WATCHED_PRIMAL = "The dtype of the watched primal must be floating (e.g. tf.float32), got %r"
"""tf.autodiff.ForwardAccumulator given a non-float primal (a jvp source)."""

JVP_TARGET = (
    "The dtype of the target tensor must be floating (e.g. tf.float32) when calling ForwardAccumulator.jvp, got %r"
)
"""A jvp of a non-float target: TensorFlow returns None without a word; this says why, in its terms."""


def dtype_warning(template: str, tensor: Any) -> str | None:
    """The warning for `tensor` (a tensor or a numpy array) if its dtype is not floating, else None."""
    dtype = tf.as_dtype(tensor.dtype)
    return None if dtype.is_floating else template % (dtype,)


def dtype_warnings(kind: str, target: Any, sources: list[Any]) -> list[str]:
    """What TensorFlow warns about a compute entry of `kind`, in order: the target, then each source."""
    if kind == "jvp":
        found = [dtype_warning(WATCHED_PRIMAL, source) for source in sources]
        found.append(dtype_warning(JVP_TARGET, target))
    else:
        found = [dtype_warning(GRADIENT_TARGET, target)]
        found.extend(dtype_warning(GRADIENT_SOURCE, source) for source in sources)
    return list(dict.fromkeys(w for w in found if w is not None))
