"""Fused residual add + LayerNorm / RMSNorm."""

import numpy as np
import pytest

import layernorm
from conftest import reference_backward, reference_rms_backward
from test_layer_norm import DTYPES, U, as_dtype, f64


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_layer_norm_equals_the_two_steps(rng, dtype):
    x = as_dtype(rng.normal(1.0, 2.0, (6, 5, 16)), dtype)
    r = as_dtype(rng.normal(-1.0, 1.0, (6, 5, 16)), dtype)
    w = as_dtype(rng.normal(1.0, 0.5, 16), dtype)
    b = as_dtype(rng.normal(size=16), dtype)
    s, y, mean, rstd = layernorm.add_layer_norm(x, r, 16, w, b, return_stats=True)
    np.testing.assert_array_equal(s, (x.astype(np.float32) + r.astype(np.float32)).astype(x.dtype)
                                  if dtype != "float64" else x + r)
    y2, mean2, rstd2 = layernorm.layer_norm(s, 16, w, b, return_stats=True)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(mean, mean2)
    # Backward: dx = LN'(dy) + dsum.
    dy = as_dtype(rng.normal(size=x.shape), dtype)
    ds = as_dtype(rng.normal(size=x.shape), dtype)
    dx, dw, db = layernorm.layer_norm_backward(dy, s, mean, rstd, 16, w, b, grad_sum=ds)
    dx_ref, dw_ref, _ = reference_backward(f64(dy), f64(s), 1, f64(w))
    want = dx_ref + f64(ds)
    np.testing.assert_allclose(f64(dx), want, atol=32 * U[dtype] * (np.abs(want).max() + 1), rtol=0)
    np.testing.assert_allclose(f64(dw), dw_ref, atol=16 * U[dtype] * (np.abs(dw_ref).max() + 1), rtol=0)


def test_add_rms_norm_and_errors(rng):
    x = rng.normal(size=(4, 8))
    r = rng.normal(size=(4, 8))
    s, y, rstd = layernorm.add_rms_norm(x, r, 8, return_stats=True)
    np.testing.assert_array_equal(s, x + r)
    np.testing.assert_array_equal(y, layernorm.rms_norm(s, 8))
    dy, ds = rng.normal(size=x.shape), rng.normal(size=x.shape)
    dx, _ = layernorm.rms_norm_backward(dy, s, rstd, 8, grad_sum=ds)
    np.testing.assert_allclose(dx, reference_rms_backward(dy, s, 1)[0] + ds, atol=1e-12)
    with pytest.raises(layernorm.ShapeError):
        layernorm.add_layer_norm(x, r[:, :4], 8)
    with pytest.raises(layernorm.DTypeError):
        layernorm.add_layer_norm(x, r.astype(np.float32), 8)
    with pytest.raises(layernorm.ShapeError):
        layernorm.layer_norm_backward(dy, s, np.zeros(4), rstd, 8, grad_sum=ds[:2])


def test_rms_fused_rejects_a_bias():
    from layernorm import _layernorm
    x = np.ones((2, 4))
    with pytest.raises(layernorm.LayerNormError):
        _layernorm.add_norm_forward(x, x, [4], None, np.ones(4), 1e-5, True)
