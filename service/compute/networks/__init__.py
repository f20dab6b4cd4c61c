"""Dense networks on samples (API.md §2): loss, gradients, local gradients and Jacobians.

By role, so that what the adapters need never loads TensorFlow:

* `problem`: `NetworkStructure` (the network), `NetworkSpec` (a request's structure), `NetworkProblem` (its
  arrays), `NetworkResult`; numpy only.
* `prepare`: `prepare_network` validates one request's arrays and fixes its structure, and
  `prepare_small_network` does it in fewer steps for small nested lists; numpy only.
* `packing`: where each array sits in the packed rows a compiled function takes and gives; numpy only.
* `graph`: the TensorFlow function of R requests of one structure, bit for bit the same alone or merged;
  the engine calls it as its registered op (`service.compute.fastpath`).
* `engine`: `NetworkEngine`, the bounded cache of compiled functions; merges problems of one spec into one
  call and splits the answer back. Imported by the worker's engines only.

This package exports what the adapters call; the vocabulary's tuples and the types are in `problem`, the
engine is `service.compute.networks.engine.NetworkEngine`.
"""

from service.compute.networks.prepare import prepare_network, prepare_small_network, seed_problem
from service.compute.networks.problem import SEED_FEATURES, SEED_WEIGHTS, NetworkProblem, NetworkResult

__all__ = [
    "SEED_FEATURES",
    "SEED_WEIGHTS",
    "NetworkProblem",
    "NetworkResult",
    "prepare_network",
    "prepare_small_network",
    "seed_problem",
]
