"""Rules that several request models state: written once here, named where they apply."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, model_validator


def exactly_one(first: str, second: str, message: str) -> Any:
    """An `after` validator for a model class body: exactly one of the fields `first` and `second` is set
    (not None), else a 422 with `message` at the model's location."""

    def check(model: BaseModel) -> BaseModel:
        if (getattr(model, first) is None) == (getattr(model, second) is None):
            raise ValueError(message)
        return model

    return model_validator(mode="after")(check)
