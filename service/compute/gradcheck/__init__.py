"""Gradient checks (API.md §5): TensorFlow autodiff against central finite differences and a caller's claim.

The seed recomputed dL/dW "pen-and-paper" with numpy and compared it with the tape by eye. A check here
does that three ways and reports honest error figures: autodiff (the service's own gradients), central
finite differences (L(θ + ε·eₖ) − L(θ − ε·eₖ)) / (2ε) for every element θₖ of every source, and an
optional claimed gradient, compared with autodiff. Finite differences never take a gradient: they only
evaluate the loss at perturbed values. The divisor is the step actually taken, fl(θ + ε) − fl(θ − ε),
not 2ε: in float32 the two differ.

By role:

* `results`: comparisons, `SourceCheck`, `GradientCheck` and the verdict; numpy only.
* `checks`: `CheckOptions` and `TapeCheck` (a check's arguments, keyword-built), the shared checks and
  central differences; numpy only.
* `network`: `check_network`, batched forward passes of a network problem (TensorFlow).
* `tape`: `check_tape`, a tape program re-run per perturbation (TensorFlow).

This package exports the numpy side; the checks themselves are imported from `network` and `tape` by the
worker's engines.
"""

from service.compute.gradcheck.checks import (
    DEFAULT_ATOL,
    DEFAULT_EPSILON,
    DEFAULT_RTOL,
    FD_CHUNK_ELEMENTS,
    MAX_FD_ELEMENTS,
    TAPE_FD_MAX_ELEMENTS,
    CheckOptions,
    TapeCheck,
)
from service.compute.gradcheck.results import (
    VERDICT_BANDS,
    Comparison,
    GradientCheck,
    SourceCheck,
    compare,
    verdict_band,
)

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_EPSILON",
    "DEFAULT_RTOL",
    "FD_CHUNK_ELEMENTS",
    "MAX_FD_ELEMENTS",
    "TAPE_FD_MAX_ELEMENTS",
    "VERDICT_BANDS",
    "CheckOptions",
    "Comparison",
    "GradientCheck",
    "SourceCheck",
    "TapeCheck",
    "compare",
    "verdict_band",
]
