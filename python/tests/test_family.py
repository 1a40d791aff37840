"""BatchNorm, GroupNorm, InstanceNorm and LayerNorm over any axes: against an independent
float64 numpy implementation (always), finite differences (float64), and PyTorch (when
installed); running statistics, eval mode, masks, layouts and the exception classes.

Tolerances. Inputs are first rounded to the tested dtype, and the float64 reference is run
on those rounded values, so only the kernels' own rounding is measured. Each result is
compared elementwise with k unit roundoffs U of the dtype times its *scale*: the sum of the
magnitudes of the terms it is computed from (see "float64 references" below), so results
that cancel (a gradient near zero) are judged by the size of what cancelled.
- BatchNorm / GroupNorm / InstanceNorm compute everything in float64 and round each output
  once to the dtype (<= 1 U relative): k = 4. Saved statistics are rounded once to float32
  (float64 for float64 input): 4 U of that dtype.
- Their backward reads the saved rstd rounded to float32, one more U_f32 relative on every
  term before the final rounding: k = 4 + 4 U_f32 / U.
- layer_norm_axes runs the ordinary LayerNorm row kernels, which round a few times in their
  compute precision: k = 8 for y and 16 for the gradients, as in test_layer_norm.py.
- For float64 the float64 reference rounds about as often as the kernels, so both errors
  count: k is multiplied by 4.
"""

import concurrent.futures

import numpy as np
import pytest

import layernorm
from test_layer_norm import DTYPES, U, as_dtype, f64

CHANNEL_AXES = [1, -1]


def stats_u(dtype):
    """Unit roundoff of the saved statistics' dtype."""
    return U["float64"] if dtype == "float64" else U["float32"]


# --- float64 references -------------------------------------------------------------------
#
# Every normalization here is one computation on a float64 view `v` of x in which the
# elements sharing statistics are the axes `red` (keepdims), and the parameters broadcast as
# `wv`/`bv`; dweight/dbias sum over the axes `pred`. Besides the values, the references return
# the elementwise *scales* the tolerances use: the sum of the magnitudes of the terms a
# result is made of, with x_hat's own error counted as coming from a mean rounded to the
# working precision (|x_hat| + |mean| * rstd), so that results that cancel are still
# compared fairly.


def norm_forward(v, red, wv=1.0, bv=0.0, eps=1e-5, mean=None, var=None):
    """(y, mean, rstd, y_scale); mean/var from v unless given (eval-mode BatchNorm)."""
    if mean is None:
        mean, var = v.mean(axis=red, keepdims=True), v.var(axis=red, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = (v - mean) * rstd
    a = np.abs(xhat) + np.abs(mean) * rstd
    return xhat * wv + bv, mean, rstd, a * np.abs(wv) + np.abs(bv)


def norm_backward(dyv, v, red, pred, mean, rstd, wv=1.0, frozen=False):
    """((dx, dw, db), (dx_scale, dw_scale, db_scale)); frozen: statistics are constants."""
    xhat = (v - mean) * rstd
    a = np.abs(xhat) + np.abs(mean) * rstd
    g = dyv * wv
    if frozen:
        dx, dx_scale = rstd * g, rstd * np.abs(g)
    else:
        gm = g.mean(axis=red, keepdims=True)
        dx = rstd * (g - gm - xhat * (g * xhat).mean(axis=red, keepdims=True))
        dx_scale = rstd * (np.abs(g) + np.abs(gm) + a * (np.abs(g) * a).mean(axis=red, keepdims=True))
    dw, db = (dyv * xhat).sum(axis=pred), dyv.sum(axis=pred)
    scales = (dx_scale, (np.abs(dyv) * a).sum(axis=pred), np.abs(dyv).sum(axis=pred))
    return (dx, dw, db), scales


def channels_view(x, channel_axis, groups=None):
    """x as float64 (N, G, C/G, S) for GroupNorm (groups given) or (N, C, S) for BatchNorm,
    with its `red` and `pred` axes, and the function taking such a view back to x's layout."""
    xc = np.moveaxis(f64(x), channel_axis, 1)
    n, c = xc.shape[:2]
    if groups is None:
        v, red = xc.reshape(n, c, -1), (0, 2)
        pred = red
    else:
        v, red, pred = xc.reshape(n, groups, c // groups, -1), (2, 3), (0, 3)
    back = lambda a: np.moveaxis(np.reshape(a, xc.shape), 1, channel_axis)
    return v, red, pred, back


def per_channel(p, v, groups=None):
    """A per-channel vector (or 1.0 / 0.0 for None) shaped to broadcast against the view."""
    if p is None:
        return None
    return f64(p).reshape((1, -1, 1) if groups is None else (1, groups, -1, 1))


def ref_batch_norm(x, w=None, b=None, eps=1e-5, channel_axis=1, training=True, rm=None, rv=None, momentum=0.1):
    """(y, mean, rstd, new_running_mean, new_running_var, y_scale), mean/rstd per channel."""
    v, red, _, back = channels_view(x, channel_axis)
    wv, bv = per_channel(w, v), per_channel(b, v)
    wv, bv = 1.0 if wv is None else wv, 0.0 if bv is None else bv
    if training:
        y, mean, rstd, scale = norm_forward(v, red, wv, bv, eps)
        n = v.size // v.shape[1]
        batch_mean, batch_var = mean.ravel(), v.var(axis=red)
        new_rm = None if rm is None else (1 - momentum) * f64(rm) + momentum * batch_mean
        new_rv = None if rv is None else (1 - momentum) * f64(rv) + momentum * batch_var * n / (n - 1)
    else:
        y, mean, rstd, scale = norm_forward(v, red, wv, bv, eps, f64(rm).reshape(1, -1, 1), f64(rv).reshape(1, -1, 1))
        new_rm, new_rv = f64(rm), f64(rv)
    return back(y), mean.ravel(), rstd.ravel(), new_rm, new_rv, back(scale)


def ref_batch_norm_backward(dy, x, w=None, eps=1e-5, channel_axis=1, training=True, rm=None, rv=None):
    """(dx, dw, db) and their scales."""
    v, red, pred, back = channels_view(x, channel_axis)
    dyv = channels_view(dy, channel_axis)[0]
    if training:
        _, mean, rstd, _ = norm_forward(v, red, eps=eps)
    else:
        mean, rstd = f64(rm).reshape(1, -1, 1), 1.0 / np.sqrt(f64(rv).reshape(1, -1, 1) + eps)
    wv = per_channel(w, v)
    (dx, dw, db), (sx, sw, sb) = norm_backward(dyv, v, red, pred, mean, rstd, 1.0 if wv is None else wv,
                                               frozen=not training)
    return (back(dx), dw.ravel(), db.ravel()), (back(sx), sw.ravel(), sb.ravel())


def ref_group_norm(x, groups, w=None, b=None, eps=1e-5, channel_axis=1):
    """(y, mean, rstd, y_scale), the statistics shaped (N, groups)."""
    v, red, _, back = channels_view(x, channel_axis, groups)
    wv, bv = per_channel(w, v, groups), per_channel(b, v, groups)
    y, mean, rstd, scale = norm_forward(v, red, 1.0 if wv is None else wv, 0.0 if bv is None else bv, eps)
    return back(y), mean.reshape(v.shape[:2]), rstd.reshape(v.shape[:2]), back(scale)


def ref_group_norm_backward(dy, x, groups, w=None, eps=1e-5, channel_axis=1):
    """(dx, dw, db) and their scales."""
    v, red, pred, back = channels_view(x, channel_axis, groups)
    dyv = channels_view(dy, channel_axis, groups)[0]
    _, mean, rstd, _ = norm_forward(v, red, eps=eps)
    wv = per_channel(w, v, groups)
    (dx, dw, db), (sx, sw, sb) = norm_backward(dyv, v, red, pred, mean, rstd, 1.0 if wv is None else wv)
    return (back(dx), dw.ravel(), db.ravel()), (back(sx), sw.ravel(), sb.ravel())


def _axes_setup(x, axes, w, b):
    x = f64(x)
    red = tuple(sorted(a % x.ndim for a in axes))
    pred = tuple(a for a in range(x.ndim) if a not in red)
    pshape = tuple(d if a in red else 1 for a, d in enumerate(x.shape))
    wv = 1.0 if w is None else f64(w).reshape(pshape)
    bv = 0.0 if b is None else f64(b).reshape(pshape)
    return x, red, pred, wv, bv, tuple(x.shape[a] for a in red)


def ref_layer_norm_axes(x, axes, w=None, b=None, eps=1e-5):
    """(y, mean, rstd, y_scale), the statistics with keepdims shape; w/b in increasing axis
    order."""
    v, red, _, wv, bv, _ = _axes_setup(x, axes, w, b)
    return norm_forward(v, red, wv, bv, eps)


def ref_layer_norm_axes_backward(dy, x, axes, w=None, eps=1e-5):
    """(dx, dw, db) and their scales; dw/db shaped like the parameters."""
    v, red, pred, wv, _, param = _axes_setup(x, axes, w, None)
    _, mean, rstd, _ = norm_forward(v, red, eps=eps)
    (dx, dw, db), (sx, sw, sb) = norm_backward(f64(dy), v, red, pred, mean, rstd, wv)
    return (dx, dw.reshape(param), db.reshape(param)), (sx, sw.reshape(param), sb.reshape(param))


def close(got, want, dtype, scale, k, what=""):
    """|got - want| <= k * U[dtype] * scale elementwise, `scale` the result's (elementwise or
    scalar) scale; 4x that for float64, where the float64 reference rounds about as often
    as the kernel, so both errors count. Also checks got's dtype."""
    assert got.dtype == np.dtype(as_dtype(np.zeros(1), dtype).dtype), what
    if dtype == "float64":
        k *= 4
    got, want = f64(got), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, what
    bound = k * U[dtype] * np.broadcast_to(scale, want.shape)
    err = np.abs(got - want)
    bad = ~(err <= bound)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err / np.maximum(bound, 1e-300), 0)), want.shape)
        raise AssertionError(f"{what}: {bad.sum()} of {bad.size} elements off; worst at {i}: got {got[i]!r}, "
                             f"want {want[i]!r}, error {err[i]:.3g} > bound {bound[i]:.3g}")


def data(rng, shape, dtype, mean=1.0, std=2.0):
    return as_dtype(rng.normal(mean, std, shape), dtype)


# --- BatchNorm ------------------------------------------------------------------------------

BN_SHAPES = [(8, 3), (4, 3, 5), (2, 4, 3, 5)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channel_axis", CHANNEL_AXES)
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_training_matches_reference(rng, dtype, channel_axis, shape):
    x = data(rng, shape, dtype)
    c = shape[channel_axis]
    w, b = data(rng, c, dtype, 1.0, 0.5), data(rng, c, dtype, 0.0, 0.5)
    rm, rv = data(rng, c, dtype, 0.0, 1.0), as_dtype(rng.uniform(0.5, 2.0, c), dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    y, mean, rstd = layernorm.batch_norm_forward(x, rm, rv, w, b, True, 0.1, 1e-5, channel_axis)
    y_ref, mean_ref, rstd_ref, rm_ref, rv_ref, y_scale = ref_batch_norm(x, w, b, 1e-5, channel_axis, True, rm0, rv0)
    assert y.shape == x.shape and mean.shape == (c,) and rstd.shape == (c,)
    assert mean.dtype == rstd.dtype == (np.float64 if dtype == "float64" else np.float32)
    # y: one rounding of a float64 value (see the module docstring).
    close(y, y_ref, dtype, y_scale, 4, "y")
    np.testing.assert_allclose(mean, mean_ref, rtol=4 * stats_u(dtype), atol=4 * stats_u(dtype))
    np.testing.assert_allclose(rstd, rstd_ref, rtol=4 * stats_u(dtype))
    # Running statistics: updated in place, each rounded once to the dtype (the batch mean's
    # own error, relative to |old| + |batch| terms, is far below that).
    close(rm, rm_ref, dtype, np.abs(f64(rm0)) + np.abs(mean_ref), 2, "running_mean")
    close(rv, rv_ref, dtype, np.abs(rv_ref), 2, "running_var")
    # The plain function gives the same bits (and updates again).
    rm2, rv2 = rm0.copy(), rv0.copy()
    np.testing.assert_array_equal(layernorm.batch_norm(x, rm2, rv2, w, b, training=True, channel_axis=channel_axis), y)
    np.testing.assert_array_equal(rm2, rm)
    np.testing.assert_array_equal(rv2, rv)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channel_axis", CHANNEL_AXES)
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_backward_training_matches_reference(rng, dtype, channel_axis, shape):
    x, dy = data(rng, shape, dtype), data(rng, shape, dtype, 0.0, 1.0)
    c = shape[channel_axis]
    w, b = data(rng, c, dtype, 1.0, 0.5), data(rng, c, dtype, 0.0, 0.5)
    _, mean, rstd = layernorm.batch_norm_forward(x, None, None, w, b, True, channel_axis=channel_axis)
    dx, dw, db = layernorm.batch_norm_backward(dy, x, mean, rstd, w, b, channel_axis=channel_axis)
    (dx_ref, dw_ref, db_ref), (sx, sw, sb) = ref_batch_norm_backward(dy, x, w, 1e-5, channel_axis)
    assert dx.shape == x.shape and dw.shape == (c,) and db.shape == (c,)
    # The saved float32 rstd adds U_f32 relative to every term: bound by the terms' scale.
    k = 4 if dtype == "float64" else 4 + 4 * U["float32"] / U[dtype]
    close(dx, dx_ref, dtype, sx, k, "dx")
    close(dw, dw_ref, dtype, sw, k, "dw")
    close(db, db_ref, dtype, sb, 4, "db")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channel_axis", CHANNEL_AXES)
@pytest.mark.parametrize("shape", BN_SHAPES[1:])
def test_batch_norm_eval_matches_reference(rng, dtype, channel_axis, shape):
    x, dy = data(rng, shape, dtype), data(rng, shape, dtype, 0.0, 1.0)
    c = shape[channel_axis]
    w, b = data(rng, c, dtype, 1.0, 0.5), data(rng, c, dtype, 0.0, 0.5)
    rm, rv = data(rng, c, dtype, 0.5, 1.0), as_dtype(rng.uniform(0.5, 4.0, c), dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    y, mean, rstd = layernorm.batch_norm_forward(x, rm, rv, w, b, False, 0.1, 1e-5, channel_axis)
    # Eval mode: the running statistics are used, not changed, and no batch statistics saved.
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    assert mean.shape == (0,) and rstd.shape == (0,)
    y_ref, _, _, _, _, y_scale = ref_batch_norm(x, w, b, 1e-5, channel_axis, False, rm, rv)
    close(y, y_ref, dtype, y_scale, 4, "y")
    np.testing.assert_array_equal(layernorm.batch_norm(x, rm, rv, w, b, channel_axis=channel_axis), y)
    # Backward: the statistics are constants (computed from the running ones in float64).
    dx, dw, db = layernorm.batch_norm_backward(
        dy, x, None, None, w, b, training=False, running_mean=rm, running_var=rv, channel_axis=channel_axis
    )
    (dx_ref, dw_ref, db_ref), (sx, sw, sb) = ref_batch_norm_backward(dy, x, w, 1e-5, channel_axis, False, rm, rv)
    close(dx, dx_ref, dtype, sx, 4, "dx")
    close(dw, dw_ref, dtype, sw, 4, "dw")
    close(db, db_ref, dtype, sb, 4, "db")


def test_batch_norm_running_stats_follow_pytorch_convention(rng):
    # (N, C) = (5, 2), float64: new = (1 - m) * old + m * batch, var unbiased (n - 1 = 4).
    x = rng.normal(3.0, 2.0, (5, 2))
    rm, rv = np.array([1.0, -1.0]), np.array([2.0, 0.5])
    for m in [0.0, 0.1, 0.5, 1.0]:
        a, v = rm.copy(), rv.copy()
        out = layernorm.batch_norm(x, a, v, training=True, momentum=m)
        np.testing.assert_allclose(a, (1 - m) * rm + m * x.mean(axis=0), rtol=1e-15, atol=1e-15)
        np.testing.assert_allclose(v, (1 - m) * rv + m * x.var(axis=0, ddof=1), rtol=1e-14)
        assert out.shape == x.shape
    # Repeated calls keep averaging into the same arrays.
    a, v = np.zeros(2), np.ones(2)
    for _ in range(3):
        layernorm.batch_norm(x, a, v, training=True, momentum=0.5)
    np.testing.assert_allclose(a, (1 - 0.5**3) * x.mean(axis=0), rtol=1e-14)
    # Training without running statistics is fine (batch statistics only).
    y = layernorm.batch_norm(x, training=True)
    np.testing.assert_allclose(y, ref_batch_norm(x)[0], atol=1e-14)


def test_batch_norm_channel_axes_agree(rng):
    # The same data as (N, C, L) and as (N, L, C): the same result, moved.
    x = rng.normal(size=(4, 3, 6)).astype(np.float32)
    w = rng.normal(size=3).astype(np.float32)
    a, mean_a, rstd_a = layernorm.batch_norm_forward(x, weight=w, training=True)
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    b, mean_b, rstd_b = layernorm.batch_norm_forward(xl, weight=w, training=True, channel_axis=-1)
    np.testing.assert_array_equal(np.moveaxis(b, -1, 1), a)
    np.testing.assert_array_equal(mean_a, mean_b)
    np.testing.assert_array_equal(rstd_a, rstd_b)
    g = layernorm.group_norm(x, 1, channel_axis=1)
    gl = layernorm.group_norm(xl, 1, channel_axis=-1)
    np.testing.assert_array_equal(np.moveaxis(gl, -1, 1), g)


# --- GroupNorm and InstanceNorm -------------------------------------------------------------

GN_CASES = [((2, 6, 5), 1), ((2, 6, 5), 3), ((2, 6, 5), 6), ((3, 4, 2, 3), 2), ((4, 8), 4)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channel_axis", CHANNEL_AXES)
@pytest.mark.parametrize("shape,groups", GN_CASES)
def test_group_norm_matches_reference(rng, dtype, channel_axis, shape, groups):
    shape = shape if channel_axis == 1 else (shape[0],) + shape[2:] + (shape[1],)
    x, dy = data(rng, shape, dtype), data(rng, shape, dtype, 0.0, 1.0)
    c, n = shape[channel_axis], shape[0]
    w, b = data(rng, c, dtype, 1.0, 0.5), data(rng, c, dtype, 0.0, 0.5)
    y, mean, rstd = layernorm.group_norm_forward(x, groups, w, b, 1e-5, channel_axis)
    y_ref, mean_ref, rstd_ref, y_scale = ref_group_norm(x, groups, w, b, 1e-5, channel_axis)
    assert mean.shape == rstd.shape == (n, groups)
    close(y, y_ref, dtype, y_scale, 4, "y")
    np.testing.assert_allclose(mean, mean_ref, rtol=4 * stats_u(dtype), atol=4 * stats_u(dtype))
    np.testing.assert_allclose(rstd, rstd_ref, rtol=4 * stats_u(dtype))
    np.testing.assert_array_equal(layernorm.group_norm(x, groups, w, b, channel_axis=channel_axis), y)
    dx, dw, db = layernorm.group_norm_backward(dy, x, mean, rstd, groups, w, b, channel_axis=channel_axis)
    (dx_ref, dw_ref, db_ref), (sx, sw, sb) = ref_group_norm_backward(dy, x, groups, w, 1e-5, channel_axis)
    k = 4 if dtype == "float64" else 4 + 4 * U["float32"] / U[dtype]
    close(dx, dx_ref, dtype, sx, k, "dx")
    close(dw, dw_ref, dtype, sw, k, "dw")
    close(db, db_ref, dtype, sb, 4, "db")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channel_axis", CHANNEL_AXES)
def test_instance_norm_is_group_norm_with_one_channel_per_group(rng, dtype, channel_axis):
    shape = (3, 4, 7)
    x, dy = data(rng, shape, dtype), data(rng, shape, dtype, 0.0, 1.0)
    c = shape[channel_axis]
    w, b = data(rng, c, dtype, 1.0, 0.5), data(rng, c, dtype, 0.0, 0.5)
    y, mean, rstd = layernorm.instance_norm_forward(x, w, b, 1e-5, channel_axis)
    assert mean.shape == (3, c)
    y_ref, mean_ref, _, y_scale = ref_group_norm(x, c, w, b, 1e-5, channel_axis)
    close(y, y_ref, dtype, y_scale, 4, "y")
    np.testing.assert_allclose(mean, mean_ref, rtol=4 * stats_u(dtype), atol=4 * stats_u(dtype))
    y2, mean2, rstd2 = layernorm.group_norm_forward(x, c, w, b, 1e-5, channel_axis)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(mean, mean2)
    np.testing.assert_array_equal(layernorm.instance_norm(x, w, b, channel_axis=channel_axis), y)
    grads = layernorm.instance_norm_backward(dy, x, mean, rstd, w, b, channel_axis=channel_axis)
    grads2 = layernorm.group_norm_backward(dy, x, mean2, rstd2, c, w, b, channel_axis=channel_axis)
    for g1, g2 in zip(grads, grads2):
        np.testing.assert_array_equal(g1, g2)
    (dx_ref, _, _), (sx, _, _) = ref_group_norm_backward(dy, x, c, w, 1e-5, channel_axis)
    k = 4 if dtype == "float64" else 4 + 4 * U["float32"] / U[dtype]
    close(grads[0], dx_ref, dtype, sx, k, "dx")


def test_group_norm_sample_does_not_depend_on_the_batch(rng):
    x = rng.normal(size=(4, 6, 9)).astype(np.float32)
    full = layernorm.group_norm(x, 3)
    for i in range(4):
        np.testing.assert_array_equal(layernorm.group_norm(x[i:i + 1], 3), full[i:i + 1])


# --- LayerNorm over any axes ----------------------------------------------------------------

AXES = [(0,), (1,), (0, 2), (3, 1), (-1,), (-2, -1), (1, 2, 3), (0, 1, 2, 3)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axes", AXES)
def test_layer_norm_axes_matches_reference(rng, dtype, axes):
    shape = (2, 3, 4, 5)
    x, dy = data(rng, shape, dtype, 2.0, 3.0), data(rng, shape, dtype, 0.0, 1.0)
    pshape = tuple(shape[a % 4] for a in sorted(a % 4 for a in axes))
    w, b = data(rng, pshape, dtype, 1.0, 0.5), data(rng, pshape, dtype, 0.0, 0.5)
    y, mean, rstd = layernorm.layer_norm_axes_forward(x, list(axes), w, b)
    keep = tuple(1 if a in {a % 4 for a in axes} else d for a, d in enumerate(shape))
    assert y.shape == shape and mean.shape == keep and rstd.shape == keep
    y_ref, mean_ref, rstd_ref, y_scale = ref_layer_norm_axes(x, axes, w, b)
    # The LayerNorm row kernels round a few times in their compute precision
    # (test_layer_norm.py allows 8 U for y, 16 U for the gradients).
    close(y, y_ref, dtype, y_scale, 8, "y")
    np.testing.assert_allclose(mean, mean_ref, rtol=4 * U["float32"], atol=1e-12)
    np.testing.assert_allclose(rstd, rstd_ref, rtol=4 * U["float32"])
    np.testing.assert_array_equal(layernorm.layer_norm_axes(x, axes, w, b), y)
    dx, dw, db = layernorm.layer_norm_axes_backward(dy, x, mean, rstd, axes, w, b)
    refs, scales = ref_layer_norm_axes_backward(dy, x, axes, w)
    assert dw.shape == pshape and db.shape == pshape
    for name, got, want, scale in zip(["dx", "dw", "db"], [dx, dw, db], refs, scales):
        close(got, want, dtype, scale, 16, name)


def test_layer_norm_axes_trailing_is_layer_norm(rng):
    x = rng.normal(size=(3, 4, 6)).astype(np.float32)
    w = rng.normal(size=(4, 6)).astype(np.float32)
    y, mean, rstd = layernorm.layer_norm_axes(x, [-2, -1], w, return_stats=True)
    y2, mean2, rstd2 = layernorm.layer_norm(x, (4, 6), w, return_stats=True)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(mean, mean2)
    np.testing.assert_array_equal(rstd, rstd2)
    # A transposed problem gives the transposed result, bit for bit.
    xt = np.ascontiguousarray(np.moveaxis(x, 0, -1))  # (4, 6, 3) normalized over axes 0, 1
    np.testing.assert_array_equal(np.moveaxis(layernorm.layer_norm_axes(xt, (0, 1), w), -1, 0), y)


def test_keras_layer_non_trailing_axes(rng):
    x = rng.normal(1.0, 2.0, (2, 3, 4, 5))
    layer = layernorm.LayerNormalization(axis=[3, 1])
    y = layer(x)
    assert layer.gamma.shape == (3, 5) and layer.beta.shape == (3, 5)
    np.testing.assert_allclose(y, ref_layer_norm_axes(x, (1, 3), eps=1e-3)[0], atol=1e-12)
    layer.gamma = rng.normal(size=(3, 5))
    y = layer(x)
    np.testing.assert_allclose(y, ref_layer_norm_axes(x, (1, 3), layer.gamma, layer.beta, eps=1e-3)[0], atol=1e-12)
    dy = rng.normal(size=x.shape)
    dx = layer.backward(dy)
    (dx_ref, dg_ref, db_ref), _ = ref_layer_norm_axes_backward(dy, x, (1, 3), layer.gamma, eps=1e-3)
    np.testing.assert_allclose(dx, dx_ref, atol=1e-12)
    np.testing.assert_allclose(layer.gamma_grad, dg_ref, atol=1e-12)
    np.testing.assert_allclose(layer.beta_grad, db_ref, atol=1e-12)
    # An empty batch still works, as for trailing axes.
    empty = layernorm.LayerNormalization(axis=1)(np.zeros((0, 3, 4)))
    assert empty.shape == (0, 3, 4)


# --- Finite differences (float64) -----------------------------------------------------------


def fd_check(loss, params, grads, names):
    """Central differences of the scalar loss(*params) against the analytic gradients."""
    for i, (p, g, name) in enumerate(zip(params, grads, names)):
        fd = np.zeros_like(p)
        for j in np.ndindex(p.shape):
            h = 1e-5 * (1 + abs(p[j]))
            plus = [q.copy() for q in params]
            minus = [q.copy() for q in params]
            plus[i][j] += h
            minus[i][j] -= h
            fd[j] = (loss(*plus) - loss(*minus)) / (2 * h)
        # Central differences: O(h^2) truncation and ~1e-16/h cancellation, about 1e-9 here.
        np.testing.assert_allclose(g, fd, atol=1e-6, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("channel_axis", CHANNEL_AXES)
def test_batch_norm_gradients_match_finite_differences(rng, channel_axis):
    x = rng.normal(0.5, 2.0, (3, 2, 3))
    c = x.shape[channel_axis]
    w, b = rng.normal(1.0, 0.5, c), rng.normal(size=c)
    rm, rv = rng.normal(size=c), rng.uniform(0.5, 2.0, c)
    r = rng.normal(size=x.shape)
    for training in [True, False]:
        def loss(x_, w_, b_):
            y = layernorm.batch_norm(x_, rm.copy(), rv.copy(), w_, b_, training, channel_axis=channel_axis)
            return float((y * r).sum())

        _, mean, rstd = layernorm.batch_norm_forward(x, rm.copy(), rv.copy(), w, b, training,
                                                     channel_axis=channel_axis)
        grads = layernorm.batch_norm_backward(r, x, mean, rstd, w, b, training=training, running_mean=rm,
                                              running_var=rv, channel_axis=channel_axis)
        fd_check(loss, [x, w, b], grads, ["x", "w", "b"])


@pytest.mark.parametrize("channel_axis", CHANNEL_AXES)
def test_group_and_instance_norm_gradients_match_finite_differences(rng, channel_axis):
    x = rng.normal(0.5, 2.0, (2, 4, 3) if channel_axis == 1 else (2, 3, 4))
    w, b = rng.normal(1.0, 0.5, 4), rng.normal(size=4)
    r = rng.normal(size=x.shape)
    for groups in [2, None]:
        if groups is None:
            fwd = lambda x_, w_, b_: layernorm.instance_norm_forward(x_, w_, b_, channel_axis=channel_axis)
            bwd = lambda m, s: layernorm.instance_norm_backward(r, x, m, s, w, b, channel_axis=channel_axis)
        else:
            fwd = lambda x_, w_, b_: layernorm.group_norm_forward(x_, groups, w_, b_, channel_axis=channel_axis)
            bwd = lambda m, s: layernorm.group_norm_backward(r, x, m, s, groups, w, b, channel_axis=channel_axis)
        _, mean, rstd = fwd(x, w, b)
        fd_check(lambda *p: float((fwd(*p)[0] * r).sum()), [x, w, b], bwd(mean, rstd), ["x", "w", "b"])


def test_layer_norm_axes_gradients_match_finite_differences(rng):
    x = rng.normal(0.5, 2.0, (3, 2, 4))
    w, b = rng.normal(1.0, 0.5, (3, 4)), rng.normal(size=(3, 4))
    r = rng.normal(size=x.shape)
    _, mean, rstd = layernorm.layer_norm_axes_forward(x, (0, 2), w, b)
    grads = layernorm.layer_norm_axes_backward(r, x, mean, rstd, (0, 2), w, b)
    loss = lambda x_, w_, b_: float((layernorm.layer_norm_axes(x_, (0, 2), w_, b_) * r).sum())
    fd_check(loss, [x, w, b], grads, ["x", "w", "b"])


# --- Masks, absent parameters, layouts, threads ---------------------------------------------


def test_backward_masks_and_absent_parameters(rng):
    x, dy = rng.normal(size=(4, 3, 5)), rng.normal(size=(4, 3, 5))
    w, b = np.ones(3), np.zeros(3)
    _, mean, rstd = layernorm.batch_norm_forward(x, training=True)
    dx, dw, db = layernorm.batch_norm_backward(dy, x, mean, rstd)
    assert dx is not None and dw is None and db is None
    dx, dw, db = layernorm.batch_norm_backward(dy, x, mean, rstd, w, b, output_mask=(False, True, True))
    assert dx is None and dw is not None and db is not None
    _, mean, rstd = layernorm.group_norm_forward(x, 3)
    dx, dw, db = layernorm.group_norm_backward(dy, x, mean, rstd, 3, w, None)
    assert dx is not None and dw is not None and db is None
    dx, dw, db = layernorm.instance_norm_backward(dy, x, mean, rstd, w, b, output_mask=(True, False, False))
    assert dx is not None and dw is None and db is None
    _, mean, rstd = layernorm.layer_norm_axes_forward(x, (0, 2))
    dx, dw, db = layernorm.layer_norm_axes_backward(dy, x, mean, rstd, (0, 2), None, b)
    assert dx is not None and dw is None and db.shape == (4, 5)


def test_non_contiguous_and_big_endian_inputs(rng):
    base = rng.normal(size=(6, 4, 8)).astype(np.float32)
    x = base.transpose(0, 2, 1)[:, ::2]  # (6, 4, 4), strided
    xc = np.ascontiguousarray(x)
    np.testing.assert_array_equal(layernorm.batch_norm(x, training=True), layernorm.batch_norm(xc, training=True))
    np.testing.assert_array_equal(layernorm.group_norm(x, 2), layernorm.group_norm(xc, 2))
    np.testing.assert_array_equal(layernorm.layer_norm_axes(x, 1), layernorm.layer_norm_axes(xc, 1))
    xb = xc.astype(">f4")
    np.testing.assert_array_equal(layernorm.instance_norm(xb), layernorm.instance_norm(xc))
    # Eval-mode running statistics are only read: any layout or byte order will do.
    rm, rv = np.zeros(8, np.float32)[::2], np.ones(4, ">f4")
    np.testing.assert_array_equal(layernorm.batch_norm(xc, rm, rv), layernorm.batch_norm(xc, np.zeros(4, np.float32),
                                                                                          np.ones(4, np.float32)))


def test_threads_give_the_same_bits(rng):
    # Large enough to be split across the pool; many Python threads at once.
    xs = [rng.normal(size=(16, 32, 1024)).astype(np.float32) for _ in range(4)]
    calls = [
        lambda x: layernorm.batch_norm(x, training=True),
        lambda x: layernorm.group_norm(x, 8),
        lambda x: layernorm.layer_norm_axes(x, (0, 2)),
    ]
    for call in calls:
        serial = [call(x) for x in xs]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for a, b in zip(serial, pool.map(call, xs)):
                np.testing.assert_array_equal(a, b)


# --- Errors ---------------------------------------------------------------------------------

X = np.ones((4, 3, 2))
X[0, 0, 0] = 2.0


def readonly(a):
    a = a.copy()
    a.setflags(write=False)
    return a


@pytest.mark.parametrize(
    "call,error",
    [
        # BatchNorm: arguments
        (lambda: layernorm.batch_norm(X), layernorm.LayerNormError),  # eval needs running stats
        (lambda: layernorm.batch_norm(X, np.zeros(3), None, training=True), layernorm.LayerNormError),
        (lambda: layernorm.batch_norm(X, training=True, momentum=1.5), layernorm.MomentumError),
        (lambda: layernorm.batch_norm(X, training=True, momentum=-0.1), layernorm.MomentumError),
        (lambda: layernorm.batch_norm(X, training=True, momentum=None), TypeError),
        (lambda: layernorm.batch_norm(X, np.zeros(3), -np.ones(3)), layernorm.RunningStatsError),
        (lambda: layernorm.batch_norm(X, np.zeros(3), np.array([1.0, np.nan, 1.0])), layernorm.RunningStatsError),
        (lambda: layernorm.batch_norm(X, np.zeros(4), np.ones(4)), layernorm.ShapeError),
        (lambda: layernorm.batch_norm(np.ones((1, 3)), training=True), layernorm.ShapeError),  # one value per channel
        (lambda: layernorm.batch_norm(X[:1, :, :1], training=True), layernorm.ShapeError),
        (lambda: layernorm.batch_norm(X, training=True, channel_axis=3), layernorm.AxisError),
        (lambda: layernorm.batch_norm(X, training=True, channel_axis=1.0), TypeError),
        (lambda: layernorm.batch_norm(X, training=True, eps=0.0), layernorm.EpsilonError),
        (lambda: layernorm.batch_norm(X, training=True, weight=np.ones(2)), layernorm.ShapeError),
        (lambda: layernorm.batch_norm(X, training=True, bias=np.ones((3, 1))), layernorm.ShapeError),
        (lambda: layernorm.batch_norm(X, training=True, weight=np.ones(3, np.float32)), layernorm.DTypeError),
        (lambda: layernorm.batch_norm(X.astype(np.int32), training=True), layernorm.DTypeError),
        (lambda: layernorm.batch_norm(np.zeros((0, 3)), training=True), layernorm.EmptyError),
        # BatchNorm: running statistics updated in place must be writable arrays like x
        (lambda: layernorm.batch_norm(X, readonly(np.zeros(3)), np.ones(3), training=True), layernorm.OutputError),
        (lambda: layernorm.batch_norm(X, np.zeros(3), readonly(np.ones(3)), training=True), layernorm.OutputError),
        (lambda: layernorm.batch_norm(X, np.zeros(3, np.float32), np.ones(3), training=True), layernorm.DTypeError),
        (lambda: layernorm.batch_norm(X, np.zeros(6)[::2], np.ones(3), training=True), layernorm.ShapeError),
        (lambda: layernorm.batch_norm(X, np.zeros((3, 1)), np.ones(3), training=True), layernorm.ShapeError),
        (lambda: layernorm.batch_norm(X, np.zeros(2), np.ones(2), training=True), layernorm.ShapeError),
        (lambda: layernorm.batch_norm(X, [0.0, 0.0, 0.0], np.ones(3), training=True), layernorm.DTypeError),
        (lambda: layernorm.batch_norm(X, np.zeros(3, ">f8"), np.ones(3), training=True), layernorm.DTypeError),
        # BatchNorm backward
        (lambda: layernorm.batch_norm_backward(X, X, None, None), TypeError),
        (lambda: layernorm.batch_norm_backward(X, X, np.zeros(2), np.ones(2)), layernorm.ShapeError),
        (lambda: layernorm.batch_norm_backward(X[:2], X, np.zeros(3), np.ones(3)), layernorm.ShapeError),
        (lambda: layernorm.batch_norm_backward(X, X, None, None, training=False), layernorm.LayerNormError),
        (lambda: layernorm.batch_norm_backward(X, X, None, None, training=False, running_mean=np.zeros(3),
                                               running_var=-np.ones(3)), layernorm.RunningStatsError),
        # GroupNorm / InstanceNorm
        (lambda: layernorm.group_norm(X, 2), layernorm.ShapeError),  # 2 groups do not divide 3 channels
        (lambda: layernorm.group_norm(X, 0), layernorm.ShapeError),
        (lambda: layernorm.group_norm(X, -1), layernorm.ShapeError),
        (lambda: layernorm.group_norm(X, 1.5), TypeError),
        (lambda: layernorm.group_norm(X, 1, channel_axis=0), layernorm.AxisError),  # no batch axis
        (lambda: layernorm.instance_norm(X, channel_axis=-3), layernorm.AxisError),
        (lambda: layernorm.group_norm(np.ones(3), 1), layernorm.AxisError),
        (lambda: layernorm.group_norm(X, 1, eps=float("nan")), layernorm.EpsilonError),
        (lambda: layernorm.group_norm(X, 3, weight=np.ones(4)), layernorm.ShapeError),
        (lambda: layernorm.instance_norm(X, bias=np.ones(3, np.float16)), layernorm.DTypeError),
        (lambda: layernorm.instance_norm(X.astype(np.complex64)), layernorm.DTypeError),
        (lambda: layernorm.group_norm_backward(X, X, np.zeros(4), np.ones(4), 3), layernorm.ShapeError),
        (lambda: layernorm.instance_norm_backward(X, X, np.zeros(4), np.ones(4)), layernorm.ShapeError),
        (lambda: layernorm.group_norm_backward(X, X, np.zeros(3), np.ones(3), 2), layernorm.ShapeError),
        # LayerNorm over axes
        (lambda: layernorm.layer_norm_axes(X, (1, -2)), layernorm.AxisError),  # repeated
        (lambda: layernorm.layer_norm_axes(X, (3,)), layernorm.AxisError),
        (lambda: layernorm.layer_norm_axes(X, ()), layernorm.EmptyError),
        (lambda: layernorm.layer_norm_axes(X, "a"), TypeError),
        (lambda: layernorm.layer_norm_axes(X, [1.0]), TypeError),
        (lambda: layernorm.layer_norm_axes(X, (2, 0), weight=np.ones((2, 4))), layernorm.ShapeError),
        (lambda: layernorm.layer_norm_axes(X, 0, eps=-1.0), layernorm.EpsilonError),
        (lambda: layernorm.layer_norm_axes(np.zeros((2, 0)), 1), layernorm.EmptyError),
        (lambda: layernorm.layer_norm_axes_backward(X, X, np.zeros(5), np.ones(6), 0), layernorm.ShapeError),
        (lambda: layernorm.layer_norm_axes_backward(X[:1], X, np.zeros(6), np.ones(6), 0), layernorm.ShapeError),
    ],
)
def test_bad_inputs_raise_typed_errors(call, error):
    with pytest.raises(error):
        call()


def test_failed_training_call_leaves_running_stats_alone():
    rm, rv = np.full(3, 7.0), np.full(3, 9.0)
    for bad in [dict(momentum=2.0), dict(eps=0.0), dict(weight=np.ones(2))]:
        with pytest.raises(layernorm.LayerNormError):
            layernorm.batch_norm(X, rm, rv, training=True, **bad)
    with pytest.raises(layernorm.ShapeError):
        layernorm.batch_norm(X[:1, :, :1], rm, rv, training=True)
    assert (rm == 7.0).all() and (rv == 9.0).all()


def test_running_stats_may_not_alias_other_arguments():
    x = np.ones((4, 3)) + np.arange(12).reshape(4, 3)
    for rm, rv in [(x[0], np.ones(3)), (np.zeros(3), x[1])]:
        with pytest.raises(layernorm.OutputError):
            layernorm.batch_norm(x, rm, rv, training=True)
    same = np.ones(3)
    with pytest.raises(layernorm.OutputError):
        layernorm.batch_norm(x, same, same, training=True)
    w = np.ones(3)
    with pytest.raises(layernorm.OutputError):
        layernorm.batch_norm(x, w, np.ones(3), w, training=True)


def test_new_error_classes():
    for cls in [layernorm.MomentumError, layernorm.RunningStatsError]:
        assert issubclass(cls, layernorm.LayerNormError) and issubclass(cls, ValueError)
        assert cls.__name__ in layernorm.__all__


# --- PyTorch (skipped when it is not installed) ---------------------------------------------


@pytest.mark.parametrize("channel_axis", CHANNEL_AXES)
def test_batch_norm_matches_torch(rng, channel_axis):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    shape = (4, 3, 5, 2)
    x = rng.normal(1.0, 2.0, shape)
    c = shape[channel_axis]
    w, b = rng.normal(1.0, 0.5, c), rng.normal(size=c)
    dy = rng.normal(size=shape)
    to_torch = lambda a: torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, channel_axis, 1)))
    for dtype, tol in [(np.float64, 1e-12), (np.float32, 2e-5)]:
        xd, wd, bd = x.astype(dtype), w.astype(dtype), b.astype(dtype)
        for training in [True, False]:
            rm, rv = np.linspace(-1, 1, c).astype(dtype), np.linspace(0.5, 2, c).astype(dtype)
            rm_t, rv_t = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
            xt = to_torch(xd).requires_grad_(True)
            wt, bt = torch.from_numpy(wd).requires_grad_(True), torch.from_numpy(bd).requires_grad_(True)
            yt = F.batch_norm(xt, rm_t, rv_t, wt, bt, training=training, momentum=0.2, eps=1e-4)
            yt.backward(to_torch(dy.astype(dtype)))
            y, mean, rstd = layernorm.batch_norm_forward(xd, rm, rv, wd, bd, training, 0.2, 1e-4, channel_axis)
            np.testing.assert_allclose(np.moveaxis(y, channel_axis, 1), yt.detach().numpy(), atol=tol, rtol=0)
            np.testing.assert_allclose(rm, rm_t.numpy(), atol=tol, rtol=0)
            np.testing.assert_allclose(rv, rv_t.numpy(), atol=tol, rtol=tol)
            rm0, rv0 = np.linspace(-1, 1, c).astype(dtype), np.linspace(0.5, 2, c).astype(dtype)
            dx, dw, db = layernorm.batch_norm_backward(dy.astype(dtype), xd, mean, rstd, wd, bd, training=training,
                                                      running_mean=rm0, running_var=rv0, eps=1e-4,
                                                      channel_axis=channel_axis)
            np.testing.assert_allclose(np.moveaxis(dx, channel_axis, 1), xt.grad.numpy(), atol=10 * tol, rtol=0)
            np.testing.assert_allclose(dw, wt.grad.numpy(), atol=10 * tol, rtol=tol)
            np.testing.assert_allclose(db, bt.grad.numpy(), atol=10 * tol, rtol=tol)


def test_batch_norm_stats_match_native_batch_norm(rng):
    torch = pytest.importorskip("torch")
    x = rng.normal(size=(5, 4, 3))
    _, save_mean, save_invstd = torch.native_batch_norm(torch.from_numpy(x), None, None, None, None, True, 0.1, 1e-5)
    _, mean, rstd = layernorm.batch_norm_forward(x, training=True)
    np.testing.assert_allclose(mean, save_mean.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(rstd, save_invstd.numpy(), rtol=1e-12)


@pytest.mark.parametrize("channel_axis", CHANNEL_AXES)
@pytest.mark.parametrize("groups", [1, 2, 6, None])
def test_group_and_instance_norm_match_torch(rng, channel_axis, groups):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    shape = (3, 6, 4, 5) if channel_axis == 1 else (3, 4, 5, 6)
    x = rng.normal(1.0, 2.0, shape)
    dy = rng.normal(size=shape)
    w, b = rng.normal(1.0, 0.5, 6), rng.normal(size=6)
    to_torch = lambda a: torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, channel_axis, 1)))
    xt = to_torch(x).requires_grad_(True)
    wt, bt = torch.from_numpy(w).requires_grad_(True), torch.from_numpy(b).requires_grad_(True)
    if groups is None:
        yt = F.instance_norm(xt, weight=wt, bias=bt, eps=1e-5)
        y, mean, rstd = layernorm.instance_norm_forward(x, w, b, 1e-5, channel_axis)
        dx, dw, db = layernorm.instance_norm_backward(dy, x, mean, rstd, w, b, channel_axis=channel_axis)
    else:
        yt = F.group_norm(xt, groups, wt, bt, 1e-5)
        y, mean, rstd = layernorm.group_norm_forward(x, groups, w, b, 1e-5, channel_axis)
        dx, dw, db = layernorm.group_norm_backward(dy, x, mean, rstd, groups, w, b, channel_axis=channel_axis)
        if channel_axis == 1:
            _, m_t, r_t = torch.native_group_norm(xt.detach(), None, None, 3, 6, 20, groups, 1e-5)
            assert mean.shape == tuple(m_t.shape)
            np.testing.assert_allclose(mean, m_t.numpy(), rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(rstd, r_t.numpy(), rtol=1e-12)
    yt.backward(to_torch(dy))
    np.testing.assert_allclose(np.moveaxis(y, channel_axis, 1), yt.detach().numpy(), atol=1e-12, rtol=0)
    np.testing.assert_allclose(np.moveaxis(dx, channel_axis, 1), xt.grad.numpy(), atol=1e-11, rtol=0)
    np.testing.assert_allclose(dw, wt.grad.numpy(), atol=1e-11, rtol=1e-12)
    np.testing.assert_allclose(db, bt.grad.numpy(), atol=1e-11, rtol=1e-12)


def test_layer_norm_axes_matches_torch_after_permuting(rng):
    torch = pytest.importorskip("torch")
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    w = rng.normal(size=(3, 5)).astype(np.float32)
    ours = layernorm.layer_norm_axes(x, (1, 3), w)
    xp = torch.from_numpy(x).permute(0, 2, 1, 3)  # (2, 4, 3, 5): axes 1 and 3 trailing
    theirs = torch.nn.functional.layer_norm(xp, (3, 5), torch.from_numpy(w)).permute(0, 2, 1, 3)
    np.testing.assert_allclose(ours, theirs.numpy(), atol=2e-5, rtol=0)


def test_torch_autograd_batch_norm_and_group_norm():
    torch = pytest.importorskip("torch")
    import layernorm.torch as lt

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, generator=g, requires_grad=True)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    for training in [True, False]:
        assert torch.autograd.gradcheck(
            lambda x, w, b: lt.batch_norm(x, rm.clone(), rv.clone(), w, b, training=training), (x, w, b)
        )
    x6 = torch.randn(2, 6, 4, dtype=torch.float64, generator=g, requires_grad=True)
    w6 = torch.randn(6, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: lt.group_norm(x, 3, w), (x6, w6))


def test_torch_modules_match_torch_modules():
    torch = pytest.importorskip("torch")
    import layernorm.torch as lt

    torch.manual_seed(2)
    ours, theirs = lt.BatchNorm(4, momentum=0.3), torch.nn.BatchNorm2d(4, momentum=0.3)
    for step in range(3):  # training steps: outputs, gradients and running statistics agree
        x = torch.randn(5, 4, 3, 3) * 2 + 1
        x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ours(x1).pow(2).sum().backward()
        theirs(x2).pow(2).sum().backward()
        np.testing.assert_allclose(x1.grad.numpy(), x2.grad.numpy(), atol=1e-4)
    np.testing.assert_allclose(ours.running_mean.numpy(), theirs.running_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(ours.running_var.numpy(), theirs.running_var.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours.weight.grad.numpy(), theirs.weight.grad.numpy(), atol=1e-3)
    assert int(ours.num_batches_tracked) == 3
    ours.eval(), theirs.eval()
    x = torch.randn(2, 4, 3, 3)
    np.testing.assert_allclose(ours(x).detach().numpy(), theirs(x).detach().numpy(), atol=1e-5)
    gn_ours, gn_theirs = lt.GroupNorm(2, 4), torch.nn.GroupNorm(2, 4)
    np.testing.assert_allclose(gn_ours(x).detach().numpy(), gn_theirs(x).detach().numpy(), atol=1e-5)
