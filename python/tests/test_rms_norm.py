"""rms_norm / rms_norm_backward against float64 numpy (always) and torch (when installed)."""

import numpy as np
import pytest

import layernorm
from conftest import reference_rms, reference_rms_backward
from test_layer_norm import DTYPES, U, as_dtype, f64


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k", [((4, 7), 1), ((3, 4, 5), 2), ((2, 1023), 1)])
@pytest.mark.parametrize("with_weight", [False, True])
def test_rms_norm_matches_reference(rng, dtype, shape, k, with_weight):
    x = as_dtype(rng.normal(0.5, 2.0, shape), dtype)
    ns = shape[-k:]
    w = as_dtype(rng.normal(1.0, 0.5, ns), dtype) if with_weight else None
    y, rstd = layernorm.rms_norm(x, ns, w, return_stats=True)
    assert y.dtype == x.dtype and rstd.shape == shape[:-k] + (1,) * k
    y_ref, rstd_ref = reference_rms(x, k, None if w is None else f64(w))
    np.testing.assert_allclose(f64(y), y_ref, atol=8 * U[dtype] * (np.abs(y_ref).max() + 1), rtol=0)
    np.testing.assert_allclose(f64(rstd), rstd_ref, rtol=4 * U["float32"])
    dy = as_dtype(rng.normal(size=shape), dtype)
    dx, dw = layernorm.rms_norm_backward(dy, x, rstd, ns, w)
    dx_ref, dw_ref = reference_rms_backward(f64(dy), f64(x), k, None if w is None else f64(w))
    np.testing.assert_allclose(f64(dx), dx_ref, atol=16 * U[dtype] * (np.abs(dx_ref).max() + 1), rtol=0)
    if with_weight:
        np.testing.assert_allclose(f64(dw), dw_ref, atol=16 * U[dtype] * (np.abs(dw_ref).max() + 1), rtol=0)
    else:
        assert dw is None


def test_rms_norm_errors():
    with pytest.raises(layernorm.ShapeError):
        layernorm.rms_norm(np.ones((2, 3)), 4)
    with pytest.raises(layernorm.EpsilonError):
        layernorm.rms_norm(np.ones((2, 3)), 3, eps=0.0)
    with pytest.raises(TypeError):
        layernorm.rms_norm(np.ones((2, 3), dtype=np.int8), 3)


def test_rms_norm_matches_torch():
    torch = pytest.importorskip("torch")
    x = torch.randn(4, 6, 32)
    w = torch.randn(32)
    ours = layernorm.rms_norm(x.numpy(), 32, w.numpy(), eps=1e-6)
    theirs = torch.nn.functional.rms_norm(x, (32,), w, 1e-6).numpy()
    np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=0)
