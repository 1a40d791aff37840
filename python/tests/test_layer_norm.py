"""layernorm's Python API against a float64 numpy reference (always) and PyTorch (when
installed): values, gradients, layouts, dtypes, errors, threads and fork."""

import concurrent.futures
import multiprocessing
import os

import numpy as np
import pytest

import layernorm
from conftest import reference_backward, reference_forward

try:
    import ml_dtypes
except ImportError:  # bfloat16 tests are skipped without it
    ml_dtypes = None

# Unit roundoff of each dtype; values are compared with a few of them relative to the row's
# scale (the kernels round at most ~6 times in the storage precision).
U = {"float32": 2.0**-24, "float64": 2.0**-53, "float16": 2.0**-11, "bfloat16": 2.0**-8}
DTYPES = ["float32", "float64", "float16"] + (["bfloat16"] if ml_dtypes else [])


def as_dtype(a, name):
    if name == "bfloat16":
        return np.asarray(a, dtype=np.float32).astype(ml_dtypes.bfloat16)
    return np.asarray(a).astype(name)


def f64(a):
    return np.asarray(a).astype(np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k", [((4, 7), 1), ((2, 3, 16), 1), ((3, 4, 5), 2), ((5, 1), 1), ((2, 1023), 1)])
@pytest.mark.parametrize("affine", ["none", "scale", "both"])
def test_forward_matches_reference(rng, dtype, shape, k, affine):
    x = as_dtype(rng.normal(2.0, 3.0, shape), dtype)
    ns = shape[-k:]
    w = as_dtype(rng.normal(1.0, 0.5, ns), dtype) if affine != "none" else None
    b = as_dtype(rng.normal(0.0, 0.5, ns), dtype) if affine == "both" else None
    y, mean, rstd = layernorm.layer_norm(x, ns, w, b, return_stats=True)
    assert y.dtype == x.dtype and y.shape == x.shape
    stats_dtype = np.float64 if dtype == "float64" else np.float32
    assert mean.dtype == stats_dtype and rstd.dtype == stats_dtype
    assert mean.shape == shape[:-k] + (1,) * k
    y_ref, mean_ref, rstd_ref = reference_forward(x, k, None if w is None else f64(w), None if b is None else f64(b))
    scale = np.abs(y_ref).max() + 1.0
    np.testing.assert_allclose(f64(y), y_ref, atol=8 * U[dtype] * scale, rtol=0)
    np.testing.assert_allclose(f64(mean), mean_ref, rtol=4 * U["float32"], atol=1e-12)
    np.testing.assert_allclose(f64(rstd), rstd_ref, rtol=4 * U["float32"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_reference(rng, dtype):
    shape, k = (6, 5, 12), 1
    x = as_dtype(rng.normal(1.0, 2.0, shape), dtype)
    dy = as_dtype(rng.normal(size=shape), dtype)
    w = as_dtype(rng.normal(1.0, 0.5, 12), dtype)
    b = as_dtype(rng.normal(size=12), dtype)
    _, mean, rstd = layernorm.layer_norm(x, 12, w, b, return_stats=True)
    dx, dw, db = layernorm.layer_norm_backward(dy, x, mean, rstd, 12, w, b)
    dx_ref, dw_ref, db_ref = reference_backward(f64(dy), f64(x), k, f64(w))
    for got, want in [(dx, dx_ref), (dw, dw_ref), (db, db_ref)]:
        assert got.dtype == x.dtype and got.shape == want.shape
        np.testing.assert_allclose(f64(got), want, atol=16 * U[dtype] * (np.abs(want).max() + 1), rtol=0)


def test_backward_mask_and_absent_parameters(rng):
    x = rng.normal(size=(3, 8))
    dy = rng.normal(size=(3, 8))
    _, mean, rstd = layernorm.layer_norm(x, 8, return_stats=True)
    dx, dw, db = layernorm.layer_norm_backward(dy, x, mean, rstd, 8)
    assert dx is not None and dw is None and db is None
    w = np.ones(8)
    dx2, dw2, db2 = layernorm.layer_norm_backward(dy, x, mean, rstd, 8, w, None, (False, True, True))
    assert dx2 is None and dw2 is not None and db2 is None


def test_gradients_match_finite_differences(rng):
    # L = sum(y * r); central differences in float64 (step scaled to the row's spread).
    x = rng.normal(0.5, 2.0, (3, 7))
    w = rng.normal(1.0, 0.5, 7)
    b = rng.normal(size=7)
    r = rng.normal(size=(3, 7))
    loss = lambda x_, w_, b_: float((layernorm.layer_norm(x_, 7, w_, b_) * r).sum())
    _, mean, rstd = layernorm.layer_norm(x, 7, w, b, return_stats=True)
    dx, dw, db = layernorm.layer_norm_backward(r, x, mean, rstd, 7, w, b)
    for name, param, grad in [("x", x, dx), ("w", w, dw), ("b", b, db)]:
        fd = np.zeros_like(param)
        for i in np.ndindex(param.shape):
            h = 1e-5 * (1 + abs(param[i]))
            plus, minus = param.copy(), param.copy()
            plus[i] += h
            minus[i] -= h
            args = {"x": (x, w, b), "w": (x, w, b), "b": (x, w, b)}[name]
            pick = lambda p: (p, w, b) if name == "x" else (x, p, b) if name == "w" else (x, w, p)
            fd[i] = (loss(*pick(plus)) - loss(*pick(minus))) / (2 * h)
        np.testing.assert_allclose(grad, fd, atol=1e-6, rtol=1e-6, err_msg=name)


def test_large_mean_stays_exact(rng):
    # float32 x = 1e7 + N(0, 1): normwise error below 1e-6 against float64 on the same values.
    x = (1e7 + rng.normal(size=(16, 768))).astype(np.float32)
    y = layernorm.layer_norm(x, 768)
    y_ref, _, _ = reference_forward(x, 1)
    assert np.linalg.norm(f64(y) - y_ref) / np.linalg.norm(y_ref) < 1e-6


@pytest.mark.parametrize(
    "view",
    [
        lambda a: a.T,
        lambda a: a[:, ::2],
        lambda a: a[::-1, ::-1],
        lambda a: np.asfortranarray(a),
        lambda a: np.broadcast_to(a[:1], a.shape),
    ],
)
def test_non_contiguous_inputs(rng, view):
    base = rng.normal(size=(12, 12)).astype(np.float32)
    x = view(base)
    n = x.shape[-1]
    np.testing.assert_array_equal(layernorm.layer_norm(x, n), layernorm.layer_norm(np.ascontiguousarray(x), n))


def test_out_is_filled_and_returned(rng):
    x = rng.normal(size=(5, 9)).astype(np.float32)
    out = np.empty_like(x)
    y = layernorm.layer_norm(x, 9, out=out)
    assert y is out
    np.testing.assert_array_equal(out, layernorm.layer_norm(x, 9))
    with pytest.raises(layernorm.DTypeError):
        layernorm.layer_norm(x, 9, out=np.empty((5, 9), dtype=np.float64))
    with pytest.raises(layernorm.ShapeError):
        layernorm.layer_norm(x, 9, out=np.empty((9, 5), dtype=np.float32))
    with pytest.raises(layernorm.ShapeError):
        layernorm.layer_norm(x, 9, out=np.empty((9, 5), dtype=np.float32).T)
    with pytest.raises(layernorm.OutputError):
        ro = np.empty_like(x)
        ro.setflags(write=False)
        layernorm.layer_norm(x, 9, out=ro)
    with pytest.raises(layernorm.OutputError):
        layernorm.layer_norm(x, 9, out=x)  # out may not alias the input


@pytest.mark.parametrize(
    "call,error",
    [
        (lambda: layernorm.layer_norm(np.ones((2, 3), dtype=np.int64), 3), TypeError),
        (lambda: layernorm.layer_norm(np.array([["a", "b"]]), 2), TypeError),
        (lambda: layernorm.layer_norm(np.array([[1.0, None]], dtype=object), 2), TypeError),
        (lambda: layernorm.layer_norm([[1.0, 2.0]], 2), TypeError),
        (lambda: layernorm.layer_norm(np.ones((2, 3)), "x"), TypeError),
        (lambda: layernorm.layer_norm(np.ones((2, 3), dtype=np.complex64), 3), TypeError),
        (lambda: layernorm.layer_norm(np.ones((2, 3)), 4), layernorm.ShapeError),
        (lambda: layernorm.layer_norm(np.ones((2, 3)), (2, 3, 1)), layernorm.ShapeError),
        (lambda: layernorm.layer_norm(np.ones((2, 3)), 3, weight=np.ones(4)), layernorm.ShapeError),
        (lambda: layernorm.layer_norm(np.ones((2, 3)), 3, bias=np.ones((3, 1))), layernorm.ShapeError),
        (lambda: layernorm.layer_norm(np.ones((2, 3)), 3, weight=np.ones(3, dtype=np.float32)), layernorm.DTypeError),
        (lambda: layernorm.layer_norm(np.ones((2, 3)), 3, eps=0.0), layernorm.EpsilonError),
        (lambda: layernorm.layer_norm(np.ones((2, 3)), 3, eps=float("nan")), layernorm.EpsilonError),
        (lambda: layernorm.layer_norm(np.ones((2, 3)), 3, eps=-1.0), layernorm.EpsilonError),
        (lambda: layernorm.layer_norm(np.ones((2, 3)), 3.7), TypeError),
        (lambda: layernorm.layer_norm(np.ones((2, 3)), [3.7]), TypeError),
        (lambda: layernorm.layer_norm(np.ones((2, 3)), -3), layernorm.ShapeError),
        (lambda: layernorm.layer_norm(np.ones((2, 3)), 2**70), layernorm.ShapeError),
        (lambda: layernorm.layer_norm(np.ones((2, 0)), 0), layernorm.EmptyError),
        (lambda: layernorm.layer_norm(np.ones((2, 3)), ()), layernorm.EmptyError),
        (lambda: layernorm.layer_norm(np.ones(()), 1), layernorm.ShapeError),
        (lambda: layernorm.layer_norm(np.float64(1.0), 1), TypeError),
        (lambda: layernorm.layer_norm_backward(np.ones((2, 4)), np.ones((2, 3)), np.ones(2), np.ones(2), 3), layernorm.ShapeError),
        (lambda: layernorm.layer_norm_backward(np.ones((2, 3)), np.ones((2, 3)), np.ones(3), np.ones(2), 3), layernorm.ShapeError),
    ],
)
def test_bad_inputs_raise_typed_errors(call, error):
    with pytest.raises(error):
        call()


def test_every_error_is_a_value_or_type_error():
    for cls in [layernorm.ShapeError, layernorm.EpsilonError, layernorm.EmptyError, layernorm.AxisError,
                layernorm.SizeOverflowError]:
        assert issubclass(cls, layernorm.LayerNormError) and issubclass(cls, ValueError)
    assert issubclass(layernorm.DTypeError, TypeError)


def test_nan_stays_in_its_row(rng):
    x = rng.normal(size=(4, 16))
    x[2, 3] = np.nan
    y = layernorm.layer_norm(x, 16)
    assert np.isnan(y[2]).all() and np.isfinite(np.delete(y, 2, axis=0)).all()


def test_threads_give_the_same_bits_as_a_serial_call(rng):
    xs = [rng.normal(size=(64, 768)).astype(np.float32) for _ in range(8)]
    serial = [layernorm.layer_norm(x, 768) for x in xs]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            parallel = list(pool.map(lambda x: layernorm.layer_norm(x, 768), xs))
            for a, b in zip(serial, parallel):
                np.testing.assert_array_equal(a, b)


def _in_child(queue):
    x = np.arange(4096 * 64, dtype=np.float32).reshape(64, 4096) % 17
    queue.put(float(layernorm.layer_norm(x, 4096).sum()))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_pool_survives_fork():
    # Use the pool in the parent (large enough to go parallel), then fork and use it again.
    x = np.arange(4096 * 64, dtype=np.float32).reshape(64, 4096) % 17
    expected = float(layernorm.layer_norm(x, 4096).sum())
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0, "the forked child hung or failed"
    assert queue.get(timeout=5) == expected


def test_keras_like_layer_defaults_and_gradients(rng):
    layer = layernorm.LayerNormalization()
    assert layer.epsilon == 1e-3 and layer.axis == -1
    x = rng.normal(3.0, 2.0, (2, 5, 8))
    y = layer(x)
    assert layer.gamma.shape == (8,) and (layer.gamma == 1).all() and (layer.beta == 0).all()
    y_ref, _, _ = reference_forward(x, 1, eps=1e-3)
    np.testing.assert_allclose(y, y_ref, atol=1e-12)
    dy = rng.normal(size=x.shape)
    dx = layer.backward(dy)
    dx_ref, dg_ref, db_ref = reference_backward(dy, x, 1, layer.gamma, eps=1e-3)
    np.testing.assert_allclose(dx, dx_ref, atol=1e-12)
    np.testing.assert_allclose(layer.gamma_grad, dg_ref, atol=1e-12)
    np.testing.assert_allclose(layer.beta_grad, db_ref, atol=1e-12)


def test_keras_like_layer_axes():
    x = np.random.default_rng(1).normal(size=(2, 3, 4))
    layer = layernorm.LayerNormalization(axis=[-2, -1], center=False)
    y = layer(x)
    assert layer.gamma.shape == (3, 4) and layer.beta is None
    np.testing.assert_allclose(y, reference_forward(x, 2, eps=1e-3)[0], atol=1e-12)
    # Non-trailing axes: normalized over axis 1 for each (i, k).
    layer = layernorm.LayerNormalization(axis=1)
    y = layer(x)
    assert layer.gamma.shape == (3,)
    y_ref = np.moveaxis(reference_forward(np.moveaxis(x, 1, -1), 1, eps=1e-3)[0], -1, 1)
    np.testing.assert_allclose(y, y_ref, atol=1e-12)
    with pytest.raises(layernorm.AxisError):
        layernorm.LayerNormalization(axis=5)(x)
    with pytest.raises(RuntimeError):
        layernorm.LayerNormalization().backward(x)


def test_empty_batches_and_big_endian_like_torch():
    # A batch of zero rows gives empty outputs (as torch does); zero-size normalized dims stay
    # an error.
    x = np.zeros((0, 4), dtype=np.float32)
    y, mean, rstd = layernorm.layer_norm(x, 4, return_stats=True)
    assert y.shape == (0, 4) and mean.shape == (0, 1) and rstd.dtype == np.float32
    dx, dw, db = layernorm.layer_norm_backward(x, x, mean, rstd, 4, np.ones(4, np.float32), np.zeros(4, np.float32))
    assert dx.shape == (0, 4) and (dw == 0).all() and (db == 0).all()
    assert layernorm.rms_norm(np.zeros((2, 0, 3)), 3).shape == (2, 0, 3)
    with pytest.raises(layernorm.EmptyError):
        layernorm.layer_norm(np.zeros((2, 0)), 0)
    # Big-endian input is read as what it is.
    xb = np.arange(12, dtype=">f4").reshape(3, 4)
    np.testing.assert_array_equal(layernorm.layer_norm(xb, 4), layernorm.layer_norm(xb.astype("<f4"), 4))


def test_keras_layer_is_not_fooled_by_in_place_changes(rng):
    layer = layernorm.LayerNormalization()
    x = rng.normal(size=(3, 8))
    layer(x)
    expected = layer.backward(np.ones_like(x))
    layer(x)
    x += 5.0 * rng.normal(size=x.shape)  # changed after the forward
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), expected)
