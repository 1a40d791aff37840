"""Exact, deterministic Layer Normalization for numpy, with torch.nn.functional semantics.

numpy in, numpy out. The kernels are Rust (AVX-512/AVX2/NEON, chosen at run time), run
without the GIL on the package's own thread pool, and give the same bits whatever the number
of threads or Python threads calling at once.

    >>> import numpy as np, layernorm
    >>> x = np.array([[0.1, 0.5], [0.3, 0.8]], dtype=np.float32)
    >>> layernorm.layer_norm(x, (2,)).round(3)
    array([[-1.,  1.],
           [-1.,  1.]], dtype=float32)

Beside LayerNorm and RMSNorm over trailing dims: LayerNorm over any axes
(:func:`layer_norm_axes`, and the Keras-like :class:`LayerNormalization`), BatchNorm
(:func:`batch_norm`, training and eval, running statistics updated in place), GroupNorm
(:func:`group_norm`) and InstanceNorm (:func:`instance_norm`), each with its backward, on
channels-first ``(N, C, *)`` or channels-last ``(N, *, C)`` data.

Supported dtypes: float32, float64, float16, and bfloat16 when the ``ml_dtypes`` package is
installed (``pip install ml_dtypes``). Statistics (mean, rstd) are float32, or float64 for
float64 input, shaped like PyTorch's ``native_layer_norm`` (``native_batch_norm``,
``native_group_norm``) returns them.
"""

from __future__ import annotations

import operator
import os
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from . import _layernorm
from ._layernorm import (
    AxisError,
    DTypeError,
    EmptyError,
    EpsilonError,
    LayerNormError,
    MomentumError,
    OutputError,
    RunningStatsError,
    ShapeError,
    SizeOverflowError,
    cpu_info,
)

__version__ = _layernorm.__version__
__all__ = [
    "layer_norm",
    "layer_norm_backward",
    "rms_norm",
    "rms_norm_backward",
    "add_layer_norm",
    "add_rms_norm",
    "layer_norm_axes",
    "layer_norm_axes_forward",
    "layer_norm_axes_backward",
    "batch_norm",
    "batch_norm_forward",
    "batch_norm_backward",
    "group_norm",
    "group_norm_forward",
    "group_norm_backward",
    "instance_norm",
    "instance_norm_forward",
    "instance_norm_backward",
    "LayerNormalization",
    "cpu_info",
    "LayerNormError",
    "ShapeError",
    "EpsilonError",
    "EmptyError",
    "AxisError",
    "SizeOverflowError",
    "DTypeError",
    "OutputError",
    "MomentumError",
    "RunningStatsError",
]

# A forked child has none of the parent's pool threads: drop the pool there, and the next call
# builds a fresh one.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_layernorm.after_fork_in_child)

_FLOAT_NAMES = ("float32", "float64", "float16", "bfloat16")
ShapeLike = Union[int, Sequence[int]]


def _normalized(normalized_shape: ShapeLike) -> Tuple[int, ...]:
    bad = TypeError(f"normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}")
    if isinstance(normalized_shape, (str, bytes)):
        raise bad
    try:
        if isinstance(normalized_shape, (int, np.integer)):
            shape = (operator.index(normalized_shape),)
        else:
            shape = tuple(operator.index(d) for d in normalized_shape)
    except TypeError:
        raise bad from None
    if any(d < 0 or d >= 2**63 for d in shape):
        raise ShapeError(f"normalized_shape {shape} has a negative or oversized dimension")
    return shape


def _float_array(a, what: str) -> np.ndarray:
    """A C-contiguous float array (copied only when needed); other dtypes are rejected."""
    if not isinstance(a, np.ndarray):
        raise DTypeError(f"{what} must be a numpy array, got {type(a).__name__}")
    if a.dtype.name not in _FLOAT_NAMES:
        raise DTypeError(
            f"{what} has dtype {a.dtype.name}; expected float32, float64, float16 or bfloat16"
        )
    if not a.dtype.isnative:  # big-endian data: the kernels read native byte order
        a = a.astype(a.dtype.newbyteorder("="))
    # (np.ascontiguousarray would also turn a 0-d array into a 1-d one.)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _empty_batch(x: np.ndarray, shape: Tuple[int, ...]) -> bool:
    """A batch of zero rows over a valid normalized shape: PyTorch returns empty outputs."""
    k = len(shape)
    return (
        x.size == 0 and k > 0 and x.ndim >= k and tuple(x.shape[x.ndim - k:]) == shape
        and all(d > 0 for d in shape)
    )


def _stats_dtype(x: np.ndarray):
    return np.float64 if x.dtype == np.float64 else np.float32


def _stats_shape(x: np.ndarray, k: int) -> Tuple[int, ...]:
    return tuple(x.shape[: x.ndim - k]) + (1,) * k


def layer_norm(
    x: np.ndarray,
    normalized_shape: ShapeLike,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    eps: float = 1e-5,
    *,
    return_stats: bool = False,
    out: Optional[np.ndarray] = None,
):
    """Layer Normalization over the trailing ``normalized_shape`` dims, as
    ``torch.nn.functional.layer_norm``: ``y = (x - mean) / sqrt(var + eps) * weight + bias``,
    with the biased variance of each row.

    Returns ``y`` (an array like ``x``), or ``(y, mean, rstd)`` with ``return_stats=True``,
    where ``mean`` and ``rstd = 1/sqrt(var + eps)`` have shape ``x.shape[:-k] + (1,)*k``.
    ``out``, if given, must be a C-contiguous array of x's shape and dtype; it is filled and
    returned as ``y``. ``weight`` and ``bias`` must have x's dtype and ``normalized_shape``.

    Raises ``ShapeError``, ``EpsilonError``, ``EmptyError`` (all ``ValueError``) and
    ``DTypeError`` (a ``TypeError``) on bad input.
    """
    shape = _normalized(normalized_shape)
    x = _float_array(x, "x")
    w = None if weight is None else _float_array(weight, "weight")
    b = None if bias is None else _float_array(bias, "bias")
    if out is not None and not isinstance(out, np.ndarray):
        raise DTypeError(f"out must be a numpy array, got {type(out).__name__}")
    if _empty_batch(x, shape):
        y = np.empty_like(x) if out is None else out
        stats = np.zeros(_stats_shape(x, len(shape)), dtype=_stats_dtype(x))
        return (y, stats, stats.copy()) if return_stats else y
    y, mean, rstd = _layernorm.layer_norm_forward(x, list(shape), w, b, float(eps), out)
    if not return_stats:
        return y
    k = len(shape)
    return y, mean.reshape(_stats_shape(x, k)), rstd.reshape(_stats_shape(x, k))


def layer_norm_backward(
    grad_out: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    normalized_shape: ShapeLike,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    output_mask: Tuple[bool, bool, bool] = (True, True, True),
    *,
    grad_sum: Optional[np.ndarray] = None,
):
    """Gradients of :func:`layer_norm`, as ``torch.ops.aten.native_layer_norm_backward``:
    returns ``(dx, dweight, dbias)``, each ``None`` where masked out (``output_mask``) or
    where the forward had no weight / bias.

    ``mean`` and ``rstd`` are the statistics ``layer_norm(..., return_stats=True)`` returned
    (or PyTorch's); the exact mean is recovered from ``x``, so a rounded float32 mean costs no
    accuracy. ``bias`` is only used to know whether ``dbias`` is wanted.

    After :func:`add_layer_norm`, pass its ``sum`` as ``x`` and the sum's own upstream gradient
    as ``grad_sum``: it is added to ``dx`` (which is then also the residual's gradient).
    """
    shape = _normalized(normalized_shape)
    x = _float_array(x, "x")
    grad_out = _float_array(grad_out, "grad_out")
    stats = _stats_dtype(x)
    mean = np.ascontiguousarray(np.asarray(mean), dtype=stats).reshape(-1)
    rstd = np.ascontiguousarray(np.asarray(rstd), dtype=stats).reshape(-1)
    w = None if weight is None else _float_array(weight, "weight")
    want = (bool(output_mask[0]), bool(output_mask[1]) and w is not None, bool(output_mask[2]) and bias is not None)
    gs = None if grad_sum is None else _float_array(grad_sum, "grad_sum")
    if _empty_batch(x, shape):
        zeros = lambda on: np.zeros(shape, dtype=x.dtype) if on else None
        return (np.zeros_like(x) if want[0] else None), zeros(want[1]), zeros(want[2])
    dx, dw, db = _layernorm.layer_norm_backward(grad_out, x, mean, rstd, list(shape), w, want, gs)
    if dw is not None:
        dw = dw.reshape(shape)
    if db is not None:
        db = db.reshape(shape)
    return dx, dw, db


def rms_norm(
    x: np.ndarray,
    normalized_shape: ShapeLike,
    weight: Optional[np.ndarray] = None,
    eps: float = 1e-5,
    *,
    return_stats: bool = False,
    out: Optional[np.ndarray] = None,
):
    """RMSNorm over the trailing ``normalized_shape`` dims, as ``torch.nn.functional.rms_norm``:
    ``y = x / sqrt(mean(x**2) + eps) * weight``.

    Returns ``y``, or ``(y, rstd)`` with ``return_stats=True`` (``rstd`` shaped
    ``x.shape[:-k] + (1,)*k``). The default ``eps=1e-5`` is ONNX's; PyTorch's ``eps=None``
    means ``np.finfo(x.dtype).eps`` — pass that to match it exactly.
    """
    shape = _normalized(normalized_shape)
    x = _float_array(x, "x")
    w = None if weight is None else _float_array(weight, "weight")
    if out is not None and not isinstance(out, np.ndarray):
        raise DTypeError(f"out must be a numpy array, got {type(out).__name__}")
    if _empty_batch(x, shape):
        y = np.empty_like(x) if out is None else out
        rstd = np.zeros(_stats_shape(x, len(shape)), dtype=_stats_dtype(x))
        return (y, rstd) if return_stats else y
    y, rstd = _layernorm.rms_norm_forward(x, list(shape), w, float(eps), out)
    if not return_stats:
        return y
    return y, rstd.reshape(_stats_shape(x, len(shape)))


def rms_norm_backward(
    grad_out: np.ndarray,
    x: np.ndarray,
    rstd: np.ndarray,
    normalized_shape: ShapeLike,
    weight: Optional[np.ndarray] = None,
    output_mask: Tuple[bool, bool] = (True, True),
    *,
    grad_sum: Optional[np.ndarray] = None,
):
    """Gradients ``(dx, dweight)`` of :func:`rms_norm` (``None`` where masked or where there
    is no weight), from the ``rstd`` that ``rms_norm(..., return_stats=True)`` returned.
    ``grad_sum`` as in :func:`layer_norm_backward` (after :func:`add_rms_norm`)."""
    shape = _normalized(normalized_shape)
    x = _float_array(x, "x")
    grad_out = _float_array(grad_out, "grad_out")
    rstd = np.ascontiguousarray(np.asarray(rstd), dtype=_stats_dtype(x)).reshape(-1)
    w = None if weight is None else _float_array(weight, "weight")
    want = (bool(output_mask[0]), bool(output_mask[1]) and w is not None)
    gs = None if grad_sum is None else _float_array(grad_sum, "grad_sum")
    dx, dw = _layernorm.rms_norm_backward(grad_out, x, rstd, list(shape), w, want, gs)
    return dx, (None if dw is None else dw.reshape(shape))


def add_layer_norm(
    x: np.ndarray,
    residual: np.ndarray,
    normalized_shape: ShapeLike,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    eps: float = 1e-5,
    *,
    return_stats: bool = False,
):
    """Fused residual add + LayerNorm, as a Transformer block does it: ``sum = x + residual``
    and ``y = layer_norm(sum)`` in one pass over memory. Returns ``(sum, y)``, or
    ``(sum, y, mean, rstd)`` with ``return_stats=True``. ``y`` is exactly
    ``layer_norm(sum)`` (the sum is rounded to x's dtype first). For the gradients, call
    :func:`layer_norm_backward` on ``sum`` with ``grad_sum=``.
    """
    shape = _normalized(normalized_shape)
    x = _float_array(x, "x")
    r = _float_array(residual, "residual")
    w = None if weight is None else _float_array(weight, "weight")
    b = None if bias is None else _float_array(bias, "bias")
    s, y, mean, rstd = _layernorm.add_norm_forward(x, r, list(shape), w, b, float(eps), False)
    if not return_stats:
        return s, y
    k = len(shape)
    return s, y, mean.reshape(_stats_shape(x, k)), rstd.reshape(_stats_shape(x, k))


def add_rms_norm(
    x: np.ndarray,
    residual: np.ndarray,
    normalized_shape: ShapeLike,
    weight: Optional[np.ndarray] = None,
    eps: float = 1e-5,
    *,
    return_stats: bool = False,
):
    """Fused residual add + RMSNorm: returns ``(sum, y)``, or ``(sum, y, rstd)``."""
    shape = _normalized(normalized_shape)
    x = _float_array(x, "x")
    r = _float_array(residual, "residual")
    w = None if weight is None else _float_array(weight, "weight")
    s, y, _, rstd = _layernorm.add_norm_forward(x, r, list(shape), w, None, float(eps), True)
    if not return_stats:
        return s, y
    return s, y, rstd.reshape(_stats_shape(x, len(shape)))


# --- LayerNorm over any axes, BatchNorm, GroupNorm, InstanceNorm ---------------------------


def _opt_float_array(a, what: str) -> Optional[np.ndarray]:
    return None if a is None else _float_array(a, what)


def _flat_stats(a, x: np.ndarray, what: str) -> np.ndarray:
    """Saved statistics as the native functions take them: flat, in x's statistics dtype."""
    if a is None:
        raise TypeError(f"{what} is required (the statistics the forward returned)")
    return np.ascontiguousarray(np.asarray(a), dtype=_stats_dtype(x)).reshape(-1)


def _axis_index(axis, what: str) -> int:
    try:
        return operator.index(axis)
    except TypeError:
        raise TypeError(f"{what} must be an int, got {axis!r}") from None


AxesLike = Union[int, Sequence[int]]


def _axes_list(axes: AxesLike) -> list:
    if isinstance(axes, (str, bytes)):
        raise TypeError(f"axes must be an int or a sequence of ints, got {axes!r}")
    if isinstance(axes, (int, np.integer)):
        return [operator.index(axes)]
    try:
        return [operator.index(a) for a in axes]
    except TypeError:
        raise TypeError(f"axes must be an int or a sequence of ints, got {axes!r}") from None


def _resolve_axes(axes: list, ndim: int) -> list:
    """axes resolved to 0..ndim and sorted; the errors the core raises for the same axes."""
    if not axes:
        raise EmptyError("the normalized shape is empty: nothing to normalize over")
    resolved = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise AxisError(f"axis {a} is out of range for a tensor of rank {ndim}")
        r = a % ndim
        if r in resolved:
            raise AxisError(f"axis {r} is listed twice")
        resolved.append(r)
    return sorted(resolved)


def _want(output_mask, w, b) -> Tuple[bool, bool, bool]:
    return bool(output_mask[0]), bool(output_mask[1]) and w is not None, bool(output_mask[2]) and b is not None


def layer_norm_axes(
    x: np.ndarray,
    axes: AxesLike,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    eps: float = 1e-5,
    *,
    return_stats: bool = False,
):
    """Layer Normalization over any set of ``axes`` of ``x`` (Keras'
    ``LayerNormalization(axis=[1, 3])``), trailing or not, without transposing by hand:
    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the mean and biased variance
    over ``axes`` for each index of the other axes.

    ``axes`` is an int or a sequence of ints (negative ones count from the end; any order; no
    repeats). ``weight`` and ``bias`` have x's dtype and the normalized axes' sizes in
    increasing axis order: ``tuple(x.shape[a] for a in sorted(axes))``. For trailing axes this
    is :func:`layer_norm` (and costs no copy).

    Returns ``y``, or ``(y, mean, rstd)`` with ``return_stats=True``; the statistics have x's
    rank with size 1 along ``axes`` (``keepdims`` shape, they broadcast against x), dtype
    float32 (float64 for float64 input).

    Raises ``AxisError`` (out of range, repeated), ``EmptyError`` (no axes), ``ShapeError``,
    ``EpsilonError`` and ``DTypeError``.
    """
    axes_l = _axes_list(axes)
    x = _float_array(x, "x")
    w = _opt_float_array(weight, "weight")
    b = _opt_float_array(bias, "bias")
    if x.size == 0:
        resolved = _resolve_axes(axes_l, x.ndim)
        if all(x.shape[a] > 0 for a in resolved):  # an empty batch, as layer_norm allows
            keep = tuple(1 if a in resolved else d for a, d in enumerate(x.shape))
            stats = np.zeros(keep, dtype=_stats_dtype(x))
            y = np.empty_like(x)
            return (y, stats, stats.copy()) if return_stats else y
    y, mean, rstd = _layernorm.layer_norm_axes_forward(x, axes_l, w, b, float(eps))
    if not return_stats:
        return y
    keep = _keepdims_shape(x.shape, axes_l)
    return y, mean.reshape(keep), rstd.reshape(keep)


def _keepdims_shape(shape: Tuple[int, ...], axes: list) -> Tuple[int, ...]:
    resolved = {a % len(shape) for a in axes}
    return tuple(1 if a in resolved else d for a, d in enumerate(shape))


def layer_norm_axes_forward(
    x: np.ndarray,
    axes: AxesLike,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    eps: float = 1e-5,
):
    """``layer_norm_axes(..., return_stats=True)``: returns ``(y, mean, rstd)``."""
    return layer_norm_axes(x, axes, weight, bias, eps, return_stats=True)


def layer_norm_axes_backward(
    grad_out: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    axes: AxesLike,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    output_mask: Tuple[bool, bool, bool] = (True, True, True),
):
    """Gradients ``(dx, dweight, dbias)`` of :func:`layer_norm_axes`, from the ``mean`` and
    ``rstd`` it returned (any shape with their number of elements). ``dx`` is shaped like x,
    ``dweight``/``dbias`` like the parameters; each is ``None`` where masked out
    (``output_mask``) or where the forward had no weight / bias (``bias`` is only used to know
    whether ``dbias`` is wanted). As :func:`layer_norm_backward`, the exact mean is recovered
    from x, so a float32 mean costs no accuracy.
    """
    axes_l = _axes_list(axes)
    x = _float_array(x, "x")
    grad_out = _float_array(grad_out, "grad_out")
    mean = _flat_stats(mean, x, "mean")
    rstd = _flat_stats(rstd, x, "rstd")
    w = _opt_float_array(weight, "weight")
    want = _want(output_mask, w, bias)
    if x.size == 0:
        resolved = _resolve_axes(axes_l, x.ndim)
        if all(x.shape[a] > 0 for a in resolved):
            if grad_out.shape != x.shape:
                raise ShapeError(f"grad_out has shape {grad_out.shape}, expected {x.shape} like x")
            pshape = tuple(x.shape[a] for a in resolved)
            zeros = lambda on: np.zeros(pshape, dtype=x.dtype) if on else None
            return (np.zeros_like(x) if want[0] else None), zeros(want[1]), zeros(want[2])
    dx, dw, db = _layernorm.layer_norm_axes_backward(grad_out, x, mean, rstd, axes_l, w, want)
    pshape = tuple(x.shape[a] for a in sorted({a % x.ndim for a in axes_l}))
    return dx, (None if dw is None else dw.reshape(pshape)), (None if db is None else db.reshape(pshape))


def _running_in_place(a, what: str) -> Optional[np.ndarray]:
    """A running statistic that training updates in place: taken as it is (never copied)."""
    if a is None:
        return None
    if not isinstance(a, np.ndarray):
        raise DTypeError(f"{what} must be a numpy array (it is updated in place), got {type(a).__name__}")
    if a.dtype.name in _FLOAT_NAMES and not a.dtype.isnative:
        raise DTypeError(f"{what} must be in native byte order to be updated in place")
    return a


def batch_norm(
    x: np.ndarray,
    running_mean: Optional[np.ndarray] = None,
    running_var: Optional[np.ndarray] = None,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    channel_axis: int = 1,
    *,
    return_stats: bool = False,
):
    """Batch Normalization, as ``torch.nn.functional.batch_norm``: each channel is normalized
    with statistics over every other axis (the batch and the spatial dims),
    ``y = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c``.

    ``x`` is ``(N, C, *)`` (``channel_axis=1``, PyTorch's layout) or channels-last
    ``(N, *, C)`` (``channel_axis=-1``, Keras' default); ``weight``, ``bias``,
    ``running_mean`` and ``running_var`` have shape ``(C,)`` and x's dtype.

    - ``training=True``: the batch's mean and biased variance normalize x. If
      ``running_mean`` and ``running_var`` are given (both or neither), they are updated IN
      PLACE, PyTorch's convention: ``new = (1 - momentum) * old + momentum * batch``, the
      running variance from the *unbiased* batch variance. They must then be writable
      C-contiguous numpy arrays of x's dtype: otherwise ``DTypeError`` (dtype, not an array),
      ``ShapeError`` (shape, layout) or ``OutputError`` (read-only, overlapping another
      argument) is raised and nothing is changed. Each channel needs more than one value
      (``ShapeError`` otherwise, as PyTorch's ``ValueError``). ``momentum`` must lie in
      ``[0, 1]`` (``MomentumError``); ``None`` (PyTorch's cumulative average) is not supported.
    - ``training=False`` (eval): ``running_mean`` and ``running_var`` are required and
      normalize x (``RunningStatsError`` for a negative or NaN variance); they are not changed.

    Returns ``y``, or ``(y, mean, rstd)`` with ``return_stats=True``: in training mode the
    batch mean and ``rstd = 1/sqrt(var + eps)`` per channel, shape ``(C,)``, float32 (float64
    for float64 input) — what :func:`batch_norm_backward` takes; in eval mode both are empty
    (shape ``(0,)``), as PyTorch's ``native_batch_norm`` returns them.
    """
    x = _float_array(x, "x")
    w = _opt_float_array(weight, "weight")
    b = _opt_float_array(bias, "bias")
    if momentum is None:
        raise TypeError("momentum=None (a cumulative moving average) is not supported: pass a float in [0, 1]")
    if training:
        rm = _running_in_place(running_mean, "running_mean")
        rv = _running_in_place(running_var, "running_var")
    else:
        rm = _opt_float_array(running_mean, "running_mean")
        rv = _opt_float_array(running_var, "running_var")
    axis = _axis_index(channel_axis, "channel_axis")
    y, mean, rstd = _layernorm.batch_norm_forward(
        x, w, b, rm, rv, bool(training), float(momentum), float(eps), axis
    )
    return (y, mean, rstd) if return_stats else y


def batch_norm_forward(
    x: np.ndarray,
    running_mean: Optional[np.ndarray] = None,
    running_var: Optional[np.ndarray] = None,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    channel_axis: int = 1,
):
    """``batch_norm(..., return_stats=True)``: returns ``(y, mean, rstd)`` for
    :func:`batch_norm_backward` (the statistics are empty in eval mode)."""
    return batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis,
                      return_stats=True)


def batch_norm_backward(
    grad_out: np.ndarray,
    x: np.ndarray,
    mean: Optional[np.ndarray],
    rstd: Optional[np.ndarray],
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    *,
    training: bool = True,
    running_mean: Optional[np.ndarray] = None,
    running_var: Optional[np.ndarray] = None,
    eps: float = 1e-5,
    channel_axis: int = 1,
    output_mask: Tuple[bool, bool, bool] = (True, True, True),
):
    """Gradients ``(dx, dweight, dbias)`` of :func:`batch_norm`, as
    ``torch.ops.aten.native_batch_norm_backward``.

    - ``training=True`` (the default): from the ``mean`` and ``rstd`` that
      ``batch_norm(..., training=True, return_stats=True)`` (or :func:`batch_norm_forward`)
      returned; the statistics depend on x, so dx has the full LayerNorm-like form per channel.
      ``running_mean``, ``running_var`` and ``eps`` are not used.
    - ``training=False``: the forward used the running statistics, constants here:
      ``dx = grad_out * weight / sqrt(running_var + eps)``. Pass the same ``running_mean``,
      ``running_var`` and ``eps``; ``mean`` and ``rstd`` are ignored (may be ``None``).

    ``dx`` is shaped like x, ``dweight`` and ``dbias`` ``(C,)``; each is ``None`` where masked
    out (``output_mask``) or where the forward had no weight / bias (``bias`` is only used to
    know whether ``dbias`` is wanted).
    """
    x = _float_array(x, "x")
    grad_out = _float_array(grad_out, "grad_out")
    w = _opt_float_array(weight, "weight")
    want = _want(output_mask, w, bias)
    axis = _axis_index(channel_axis, "channel_axis")
    if training:
        mean = _flat_stats(mean, x, "mean")
        rstd = _flat_stats(rstd, x, "rstd")
        rm = rv = None
    else:
        mean = rstd = None
        rm = _opt_float_array(running_mean, "running_mean")
        rv = _opt_float_array(running_var, "running_var")
    return _layernorm.batch_norm_backward(
        grad_out, x, mean, rstd, w, rm, rv, bool(training), float(eps), axis, want
    )


def _num_groups(num_groups) -> int:
    g = _axis_index(num_groups, "num_groups")
    if g < 1:
        raise ShapeError(f"num_groups must be positive, got {g}")
    return g


def _per_sample(stats: np.ndarray, x: np.ndarray) -> np.ndarray:
    return stats.reshape(x.shape[0], -1)


def group_norm(
    x: np.ndarray,
    num_groups: int,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    eps: float = 1e-5,
    channel_axis: int = 1,
    *,
    return_stats: bool = False,
):
    """Group Normalization, as ``torch.nn.functional.group_norm``: the C channels are cut into
    ``num_groups`` groups of consecutive channels, and each sample's group is normalized with
    its own mean and biased variance (over the group's channels and every spatial position),
    then scaled and shifted per channel: ``y = (x - mean_ng) / sqrt(var_ng + eps) * weight_c
    + bias_c``. A sample's output never depends on the rest of the batch.

    ``x`` is ``(N, C, *)`` (``channel_axis=1``) or channels-last ``(N, *, C)``
    (``channel_axis=-1``); the batch axis is 0. ``weight`` and ``bias`` have shape ``(C,)``
    and x's dtype. ``num_groups`` must divide C (``ShapeError`` otherwise); a channel axis 0
    leaves no batch axis (``AxisError``).

    Returns ``y``, or ``(y, mean, rstd)`` with ``return_stats=True``, the statistics shaped
    ``(N, num_groups)`` as PyTorch's ``native_group_norm`` returns them, float32 (float64 for
    float64 input).
    """
    g = _num_groups(num_groups)
    return _grouped_forward(x, g, weight, bias, eps, channel_axis, return_stats)


def _grouped_forward(x, groups, weight, bias, eps, channel_axis, return_stats):
    x = _float_array(x, "x")
    w = _opt_float_array(weight, "weight")
    b = _opt_float_array(bias, "bias")
    axis = _axis_index(channel_axis, "channel_axis")
    y, mean, rstd = _layernorm.group_norm_forward(x, groups, w, b, float(eps), axis)
    if not return_stats:
        return y
    return y, _per_sample(mean, x), _per_sample(rstd, x)


def group_norm_forward(
    x: np.ndarray,
    num_groups: int,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    eps: float = 1e-5,
    channel_axis: int = 1,
):
    """``group_norm(..., return_stats=True)``: returns ``(y, mean, rstd)``, the statistics
    shaped ``(N, num_groups)``."""
    return group_norm(x, num_groups, weight, bias, eps, channel_axis, return_stats=True)


def _grouped_backward(grad_out, x, mean, rstd, groups, weight, bias, channel_axis, output_mask):
    x = _float_array(x, "x")
    grad_out = _float_array(grad_out, "grad_out")
    mean = _flat_stats(mean, x, "mean")
    rstd = _flat_stats(rstd, x, "rstd")
    w = _opt_float_array(weight, "weight")
    want = _want(output_mask, w, bias)
    axis = _axis_index(channel_axis, "channel_axis")
    return _layernorm.group_norm_backward(grad_out, x, mean, rstd, groups, w, axis, want)


def group_norm_backward(
    grad_out: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    num_groups: int,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    *,
    channel_axis: int = 1,
    output_mask: Tuple[bool, bool, bool] = (True, True, True),
):
    """Gradients ``(dx, dweight, dbias)`` of :func:`group_norm`, as
    ``torch.ops.aten.native_group_norm_backward``, from the ``(N, num_groups)`` ``mean`` and
    ``rstd`` the forward returned. ``dx`` is shaped like x, ``dweight``/``dbias`` ``(C,)``; each
    is ``None`` where masked out (``output_mask``) or where the forward had no weight / bias
    (``bias`` is only used to know whether ``dbias`` is wanted)."""
    g = _num_groups(num_groups)
    return _grouped_backward(grad_out, x, mean, rstd, g, weight, bias, channel_axis, output_mask)


def instance_norm(
    x: np.ndarray,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    eps: float = 1e-5,
    channel_axis: int = 1,
    *,
    return_stats: bool = False,
):
    """Instance Normalization, as ``torch.nn.functional.instance_norm`` with its defaults
    (``use_input_stats=True``, no running statistics): every channel of every sample is
    normalized on its own, over the spatial positions — :func:`group_norm` with one channel
    per group. Unlike PyTorch's, the second positional argument is ``weight`` (there are no
    running statistics).

    ``x`` is ``(N, C, *)`` (``channel_axis=1``) or channels-last ``(N, *, C)``
    (``channel_axis=-1``); ``weight`` and ``bias`` have shape ``(C,)`` and x's dtype. Returns
    ``y``, or ``(y, mean, rstd)`` with ``return_stats=True``, the statistics shaped
    ``(N, C)``.
    """
    return _grouped_forward(x, None, weight, bias, eps, channel_axis, return_stats)


def instance_norm_forward(
    x: np.ndarray,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    eps: float = 1e-5,
    channel_axis: int = 1,
):
    """``instance_norm(..., return_stats=True)``: returns ``(y, mean, rstd)``, the statistics
    shaped ``(N, C)``."""
    return instance_norm(x, weight, bias, eps, channel_axis, return_stats=True)


def instance_norm_backward(
    grad_out: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    *,
    channel_axis: int = 1,
    output_mask: Tuple[bool, bool, bool] = (True, True, True),
):
    """Gradients ``(dx, dweight, dbias)`` of :func:`instance_norm`, from the ``(N, C)``
    ``mean`` and ``rstd`` it returned; ``None`` as in :func:`group_norm_backward`."""
    return _grouped_backward(grad_out, x, mean, rstd, None, weight, bias, channel_axis, output_mask)


class LayerNormalization:
    """A Keras-like ``LayerNormalization`` layer: ``LayerNormalization()`` normalizes the
    last axis with ``epsilon=1e-3``, a learnable ``gamma`` (ones) and ``beta`` (zeros), as
    ``tf.keras.layers.LayerNormalization`` does.

    ``axis`` is an int or a list of axes, trailing or not (``axis=[1, 3]`` normalizes over
    axes 1 and 3 together, for each index of the others; repeats are ignored). ``gamma`` and
    ``beta`` are created on the first call, with the normalized axes' sizes in increasing axis
    order and the input's dtype. After ``y = layer(x)``, ``layer.backward(grad_y)`` returns
    ``dx`` and stores ``gamma_grad`` and ``beta_grad``.
    """

    def __init__(self, axis: ShapeLike = -1, epsilon: float = 1e-3, center: bool = True, scale: bool = True):
        self.axis = axis
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.gamma: Optional[np.ndarray] = None
        self.beta: Optional[np.ndarray] = None
        self.gamma_grad: Optional[np.ndarray] = None
        self.beta_grad: Optional[np.ndarray] = None
        self._saved = None

    def _axes(self, x: np.ndarray) -> list:
        """The normalized axes, resolved to ``0..x.ndim`` and sorted."""
        axes = [self.axis] if isinstance(self.axis, (int, np.integer)) else list(self.axis)
        if not axes:
            raise EmptyError("axis is empty: nothing to normalize over")
        resolved = set()
        for a in axes:
            a = int(a)
            if not -x.ndim <= a < x.ndim:
                raise AxisError(f"axis {a} is out of range for an input of rank {x.ndim}")
            resolved.add(a % x.ndim)
        return sorted(resolved)

    def build(self, x: np.ndarray) -> None:
        shape = tuple(x.shape[a] for a in self._axes(x))
        if self.scale and self.gamma is None:
            self.gamma = np.ones(shape, dtype=x.dtype)
        if self.center and self.beta is None:
            self.beta = np.zeros(shape, dtype=x.dtype)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = _float_array(x, "x")
        self.build(x)
        axes = self._axes(x)
        y, mean, rstd = layer_norm_axes(x, axes, self.gamma, self.beta, self.epsilon, return_stats=True)
        # A copy: the caller may change x in place before calling backward.
        self._saved = (x.copy(), mean, rstd, axes)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        if self._saved is None:
            raise RuntimeError("backward() needs a forward call first")
        x, mean, rstd, axes = self._saved
        dx, dg, db = layer_norm_axes_backward(grad_out, x, mean, rstd, axes, self.gamma, self.beta)
        self.gamma_grad, self.beta_grad = dg, db
        return dx

    def __repr__(self) -> str:
        return (
            f"LayerNormalization(axis={self.axis!r}, epsilon={self.epsilon}, "
            f"center={self.center}, scale={self.scale})"
        )
