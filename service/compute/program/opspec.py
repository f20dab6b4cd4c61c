"""What one function of the tape language is: its names, its parameters, and the rules that bound it.

An `OpSpec` is data. The checker reads `params` to check a call's arguments statically; the
interpreter binds them, asks `size` (and `work`) before calling `fn`, and calls nothing else.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import tensorflow as tf


class _Required(enum.Enum):
    REQUIRED = enum.auto()


REQUIRED = _Required.REQUIRED
"""The default of a parameter that has none."""

Args = Mapping[str, Any]
SizeRule = Callable[[Args], int | None]
"""Elements of the op's result, from its arguments (defaults filled in); None: no larger than its
largest argument. May raise ValueProblem / SizeProblem for arguments it cannot size."""
WorkRule = Callable[[Args], int]
"""Multiply-adds of a contraction, from its arguments (defaults filled in)."""


def no_growth(args: Args) -> int | None:
    """The size rule of an op whose result is no larger than its largest argument: the default."""
    return None


@dataclass(frozen=True, kw_only=True)
class Param:
    name: str
    default: Any = REQUIRED
    keyword_only: bool = False
    choices: tuple[str, ...] = ()
    """The strings a program may write for this parameter (`padding="SAME"`); strings are values nowhere else."""


def params(*required: str, **optional: Any) -> tuple[Param, ...]:
    """Positional-or-keyword parameters: the required ones, then those with a default (in order)."""
    return tuple(Param(name=name) for name in required) + tuple(
        Param(name=name, default=default) for name, default in optional.items()
    )


def with_choices(parameters: tuple[Param, ...], **choices: tuple[str, ...]) -> tuple[Param, ...]:
    """`parameters` with the string literals each named one accepts (TensorFlow's attribute values)."""
    unknown = set(choices) - {p.name for p in parameters}
    if unknown:
        raise ValueError(f"no such parameters: {sorted(unknown)}")
    return tuple(dataclasses.replace(p, choices=choices.get(p.name, p.choices)) for p in parameters)


def keyword_only(**optional: Any) -> tuple[Param, ...]:
    """Keyword-only parameters with defaults (after a `*` in the signature)."""
    return tuple(Param(name=name, default=default, keyword_only=True) for name, default in optional.items())


@dataclass(frozen=True, kw_only=True)
class OpSpec:
    """One function of the language, built by keyword. The last part of its first dotted name is the plain
    name a program calls it by (`exp` for `tf.math.exp`)."""

    fn: Callable[..., Any]
    """The TensorFlow function, called with keyword arguments only."""
    tf_names: tuple[str, ...]
    """The dotted names a program may call it by (`tf.math.exp`); all resolve to `fn`."""
    params: tuple[Param, ...]
    """TensorFlow's parameter names and defaults, as far as the language exposes them."""
    summary: str
    size: SizeRule = no_growth
    data: tuple[str, ...] = ()
    """Parameters holding tensor data whose float dtype follows the other operands."""
    aliases: tuple[str, ...] = ()
    """More plain names for the op (`swish` for `silu`)."""
    float_dtype_param: bool = False
    """The op's `dtype` parameter makes float32 when not given (and no float tensor decides)."""
    work: WorkRule | None = None
    """Multiply-adds of a contraction, bounded separately from the result's size."""
    name: str = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", self.tf_names[0].rsplit(".", 1)[-1])

    @property
    def positional(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if not p.keyword_only)

    @property
    def signature(self) -> str:
        parts: list[str] = []
        star = False
        for param in self.params:
            if param.keyword_only and not star:
                parts.append("*")
                star = True
            parts.append(param.name if param.default is REQUIRED else f"{param.name}={_show(param.default)}")
        return f"{self.name}({', '.join(parts)})"

    def bind(self, positional: Sequence[Any], keywords: Mapping[str, Any]) -> dict[str, Any]:
        """Arguments by parameter name. The checker has matched the call against `params` already."""
        return {param.name: value for param, value in zip(self.positional, positional, strict=False)} | dict(keywords)

    def with_defaults(self, bound: Mapping[str, Any]) -> dict[str, Any]:
        return {p.name: bound.get(p.name, p.default) for p in self.params}


def _show(value: Any) -> str:
    if isinstance(value, tf.DType):
        return f"tf.{value.name}"
    return repr(value)
