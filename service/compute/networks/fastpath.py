"""A concrete function called as the one op it is registered as, skipping `ConcreteFunction.__call__`.

Why this exists: `ConcreteFunction.__call__` binds its arguments in Python (the structured signature, nest
flattening, captured inputs, the tape and forward-accumulator checks) before it ends in
`AtomicFunction.call_flat` -> `Context.call_function`, which runs the function's op by name. For a network
the size of the seed's that binding is a large share of the whole call, paid on every request. A function
of one input tensor, one output tensor and no captures needs none of it: `direct_call` runs that op
itself, with the call options `__call__` would pass.

What it relies on, all private to TensorFlow (tests/compute/test_fastpath.py asserts each exists and that
the answers equal `__call__`'s bit for bit, so an upgrade that changes them fails there, loudly):

* `ConcreteFunction._inference_function`, the `AtomicFunction`, with `.name` and `.function_type.flat_outputs`;
* `ConcreteFunction.captured_inputs`;
* `tensorflow.python.eager.context.context().function_call_options.as_attrs()`;
* `tensorflow.python.eager.execute.execute(name, num_outputs, inputs, attrs, ctx)`.

When any is missing `direct_call` answers None and the caller uses `ConcreteFunction.__call__`.
Only for functions called without gradients: the op runs outside any tape.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy.typing as npt
import tensorflow as tf
from tensorflow.python.eager import context as tf_context
from tensorflow.python.eager import execute as tf_execute

Array = npt.NDArray[Any]


def public_call(concrete: Any, dtype: str) -> Callable[[Array], Array]:
    """`concrete(packed)` through `ConcreteFunction.__call__`, the answer as numpy."""
    tf_dtype = tf.as_dtype(dtype)

    def call(packed: Array) -> Array:
        result: Array = concrete(tf.constant(packed, tf_dtype)).numpy()
        return result

    return call


def direct_call(concrete: Any, dtype: str) -> Callable[[Array], Array] | None:
    """`concrete(packed)` as its registered op, for a function of one `dtype` tensor to one tensor without
    captures; None when the function is not of that kind or this TensorFlow lacks the pieces (see above)."""
    try:
        atomic = concrete._inference_function
        name = atomic.name.decode() if isinstance(atomic.name, bytes) else str(atomic.name)
        context = tf_context.context()
        attrs = tuple(itertools.chain(*context.function_call_options.as_attrs().items()))
        execute = tf_execute.execute
        if concrete.captured_inputs or len(atomic.function_type.flat_outputs) != 1:
            return None
    except AttributeError:
        return None
    tf_dtype = tf.as_dtype(dtype)

    def call(packed: Array) -> Array:
        (result,) = execute(name, num_outputs=1, inputs=[tf.constant(packed, tf_dtype)], attrs=attrs, ctx=context)
        array: Array = result.numpy()
        return array

    return call


def fastest_call(concrete: Any, dtype: str) -> Callable[[Array], Array]:
    """`direct_call` where it applies, else `public_call`."""
    return direct_call(concrete, dtype) or public_call(concrete, dtype)
