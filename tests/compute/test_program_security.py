"""The tape-program interpreter under attack: escape attempts and memory/time bombs are refused fast."""

from __future__ import annotations

import ast
import gc
import pathlib
import time
from typing import Any

import numpy as np
import pytest

import service.compute
from service.adapters.errors import located
from service.compute.errors import InvalidInput, LimitExceeded, ProgramError, ProgramLimitExceeded
from service.compute.program import ComputeRequest, TapeInput
from service.compute.program.parse import parse_program
from service.compute.program.runner import run_tape

FAST = 1.0  # seconds

INPUTS = {
    "x": TapeInput(np.array([1.0, 2.0, 3.0], dtype=np.float32)),
    "y": TapeInput(np.array([0, 1], dtype=np.int32)),
}


def refused(program: str, **options: Any) -> tuple[InvalidInput, float]:
    """The refusal and the fastest of up to three timed tries.

    Noise only adds time: a collector pass over the garbage of earlier tests, or a neighbour on a shared
    machine, once made a refusal twenty times slower than it is alone. So the garbage is collected before
    each try, and a try over FAST is repeated; every try must be refused.
    """
    seconds: list[float] = []
    for _ in range(3):
        gc.collect()
        started = time.perf_counter()
        with pytest.raises(InvalidInput) as error, located():
            run_tape(INPUTS, program, compute=[], **options)
        seconds.append(time.perf_counter() - started)
        if seconds[-1] < FAST:
            break
    return error.value, min(seconds)


# (program, line, column, words in the message); line None where no position is meaningful
ESCAPES: list[tuple[str, int | None, int | None, str]] = [
    ("a = ().__class__.__bases__[0].__subclasses__()", 1, 5, "dunder"),
    ("a = x.__class__", 1, 5, "dunder"),
    ("a = tf.ones(1).numpy().__class__", 1, 5, "dunder"),
    ("a = tf.exp.__globals__", 1, 5, "dunder"),
    ("a = tf.__dict__", 1, 5, "dunder"),
    ("a = __builtins__", 1, 5, "dunder"),
    ("import os", 1, 1, "import"),
    ("a = 1\nfrom os import system", 2, 1, "import"),
    ("a = __import__('os')", 1, 5, "dunder"),
    ("eval('1 + 1')", 1, 1, "'eval' is not a function"),
    ("exec('a = 1')", 1, 1, "'exec' is not a function"),
    ("a = open('/etc/passwd')", 1, 5, "'open' is not a function"),
    ("a = compile('1', 'f', 'eval')", 1, 5, "'compile' is not a function"),
    ("a = globals()", 1, 5, "'globals' is not a function"),
    ("a = getattr(x, 'numpy')", 1, 5, "'getattr' is not a function"),
    ("setattr(x, 'a', 1)", 1, 1, "'setattr' is not a function"),
    ("a = vars()", 1, 5, "'vars' is not a function"),
    ("a = ｅｖａｌ('1')", 1, 5, "'eval' is not a function"),  # NFKC folds the look-alike to eval
    ("a = tf.io.read_file('/etc/passwd')", 1, 5, "tf.io.read_file is not available"),
    ("tf.io.write_file('/tmp/owned', 'x')", 1, 1, "tf.io.write_file is not available"),
    ("a = tf.py_function(tf.exp, [x], tf.float32)", 1, 5, "tf.py_function is not available"),
    ("a = tf.numpy_function(tf.exp, [x], tf.float32)", 1, 5, "tf.numpy_function is not available"),
    ("a = tf.raw_ops.Exp(x=x)", 1, 5, "tf.raw_ops.Exp is not available"),
    ("a = tf.compat.v1.Session()", 1, 5, "tf.compat.v1.Session is not available"),
    ("a = tf.saved_model.load('/tmp')", 1, 5, "tf.saved_model.load is not available"),
    ("a = tf.keras.layers.Dense(2)", 1, 5, "tf.keras.layers.Dense is not available"),
    ("a = tf.random.normal([2])", 1, 5, "random numbers are not available"),
    ("tf.random.set_seed(1)", 1, 1, "not available"),
    ("a = tf.Variable(1.0)", 1, 5, "declare variables as inputs"),
    ("a = tf.GradientTape()", 1, 5, "the request sets up the tape"),
    ("tf.print(x)", 1, 1, "tf.print is not available"),
    ("a = tf.debugging.check_numerics(x, 'm')", 1, 5, "tf.debugging.check_numerics is not available"),
    ("a = tf.load_op_library('/tmp/x.so')", 1, 5, "tf.load_op_library is not available"),
    ("a = tf", 1, 5, "namespace"),
    ("f = lambda v: v", 1, 5, "lambda"),
    ("a = [v for v in [1.0, 2.0]]", 1, 5, "list comprehension"),
    ("a = tf.reduce_sum(v for v in [1.0])", 1, 18, "generator expression"),
    ("a = {1: 2}", 1, 5, "dict"),
    ("def f():\n    return 1", 1, 1, "def"),
    ("@tf.function\ndef f():\n    return x", 2, 1, "def"),
    ("async def f():\n    pass", 1, 1, "async def"),
    ("class A:\n    pass", 1, 1, "class"),
    ("while True:\n    pass", 1, 1, "while loop"),
    ("for i in [1]:\n    pass", 1, 1, "for loop"),
    ("with tf.GradientTape() as g:\n    a = x", 1, 1, "with block"),
    ("try:\n    a = 1\nexcept Exception:\n    pass", 1, 1, "try"),
    ("if True:\n    a = 1", 1, 1, "if statement"),
    ("global a", 1, 1, "global"),
    ("a = f'{x}'", 1, 5, "f-string"),
    ("a = 'tf.exp(x)'", 1, 5, "strings are not values"),
    ("a = tf.exp(*[x])", 1, 12, "starred"),
    ("a = tf.reduce_sum(x, **{'axis': 0})", 1, 22, "**kwargs"),
    ("a = tf.reduce_sum(x, axis={0})", 1, 27, "set"),
    ("a = tf.reduce_sum(x, **k)", 1, 22, "**kwargs"),
    ("a = x.shape", 1, 5, "attribute access"),
    ("a = x.assign(x)", 1, 5, "method .assign()"),
    ("a = (b := x)", 1, 6, ":="),
    ("del x", 1, 1, "del"),
    ("a = x if True else x", 1, 5, "conditional expression"),
    ("a = x and x", 1, 5, "and/or"),
    ("a = b'abc'", 1, 5, "bytes"),
    ("a = x[x]", 1, 7, "subscripts take integer constants"),
    ("x[0] = 1.0", 1, 1, "item assignment"),
    ("raise ValueError", 1, 1, "raise"),
    ("assert False", 1, 1, "assert"),
    ("print(open('/etc/passwd'))", 1, 7, "'open' is not a function"),
    ("a = x.watch(x)", 1, 5, "only allowed as a statement"),
    ("g.gradient(x, x)", 1, 1, "compute entries"),
    ("a = 1 < 2 < 3", 1, 5, "chained comparisons"),
    ("a = 1 % 2", 1, 5, "operator Mod"),
    ("a = 1; import os", 1, 8, "import"),
    ("tf = 1", 1, 1, "reserved"),
    ("a = x\n__class__ = a", 2, 1, "dunder"),
]


@pytest.mark.parametrize(("program", "line", "column", "words"), ESCAPES, ids=[e[0][:40] for e in ESCAPES])
def test_escape_attempts_are_program_errors(program: str, line: int | None, column: int | None, words: str) -> None:
    error, seconds = refused(program)
    assert isinstance(error, ProgramError)
    assert seconds < FAST
    assert (error.line, error.column) == (line, column)
    assert words in error.message


def test_escape_attempts_are_refused_statically() -> None:
    for program, *_ in ESCAPES:
        with pytest.raises(ProgramError):
            parse_program(program)


def test_bad_input_names_cannot_smuggle_dunders() -> None:
    for name in ["__builtins__", "__class__", "tf", "ｘ"]:
        with pytest.raises(InvalidInput) as error, located():
            run_tape({name: INPUTS["x"]}, "a = 1.0", compute=[])
        assert error.value.loc == ("body", "inputs", name)


def test_the_interpreter_never_uses_eval_exec_compile_or_getattr() -> None:
    package = pathlib.Path(service.compute.__file__).parent
    forbidden = {"eval", "exec", "compile", "getattr", "setattr", "__import__", "globals", "vars"}
    paths = sorted(package.glob("program/*.py"))
    assert paths
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            assert not (isinstance(node, ast.Name) and node.id in forbidden), (path.name, node.id)


# (program, expected error class, line) -- each a fast 422, never an allocation
DOUBLING = "a = tf.ones(1)\n" + "a = tf.concat([a, a], 0)\n" * 40
LIST_DOUBLING = "a = [1.0, 1.0]\n" + "a = [a, a]\n" * 30
BOMBS: list[tuple[str, type[InvalidInput], int | None]] = [
    ("a = tf.ones([100000, 100000])", ProgramLimitExceeded, 1),
    ("a = tf.zeros([1048576, 1048576], tf.float64)", ProgramLimitExceeded, 1),
    ("a = tf.fill([50000, 50000], 1.0)", ProgramLimitExceeded, 1),
    ("a = tf.tile(x, [100000, 100000])", ProgramLimitExceeded, 1),
    ("a = tf.one_hot(y, depth=1000000000)", ProgramLimitExceeded, 1),
    ("a = tf.range(1000000000000)", ProgramLimitExceeded, 1),
    ("a = tf.linspace(0., 1., 10000000000)", ProgramLimitExceeded, 1),
    ("a = tf.eye(1000000)", ProgramLimitExceeded, 1),
    ("a = tf.linalg.diag(tf.ones([3000]))", ProgramLimitExceeded, 1),
    ("a = tf.broadcast_to(x, [100000, 100000, 3])", ProgramLimitExceeded, 1),
    ("a = tf.constant(1.0, shape=[100000, 100000])", ProgramLimitExceeded, 1),
    ("i = tf.zeros([3000], tf.int32)\np = tf.ones([1, 3000])\ng = tf.gather(p, i)", ProgramLimitExceeded, 3),
    ("a = tf.ones([100000, 1]) + tf.ones([1, 100000])", ProgramLimitExceeded, 1),
    ("a = tf.where(tf.ones([100000, 1]) > 0, 1.0, tf.ones([1, 100000]))", ProgramLimitExceeded, 1),
    ("a = tf.matmul(tf.ones([100000, 1]), tf.ones([1, 100000]))", ProgramLimitExceeded, 1),
    ("a = tf.ones([2048, 2048])\nb = a @ a", ProgramLimitExceeded, 2),
    (DOUBLING, ProgramLimitExceeded, 24),
    (LIST_DOUBLING, ProgramLimitExceeded, 15),
    ("a = 10 ** 10 ** 10", ProgramError, 1),
    ("a = 2.0 ** 100000", ProgramError, 1),
    ("a = [1.0] * 100000000", ProgramError, 1),
    ("a = " + "(" * 9990 + "x" + ")" * 9990, ProgramError, 1),
    ("a = " + "-" * 15000 + "x", ProgramError, None),
    ("a = x" + " + x" * 100, ProgramLimitExceeded, 1),
    ("a = 1.0\n" * 600, LimitExceeded, None),
    ("a = 1.0\n" * 5_000_000, LimitExceeded, None),
]


@pytest.mark.parametrize(("program", "kind", "line"), BOMBS, ids=[f"{b[0][:30]}-{len(b[0])}" for b in BOMBS])
def test_bombs_are_refused_fast(program: str, kind: type[InvalidInput], line: int | None) -> None:
    error, seconds = refused(program)
    assert isinstance(error, kind), error
    assert seconds < FAST
    if line is not None:
        assert isinstance(error, ProgramError) and error.line == line
    elif not isinstance(error, ProgramError):
        assert error.loc == ("body", "program")


def test_total_budget_bounds_a_long_chain_of_large_tensors() -> None:
    # each tensor is within the limit, but the tape would keep all of them alive
    program = "a = tf.ones([256, 256])\n" + "".join(f"b{i} = a * 2.0\n" for i in range(40))
    error, seconds = refused(program, max_elements=65_536)
    assert isinstance(error, ProgramLimitExceeded)
    assert seconds < FAST
    assert error.line == 32  # 31 tensors of 65,536 plus the inputs fill 32 × 65,536
    assert "total" in error.message


def test_work_budget_bounds_a_long_chain_of_products() -> None:
    # each product is within the limits, but the worker cannot interrupt a run once it started
    program = "a = tf.ones([64, 64])\n" + "".join(f"b{i} = a @ a\n" for i in range(40))
    error, seconds = refused(program, max_elements=4096)
    assert isinstance(error, ProgramLimitExceeded)
    assert seconds < FAST
    assert error.line == 17  # 16 products of 64³ multiply-adds fill 1024 × 4096
    assert "element operations" in error.message


def test_tape_result_bombs_are_refused_fast() -> None:
    program = "a = tf.ones([2048, 2048])\ns = tf.reduce_sum(a)"
    for request in [
        ComputeRequest("jacobian", "a", ("a",)),
        ComputeRequest("hessian", "s", ("a",)),
        ComputeRequest("batch_jacobian", "a", ("a",)),
    ]:
        started = time.perf_counter()
        with pytest.raises(LimitExceeded) as error, located():
            run_tape({}, program + "\ng.watch(a)", compute=[request], persistent=True)
        assert time.perf_counter() - started < FAST
        assert error.value.loc == ("body", "compute", 0)


def test_still_healthy_after_the_bombs() -> None:
    for program, *_ in BOMBS[:5]:
        refused(program)
    run = run_tape(
        {"x": INPUTS["x"]},
        "s = tf.reduce_sum(x * x)",
        compute=[ComputeRequest("gradient", "s", ("x",))],
        watch=["x"],
    )
    gradient = run.results[0].values[0]
    assert gradient is not None
    np.testing.assert_allclose(gradient, [2.0, 4.0, 6.0])
