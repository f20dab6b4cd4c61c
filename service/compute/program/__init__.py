"""The tape-program interpreter behind `POST /v1/tape` and `GET /v1/ops`.

A program is Python *syntax*, checked and run by walking its `ast` against one table of constructs;
nothing is ever passed to eval/exec/compile, and no attribute is looked up by a name the user wrote.
Functions come from a fixed table, each with a rule that sizes its result before TensorFlow allocates it.

Where things live:
* A construct (a kind of ast node): one class with `check` (static: ast node -> checked node, or a
  ProgramError naming line and column) and `evaluate` / `execute` / `bind` (one run), in
  `expressions`, `calls` or `statements`; then one entry in `language.TAPE_LANGUAGE`. Node types the
  table does not list are refused.
* An op: one keyword-built `OpSpec` entry in `ops_maths`, `ops_tensors` or `ops_nn`, with a size rule
  from `sizes` (or `windows`, for convolutions and pools; write one if none fits). A parameter taking
  TensorFlow's attribute strings (`padding="SAME"`) lists them as `choices`: strings are values nowhere
  else. `GET /v1/ops` lists the table as it stands.
* Limits: `limits`. Values and shape arithmetic: `values`. The tape and compute entries: `runner`.

Language notes (what `GET /v1/ops` and the README document):
* `print(...)` is accepted as a statement and does nothing; its arguments are checked, not evaluated.
* `<tape>.watch(t)` as a statement watches a tensor the program created (the seed's `g.watch(z)`):
  `<tape>` is any name the program has not bound. The request's `watch` names inputs only.
* `.numpy()` gives the same values as a new constant, detached from the tape, as TensorFlow's numpy
  array would be; so the seed's `L.numpy()` line is harmless.
* `float` is the request's float dtype (float32 by default, as `dtype=float` means in TensorFlow).
  With `float_dtype="float64"`, float64 also replaces float32 wherever TensorFlow would pick float32
  by default: Python floats that meet no float tensor, and tf.ones / zeros / eye / one_hot.
* Calls by plain name always mean the function: a variable named `exp` does not hide `exp(...)`.
* `tf.nn.leaky_relu`'s alpha defaults to 0.2, TensorFlow's own default (the seed's LReLU uses 0.01), and is
  TensorFlow's float32 attribute (in float64, 0.01 acts as 0.009999999776482582, as in-process).
* Functions returning lists (`tf.split`, `tf.unstack`) give a list the program unpacks or subscripts.
* An integer (or bool) target or source answers as `tape.gradient` does (None, or what TensorFlow
  computes), with TensorFlow's log line as a warning; watching one is TensorFlow's warning (`dtype_warnings`).
* Gradients TensorFlow keeps as IndexedSlices (gather, embedding_lookup; a segment sum's jvp) come back dense.

Limits, all checked before TensorFlow allocates: every intermediate ≤ max_elements (creating,
tiling, one-hot, broadcasting, concatenating, gathering, lookup, segment, window and contraction ops
are sized from their arguments); a matmul, tensordot, convolution or pool ≤ WORK_FACTOR × max_elements
multiply-adds; a list-returning op ≤ MAX_LIST_LEAVES tensors; all tensors of one run together
≤ TOTAL_FACTOR × max_elements (the tape keeps them alive), and all its element reads, writes and
multiply-adds ≤ TOTAL_WORK_FACTOR × max_elements.

Errors locate relative to `run_tape`'s arguments: ("program", "line L", "col C"), ("compute", i, ...),
("inputs", name), ...; the HTTP side adds "body".

This package exports the request types, numpy only, so adapters import it without loading TensorFlow. What
needs TensorFlow is imported from its module, in the worker's threads: `runner.run_tape`, `parse.parse_program`
(the construct table holds TensorFlow's functions, so programs are parsed and checked in the worker too) and
`ops.list_ops`.
"""

from __future__ import annotations

from service.compute.program.requests import ComputeRequest, ComputeResult, TapeInput, TapeRun

__all__ = ["ComputeRequest", "ComputeResult", "TapeInput", "TapeRun"]
