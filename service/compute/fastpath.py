"""Concrete functions called as the op they are registered as, skipping `ConcreteFunction.__call__`.

Why this exists: `ConcreteFunction.__call__` binds its arguments in Python (the structured signature, nest
flattening, captured inputs, the tape and forward-accumulator checks) before it ends in
`AtomicFunction.call_flat` -> `Context.call_function`, which runs the function's op by name. For the seed's
network, or a small served model, that binding is a large share of the whole call, paid on every request.
Two ways run the op themselves, with the call options `__call__` would pass:

* `direct_call`: a function of one input tensor to one output tensor, without captures (a network's packed
  rows);
* `structured_call`: a function of nested tensors (dicts, tuples, lists, flattened in `tf.nest`'s order,
  which is TensorFlow's: dict keys sorted) to nested outputs, Nones among them, with its captured inputs
  (a model's variables) after the arguments, as `__call__` passes them; the outputs packed by the
  function's type, as `AtomicFunction.call_preflattened` packs them.

What they rely on, all private to TensorFlow (tests/compute/test_fastpath.py asserts each exists and that
the answers equal `__call__`'s bit for bit, so an upgrade that changes them fails there, loudly):

* `ConcreteFunction._inference_function`, the `AtomicFunction`, with `.name`,
  `.function_type.flat_outputs`, `.function_type.pack_output` and `.cached_definition.signature.input_arg`;
* `ConcreteFunction.captured_inputs`;
* `tensorflow.python.eager.context.context().function_call_options.as_attrs()`;
* `tensorflow.python.eager.execute.execute(name, num_outputs, inputs, attrs, ctx)`.

When any is missing they answer None and the caller uses `ConcreteFunction.__call__`. Only for functions
called without gradients: the op runs outside any tape.
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


def _op(concrete: Any) -> tuple[Any, str, tuple[Any, ...], Callable[..., Any]]:
    """The function's `AtomicFunction`, its op's name, the call's attributes and TensorFlow's `execute`
    (AttributeError where this TensorFlow lacks a piece)."""
    atomic = concrete._inference_function
    name = atomic.name.decode() if isinstance(atomic.name, bytes) else str(atomic.name)
    attrs = tuple(itertools.chain(*tf_context.context().function_call_options.as_attrs().items()))
    return atomic, name, attrs, tf_execute.execute


def direct_call(concrete: Any, dtype: str) -> Callable[[Array], Array] | None:
    """`concrete(packed)` as its registered op, for a function of one `dtype` tensor to one tensor without
    captures; None when the function is not of that kind or this TensorFlow lacks the pieces (see above)."""
    try:
        atomic, name, attrs, execute = _op(concrete)
        if concrete.captured_inputs or len(atomic.function_type.flat_outputs) != 1:
            return None
    except AttributeError:
        return None
    context = tf_context.context()
    tf_dtype = tf.as_dtype(dtype)

    def call(packed: Array) -> Array:
        (result,) = execute(name, num_outputs=1, inputs=[tf.constant(packed, tf_dtype)], attrs=attrs, ctx=context)
        array: Array = result.numpy()
        return array

    return call


def fastest_call(concrete: Any, dtype: str) -> Callable[[Array], Array]:
    """`direct_call` where it applies, else `public_call`."""
    return direct_call(concrete, dtype) or public_call(concrete, dtype)


def structured_call(concrete: Any) -> Callable[..., Any] | None:
    """`concrete(*args)` as its registered op, for arguments of the structure its signature has (tensors in
    dicts, tuples, lists); None when this TensorFlow lacks the pieces (see above), the function has no
    outputs, or an output carries handle data (a resource or variant, which `__call__` annotates and this
    call would not)."""
    try:
        atomic, name, attrs, execute = _op(concrete)
        outputs = atomic.function_type.flat_outputs
        pack = atomic.function_type.pack_output
        expected = len(atomic.cached_definition.signature.input_arg)
        if not outputs or any(output.dtype._handle_data for output in outputs):
            return None
        list(concrete.captured_inputs)
    except AttributeError:
        return None
    context, count = tf_context.context(), len(outputs)

    def call(*args: Any) -> Any:
        # the captures are read at each call, as `__call__` reads them (a deferred capture is a function)
        flat = [*tf.nest.flatten(args), *concrete.captured_inputs]
        if len(flat) != expected:
            raise ValueError(f"{concrete.name} takes {expected} tensors with its captures; got {len(flat)}")
        return pack(execute(name, num_outputs=count, inputs=flat, attrs=attrs, ctx=context))

    return call
