"""The names are defined once (service.vocabulary), and the schemas stand on JSON alone."""

from __future__ import annotations

import subprocess
import sys
from typing import get_args

from schemas.activations import ActivationsRequest
from schemas.networks import Layer, NetworkRequest
from schemas.tensors import TensorB64, TensorFlat, TensorOut
from service import vocabulary
from service.compute.activations import ACTIVATION_FUNCTIONS, CATALOGUE
from service.compute.networks.problem import BIASES, INCLUDES, LOSSES, REDUCTIONS


def test_compute_implements_exactly_the_names_the_schemas_accept() -> None:
    assert tuple(ACTIVATION_FUNCTIONS) == vocabulary.ACTIVATIONS == tuple(CATALOGUE)
    assert (LOSSES, REDUCTIONS, INCLUDES, BIASES) == (
        vocabulary.LOSSES,
        vocabulary.REDUCTIONS,
        vocabulary.INCLUDES,
        vocabulary.BIASES,
    )


def test_the_schemas_offer_the_vocabulary_in_their_json_schemas() -> None:
    layer = Layer.model_json_schema()["properties"]
    assert layer["activation"]["enum"] == list(vocabulary.ACTIVATIONS)
    network = NetworkRequest.model_json_schema()["properties"]
    assert network["loss"]["enum"] == list(vocabulary.LOSSES)
    assert network["reduction"]["enum"] == list(vocabulary.REDUCTIONS)
    assert network["dtype"]["enum"] == list(vocabulary.FLOAT_DTYPES)
    assert network["response_encoding"]["enum"] == list(vocabulary.ENCODINGS)
    assert get_args(ActivationsRequest.model_fields["dtype"].annotation) == vocabulary.FLOAT_DTYPES
    assert TensorOut.model_json_schema()["properties"]["dtype"]["enum"] == list(vocabulary.DTYPES)
    for form in (TensorFlat, TensorB64):
        dtype = form.model_json_schema()["properties"]["dtype"]
        assert [member.get("enum") for member in dtype["anyOf"]] == [list(vocabulary.DTYPES), None]


def test_schemas_and_the_vocabulary_import_neither_numpy_nor_tensorflow() -> None:
    probe = (
        "import sys, service.vocabulary, schemas.networks, schemas.tape, schemas.activations, "
        "schemas.gradient_check, schemas.system, schemas.problems, schemas.tensors, schemas.explain; "
        "print(sorted({'numpy', 'tensorflow'} & set(sys.modules)))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
