"""Size and work rules of the sliding-window ops (convolutions and pooling), before TensorFlow allocates.

A window op's output has, per spatial axis, ceil(n / s) positions with padding "SAME",
floor((n + pads - e) / s) + 1 with "VALID" or explicit pads (0 when the window does not fit), where
e = (k - 1)·d + 1 is the dilated window. Its work is one multiply-add per output element per window
element (times the input channels a filter reads, for a convolution).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from service.compute.program.opspec import Args
from service.compute.program.values import PyList, Shape, ValueProblem, product, shape_of, static_int_vector

CHANNELS_LAST = ("NWC", "NHWC")
CHANNELS_FIRST = ("NCW", "NCHW")


@dataclass(frozen=True)
class Window:
    """One window op's geometry: batch elements, spatial output, and elements per window."""

    batch: int
    spatial: tuple[int, ...]
    channels: int
    window: int
    """Input elements one output element reads."""

    @property
    def size(self) -> int:
        return self.batch * product(self.spatial) * self.channels

    @property
    def work(self) -> int:
        return self.size * self.window


def per_axis(value: object, what: str, spatial: int, channels_last: bool, default: int = 1) -> list[int]:
    """strides / dilations / ksize as one positive int per spatial axis: an int, or a list of 1, n or n + 2."""
    numbers = [default] * spatial if value is None else static_int_vector(value, what)
    if len(numbers) == 1:
        numbers = numbers * spatial
    elif len(numbers) == spatial + 2:
        numbers = numbers[1:-1] if channels_last else numbers[2:]
    if len(numbers) != spatial:
        raise ValueProblem(f"{what} must be an int or a list of 1, {spatial} or {spatial + 2} ints")
    if any(n < 1 for n in numbers):
        raise ValueProblem(f"{what} must be positive, not {numbers}")
    return numbers


def _pads(padding: object, spatial: int, channels_last: bool) -> list[tuple[int, int]] | str:
    if isinstance(padding, str):
        return padding
    if not isinstance(padding, PyList) or len(padding.items) != spatial + 2:
        raise ValueProblem(f'padding must be "SAME", "VALID" or a list of {spatial + 2} [before, after] pairs')
    pairs = [static_int_vector(pair, "padding") for pair in padding.items]
    if any(len(pair) != 2 or min(pair) < 0 for pair in pairs):
        raise ValueProblem("padding: each entry is a [before, after] pair of non-negative ints")
    inner = pairs[1:-1] if channels_last else pairs[2:]
    return [(pair[0], pair[1]) for pair in inner]


def output_length(length: int, window: int, stride: int, dilation: int, pads: tuple[int, int] | str) -> int:
    """Output positions along one axis; -1 when the (dilated) window is larger than the padded input."""
    if pads == "SAME":
        return -(-length // stride)
    before, after = pads if isinstance(pads, tuple) else (0, 0)
    span = length + before + after - ((window - 1) * dilation + 1)
    return span // stride + 1 if span >= 0 else -1


@dataclass(frozen=True)
class Layout:
    """Where batch, spatial and channel axes sit in an input of one data format."""

    spatial: int
    channels_last: bool

    def split(self, shape: Shape, what: str) -> tuple[int, tuple[int, ...], int]:
        """(batch elements, spatial extents, channels); batch axes may be several, as TensorFlow allows."""
        if len(shape) < self.spatial + 2:
            raise ValueProblem(f"{what} must have rank {self.spatial + 2} or more, not {len(shape)}")
        if self.channels_last:
            return product(shape[: -self.spatial - 1]), tuple(shape[-self.spatial - 1 : -1]), shape[-1]
        return product(shape[: -self.spatial - 1]), tuple(shape[-self.spatial :]), shape[-self.spatial - 1]


def layout(args: Args, spatial: int) -> Layout:
    data_format = args.get("data_format")
    if data_format is not None and data_format not in (*CHANNELS_LAST, *CHANNELS_FIRST):
        raise ValueProblem(f"data_format must be one of {CHANNELS_LAST + CHANNELS_FIRST}, not {data_format!r}")
    return Layout(spatial, data_format is None or data_format in CHANNELS_LAST)


def _geometry(
    args: Args, spatial: int, kernel: list[int], strides: str, dilations: list[int], *, must_fit: bool
) -> tuple[int, ...]:
    """Output extents; a window larger than the padded input gives none, or (`must_fit`) is refused:
    TensorFlow's float32 CPU convolution answers a tensor of the wrong shape there."""
    place = layout(args, spatial)
    _, lengths, _ = place.split(shape_of(args["input"], "input"), "input")
    steps = per_axis(args[strides], strides, spatial, place.channels_last)
    pads = _pads(args["padding"], spatial, place.channels_last)
    out = tuple(
        output_length(n, k, s, d, pads if isinstance(pads, str) else pads[axis])
        for axis, (n, k, s, d) in enumerate(zip(lengths, kernel, steps, dilations, strict=True))
    )
    if must_fit and -1 in out:
        raise ValueProblem(
            f"the filter window {kernel} (dilations {dilations}) is larger than the padded input {list(lengths)}"
        )
    return tuple(max(n, 0) for n in out)


def convolution(spatial: int, strides: str, filters: str, depthwise: bool = False) -> Callable[[Args], Window]:
    """A conv1d / conv2d / depthwise_conv2d's window: filters are (k..., in channels, out or multiplier)."""

    def rule(args: Args) -> Window:
        place = layout(args, spatial)
        batch, _, channels = place.split(shape_of(args["input"], "input"), "input")
        kernel = shape_of(args[filters], filters)
        if len(kernel) != spatial + 2:
            raise ValueProblem(f"{filters} must have rank {spatial + 2}, not {len(kernel)}")
        if any(k < 1 for k in kernel[:spatial]):
            raise ValueProblem(f"{filters} has an empty window {list(kernel[:spatial])}")
        dilations = per_axis(args["dilations"], "dilations", spatial, place.channels_last)
        out = _geometry(args, spatial, list(kernel[:spatial]), strides, dilations, must_fit=True)
        out_channels = channels * kernel[-1] if depthwise else kernel[-1]
        reads = product(kernel[:spatial]) * (1 if depthwise else kernel[-2])
        return Window(batch, out, out_channels, reads)

    return rule


def pooling(args: Args) -> Window:
    """max_pool2d / avg_pool2d: ksize per spatial axis, channels kept."""
    place = layout(args, 2)
    batch, _, channels = place.split(shape_of(args["input"], "input"), "input")
    kernel = per_axis(args["ksize"], "ksize", 2, place.channels_last)
    out = _geometry(args, 2, kernel, "strides", [1, 1], must_fit=False)
    return Window(batch, out, channels, product(kernel))


def sized(rule: Callable[[Args], Window]) -> tuple[Callable[[Args], int], Callable[[Args], int]]:
    """The (size, work) rules of an OpSpec from one window rule."""
    return (lambda args: rule(args).size), (lambda args: rule(args).work)
