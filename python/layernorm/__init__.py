"""Exact, deterministic Layer Normalization for numpy, with torch.nn.functional semantics.

numpy in, numpy out. The kernels are Rust (AVX-512/AVX2/NEON, chosen at run time), run
without the GIL on the package's own thread pool, and give the same bits whatever the number
of threads or Python threads calling at once.

    >>> import numpy as np, layernorm
    >>> x = np.array([[0.1, 0.5], [0.3, 0.8]], dtype=np.float32)
    >>> layernorm.layer_norm(x, (2,)).round(3)
    array([[-1.,  1.],
           [-1.,  1.]], dtype=float32)

Supported dtypes: float32, float64, float16, and bfloat16 when the ``ml_dtypes`` package is
installed (``pip install ml_dtypes``). Statistics (mean, rstd) are float32, or float64 for
float64 input, shaped like PyTorch's ``native_layer_norm`` returns them.
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
    OutputError,
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


class LayerNormalization:
    """A Keras-like ``LayerNormalization`` layer: ``LayerNormalization()`` normalizes the
    last axis with ``epsilon=1e-3``, a learnable ``gamma`` (ones) and ``beta`` (zeros), as
    ``tf.keras.layers.LayerNormalization`` does.

    ``axis`` is an int or a list of axes; they must be the trailing axes of the input (Keras'
    non-trailing axes are not supported yet). ``gamma``/``beta`` are created on the first
    call, with the normalized axes' shape and the input's dtype. After ``y = layer(x)``,
    ``layer.backward(grad_y)`` returns ``dx`` and stores ``gamma_grad`` and ``beta_grad``.
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

    def _normalized_shape(self, x: np.ndarray) -> Tuple[int, ...]:
        axes = [self.axis] if isinstance(self.axis, (int, np.integer)) else list(self.axis)
        if not axes:
            raise EmptyError("axis is empty: nothing to normalize over")
        resolved = []
        for a in axes:
            a = int(a)
            if not -x.ndim <= a < x.ndim:
                raise AxisError(f"axis {a} is out of range for an input of rank {x.ndim}")
            resolved.append(a % x.ndim)
        resolved = sorted(set(resolved))
        if resolved != list(range(x.ndim - len(resolved), x.ndim)):
            raise NotImplementedError(
                f"axis {self.axis!r}: only trailing axes are supported (got {resolved} for rank {x.ndim})"
            )
        return tuple(x.shape[resolved[0]:])

    def build(self, x: np.ndarray) -> None:
        shape = self._normalized_shape(x)
        if self.scale and self.gamma is None:
            self.gamma = np.ones(shape, dtype=x.dtype)
        if self.center and self.beta is None:
            self.beta = np.zeros(shape, dtype=x.dtype)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = _float_array(x, "x")
        self.build(x)
        shape = self._normalized_shape(x)
        y, mean, rstd = layer_norm(x, shape, self.gamma, self.beta, self.epsilon, return_stats=True)
        # A copy: the caller may change x in place before calling backward.
        self._saved = (x.copy(), mean, rstd, shape)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        if self._saved is None:
            raise RuntimeError("backward() needs a forward call first")
        x, mean, rstd, shape = self._saved
        dx, dg, db = layer_norm_backward(grad_out, x, mean, rstd, shape, self.gamma, self.beta)
        self.gamma_grad, self.beta_grad = dg, db
        return dx

    def __repr__(self) -> str:
        return (
            f"LayerNormalization(axis={self.axis!r}, epsilon={self.epsilon}, "
            f"center={self.center}, scale={self.scale})"
        )
