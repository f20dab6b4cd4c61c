"""Run a checked program under a GradientTape and answer the request's compute entries.

Tape semantics: gradient / jacobian / batch_jacobian use the main tape, so a non-persistent tape
answers exactly one of them. hessian and jvp re-run the program on tapes / accumulators of their
own and never consume the main tape. A hessian's values are the diagonal blocks d²T/dsᵢ², one per
source, each of shape sᵢ.shape + sᵢ.shape (ask with one source for a full Hessian). A jvp's single
value is Σᵢ Jᵢ·tᵢ (target-shaped), Jᵢ being the total derivative as `gradient` would take it.
A jacobian / hessian block has at most max_elements elements, and its vectorised backward pass
(target elements × the program's largest tensor) at most TOTAL_FACTOR × max_elements.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from service.compute.errors import (
    ComputeError,
    InvalidInput,
    LimitExceeded,
    NonPersistentTapeError,
    TapeSemanticsError,
)
from service.compute.program.dtype_warnings import WATCHED_TENSOR, dtype_warning, dtype_warnings
from service.compute.program.limits import DEFAULT_MAX_ELEMENTS, TOTAL_FACTOR
from service.compute.program.parse import ParsedProgram, parse_program
from service.compute.program.requests import (
    ComputeRequest,
    ComputeResult,
    TapeInput,
    TapeRun,
    check_compute,
    check_inputs,
    check_outputs,
    check_watch,
)
from service.compute.program.run import AssignHook, Run, tensorflow_message
from service.compute.program.values import PyList, describe, element_count, is_tensor, tensor_shape, to_tensorflow

OUTPUT_DTYPES = (tf.float32, tf.float64, tf.int32, tf.int64)
"""The dtypes a program's values are returned in; others (bool, ...) are left out of `values`."""
_NON_PERSISTENT = "A non-persistent GradientTape"


def _float_dtype(name: str) -> Any:
    if name not in ("float32", "float64"):
        raise InvalidInput(f"dtype must be float32 or float64, not {name!r}", ("dtype",))
    return tf.float32 if name == "float32" else tf.float64


def _given_as(given: np.ndarray[Any, Any], dtype: Any, index: int, loc: tuple[str | int, ...], what: str) -> Any:
    """A caller's tensor (output_gradients, tangent) as `dtype`: values beyond its range are the caller's error,
    not an infinity that TensorFlow's cast would make of them."""
    numpy_dtype = np.dtype(dtype.as_numpy_dtype)
    if numpy_dtype.kind == "f" and given.size and float(np.abs(given).max()) > float(np.finfo(numpy_dtype).max):
        raise TapeSemanticsError(f"{what} has values that overflow {dtype.name}; send dtype float64", index, loc)
    return tf.constant(given, dtype=dtype)


def _output_array(value: Any, float_dtype: Any) -> np.ndarray[Any, Any] | None:
    """The value as a numpy array the service can return, or None (bool, dtype, ragged list...)."""
    if isinstance(value, bool) or value is None or isinstance(value, tf.DType):
        return None
    if isinstance(value, float):
        with np.errstate(over="ignore"):  # 1e308 in float32 is inf, as TensorFlow converts it
            return np.asarray(value, dtype=float_dtype.as_numpy_dtype)
    if isinstance(value, int):
        return np.asarray(value, dtype=np.int32 if abs(value) < 2**31 else np.int64)
    if isinstance(value, PyList):
        if value.shape is None:
            return None
        try:
            dtype = float_dtype if value.has_float and not value.has_tensor else None
            value = tf.constant(to_tensorflow(value), dtype=dtype)
        except (ValueError, TypeError, tf.errors.OpError):
            return None
    if is_tensor(value) and value.dtype in OUTPUT_DTYPES:
        return np.asarray(value.numpy())
    return None


def _collect_outputs(
    env: Mapping[str, Any], parsed: ParsedProgram, outputs: Sequence[str] | None, float_dtype: Any
) -> dict[str, np.ndarray[Any, Any]]:
    values: dict[str, np.ndarray[Any, Any]] = {}
    for index, name in enumerate(parsed.assigned_names if outputs is None else outputs):
        array = _output_array(env[name], float_dtype)
        if array is None:
            if outputs is not None:
                raise InvalidInput(
                    f"output {name!r} is {describe(env[name])}; only numeric tensors can be returned "
                    "(cast bool tensors with tf.cast)",
                    ("outputs", index),
                )
            continue
        values[name] = array
    return values


@contextlib.contextmanager
def _tape_errors(index: int) -> Iterator[None]:
    try:
        yield
    except ComputeError:
        raise
    except RuntimeError as error:
        if str(error).startswith(_NON_PERSISTENT):
            raise NonPersistentTapeError(str(error), index) from None
        raise TapeSemanticsError(tensorflow_message(error), index) from error
    except Exception as error:  # TensorFlow's errors: shapes of output_gradients, pfor, ...
        raise TapeSemanticsError(tensorflow_message(error), index) from error


def _to_numpy(value: Any) -> np.ndarray[Any, Any] | None:
    if value is None:
        return None
    if isinstance(value, tf.IndexedSlices):  # gradients through tf.gather on a variable
        value = tf.convert_to_tensor(value)
    return np.asarray(value.numpy())


class TapeRunner:
    """Runs the program (possibly several times) and answers the compute entries."""

    def __init__(
        self,
        parsed: ParsedProgram,
        inputs: Mapping[str, Any],
        *,
        float_dtype: Any,
        max_elements: int,
        watch: Sequence[str],
        watch_accessed_variables: bool,
    ) -> None:
        self.parsed = parsed
        self.inputs = inputs
        self.float_dtype = float_dtype
        self.max_elements = max_elements
        self.watch = watch
        self.watch_accessed_variables = watch_accessed_variables

    def run(self, tapes: Sequence[Any], on_assign: AssignHook | None = None) -> Run:
        for tape in tapes:
            for name in self.watch:
                tape.watch(self.inputs[name])
        run = Run(
            self.inputs,
            float_dtype=self.float_dtype,
            max_elements=self.max_elements,
            tapes=tapes,
            on_assign=on_assign,
        )
        return run.execute(self.parsed.statements)

    # checks on the values of the main run

    @staticmethod
    def tensor(env: Mapping[str, Any], name: str, index: int, role: str) -> Any:
        value = env[name]
        if not is_tensor(value):
            raise TapeSemanticsError(
                f"{role} {name!r} is {describe(value)}, not a tensor; make it one with tf.constant(...)", index
            )
        return value

    def check_size(self, index: int, count: int, what: str, *, vectorised: int = 0, peak: int = 1) -> None:
        if count > self.max_elements:
            raise LimitExceeded(
                f"{what} would have {count:,} elements, above the limit of {self.max_elements:,}",
                ("compute", index),
            )
        if vectorised * peak > TOTAL_FACTOR * self.max_elements:
            raise LimitExceeded(
                f"{what} vectorises the backward pass over {vectorised:,} target elements, and the program's "
                f"largest tensor has {peak:,}: above {TOTAL_FACTOR * self.max_elements:,} elements",
                ("compute", index),
            )

    # compute kinds

    def answer(self, index: int, request: ComputeRequest, tape: Any, main: Run) -> ComputeResult:
        unconnected = tf.UnconnectedGradients.ZERO if request.unconnected == "zero" else tf.UnconnectedGradients.NONE
        target = self.tensor(main.env, request.target, index, "target")
        sources = [self.tensor(main.env, s, index, "source") for s in request.sources]
        target_size = element_count(target)
        if request.kind == "gradient":
            values = self._gradient(index, request, tape=tape, target=target, sources=sources, unconnected=unconnected)
        elif request.kind == "jacobian":
            for name, source in zip(request.sources, sources, strict=True):
                self.check_size(
                    index,
                    target_size * element_count(source),
                    f"the Jacobian of {request.target!r} by {name!r}",
                    vectorised=target_size,
                    peak=main.peak,
                )
            with _tape_errors(index):
                jacobians = tape.jacobian(target, sources, unconnected_gradients=unconnected)
            values = [_to_numpy(j) for j in jacobians]
        elif request.kind == "batch_jacobian":
            values = [
                self._batch_jacobian(
                    index,
                    request,
                    tape=tape,
                    target=target,
                    source=sources[0],
                    unconnected=unconnected,
                    peak=main.peak,
                )
            ]
        elif request.kind == "hessian":
            values = self._hessian(
                index, request, target=target, sources=sources, unconnected=unconnected, peak=main.peak
            )
        else:
            values = [self._jvp(index, request, sources, unconnected)]
        warnings = tuple(dtype_warnings(request.kind, target, sources))
        return ComputeResult(request.kind, request.target, tuple(request.sources), values, warnings)

    def _gradient(
        self, index: int, request: ComputeRequest, *, tape: Any, target: Any, sources: list[Any], unconnected: Any
    ) -> list[np.ndarray[Any, Any] | None]:
        output_gradients = None
        if request.output_gradients is not None:
            given = np.asarray(request.output_gradients)
            if given.shape != tensor_shape(target):
                raise TapeSemanticsError(
                    f"output_gradients has shape {list(given.shape)}, the target {request.target!r} "
                    f"has shape {list(tensor_shape(target))}",
                    index,
                    ("compute", index, "output_gradients"),
                )
            output_gradients = _given_as(
                given, target.dtype, index, ("compute", index, "output_gradients"), "output_gradients"
            )
        with _tape_errors(index):
            gradients = tape.gradient(
                target, sources, output_gradients=output_gradients, unconnected_gradients=unconnected
            )
        return [_to_numpy(g) for g in gradients]

    def _batch_jacobian(
        self, index: int, request: ComputeRequest, *, tape: Any, target: Any, source: Any, unconnected: Any, peak: int
    ) -> np.ndarray[Any, Any] | None:
        target_shape, source_shape = tensor_shape(target), tensor_shape(source)
        if not target_shape or not source_shape or target_shape[0] != source_shape[0]:
            raise TapeSemanticsError(
                f"batch_jacobian needs target and source with the same first (batch) axis; "
                f"{request.target!r} has shape {list(target_shape)}, {request.sources[0]!r} has "
                f"{list(source_shape)}",
                index,
            )
        batch = target_shape[0]
        per_sample = element_count(target) // batch if batch else 0
        self.check_size(
            index,
            element_count(target) * (element_count(source) // batch if batch else 0),
            f"the batch Jacobian of {request.target!r}",
            vectorised=per_sample,
            peak=peak,
        )
        with _tape_errors(index):
            return _to_numpy(tape.batch_jacobian(target, source, unconnected_gradients=unconnected))

    def _hessian(
        self, index: int, request: ComputeRequest, *, target: Any, sources: list[Any], unconnected: Any, peak: int
    ) -> list[np.ndarray[Any, Any] | None]:
        if tensor_shape(target) != ():
            raise TapeSemanticsError(
                f"hessian needs a scalar target; {request.target!r} has shape {list(tensor_shape(target))} "
                "(reduce it with tf.reduce_sum first)",
                index,
            )
        for name, source in zip(request.sources, sources, strict=True):
            size = element_count(source)
            self.check_size(index, size * size, f"the Hessian block of {name!r}", vectorised=size, peak=peak)
        with tf.GradientTape(persistent=True, watch_accessed_variables=self.watch_accessed_variables) as outer:
            with tf.GradientTape(watch_accessed_variables=self.watch_accessed_variables) as inner:
                rerun = self.run((outer, inner))
            rerun_sources = [rerun.env[name] for name in request.sources]
            with _tape_errors(index):
                first = inner.gradient(rerun.env[request.target], rerun_sources, unconnected_gradients=unconnected)
        blocks = []
        with _tape_errors(index):
            for gradient, source in zip(first, rerun_sources, strict=True):
                block = (
                    None if gradient is None else outer.jacobian(gradient, source, unconnected_gradients=unconnected)
                )
                blocks.append(_to_numpy(block))
        return blocks

    def _tangents(self, index: int, request: ComputeRequest, sources: list[Any]) -> list[Any]:
        """One tangent per source, as the source's dtype; None for a non-float source (TensorFlow warns
        and its jvp is None)."""
        tangents: list[Any] = []
        given_tangents = request.tangents or ()
        for position, (name, source, given) in enumerate(zip(request.sources, sources, given_tangents, strict=True)):
            if not source.dtype.is_floating:
                tangents.append(None)
                continue
            tangent = np.asarray(given)
            where = ("compute", index, "tangents", position)
            if tangent.shape != tensor_shape(source):
                raise TapeSemanticsError(
                    f"the tangent for {name!r} has shape {list(tangent.shape)}, the source has "
                    f"{list(tensor_shape(source))}",
                    index,
                    where,
                )
            tangents.append(_given_as(tangent, source.dtype, index, where, f"the tangent for {name!r}"))
        return tangents

    def _jvp(
        self, index: int, request: ComputeRequest, sources: list[Any], unconnected: Any
    ) -> np.ndarray[Any, Any] | None:
        tangents = self._tangents(index, request, sources)
        # a source the program assigns starts its accumulator when its last assignment runs; the inputs
        # share one accumulator (a name listed twice has its tangents summed), as TensorFlow code would
        pending = {
            position: (name, self.parsed.last_assignment[name])
            for position, name in enumerate(request.sources)
            if name in self.parsed.last_assignment and tangents[position] is not None
        }
        from_inputs: dict[str, Any] = {}
        for position, name in enumerate(request.sources):
            if position not in pending and tangents[position] is not None:
                known = from_inputs.get(name)
                from_inputs[name] = tangents[position] if known is None else known + tangents[position]
        with contextlib.ExitStack() as stack:
            accumulators = []

            def start(primal: Any, tangent: Any) -> None:
                with _tape_errors(index):
                    accumulators.append(stack.enter_context(tf.autodiff.ForwardAccumulator(primal, tangent)))

            if from_inputs:
                start([self.inputs[name] for name in from_inputs], list(from_inputs.values()))

            def on_assign(name: str, statement: int, value: Any) -> None:
                for position, (source, last) in list(pending.items()):
                    if source == name and last == statement:
                        del pending[position]
                        start(value, tangents[position])

            rerun = self.run((), on_assign)
        final_target = rerun.env[request.target]
        with _tape_errors(index):
            products = [a.jvp(final_target, unconnected_gradients=unconnected) for a in accumulators]
        # TensorFlow's jvp of some ops (segment_sum, ...) is IndexedSlices, made dense here as for gradients
        present = [tf.convert_to_tensor(p) for p in products if p is not None]
        if not present:
            return None
        return _to_numpy(tf.add_n(present) if len(present) > 1 else present[0])


def run_tape(
    inputs: Mapping[str, TapeInput],
    program: str | ParsedProgram,
    *,
    compute: Sequence[ComputeRequest],
    watch: Sequence[str] = (),
    persistent: bool = False,
    watch_accessed_variables: bool = True,
    outputs: Sequence[str] | None = None,
    float_dtype: str = "float32",
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> TapeRun:
    """Run `program` under `tf.GradientTape(persistent, watch_accessed_variables)` and answer `compute`.

    Inputs become tf.constant (their own dtype) or tf.Variable(trainable=...); the names in `watch`
    are watched before the program runs. Results come in the order of `compute`; `values` holds
    `outputs` (default: every name the program assigns that holds a numeric value, in order).
    """
    parsed = program if isinstance(program, ParsedProgram) else parse_program(program)
    dtype = _float_dtype(float_dtype)
    check_inputs(inputs, max_elements)
    watch_names = check_watch(watch, inputs)
    known = set(inputs) | set(parsed.assigned_names)
    check_compute(compute, known)
    check_outputs(outputs, known)
    tensors = {
        name: tf.Variable(spec.value, trainable=spec.trainable) if spec.variable else tf.constant(spec.value)
        for name, spec in inputs.items()
    }
    runner = TapeRunner(
        parsed,
        tensors,
        float_dtype=dtype,
        max_elements=max_elements,
        watch=watch_names,
        watch_accessed_variables=watch_accessed_variables,
    )
    with tf.GradientTape(persistent=persistent, watch_accessed_variables=watch_accessed_variables) as tape:
        main = runner.run((tape,))
    values = _collect_outputs(main.env, parsed, outputs, dtype)
    results = [runner.answer(index, request, tape, main) for index, request in enumerate(compute)]
    watched = [dtype_warning(WATCHED_TENSOR, tensors[name]) for name in watch_names]
    warnings = [warning for warning in watched if warning is not None] + main.warnings
    return TapeRun(values, results, tuple(dict.fromkeys(warnings)))
