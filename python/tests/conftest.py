import numpy as np
import pytest


def reference_forward(x, k, w=None, b=None, eps=1e-5):
    """LayerNorm in float64 numpy over the last k dims: (y, mean, rstd) with stats shaped like
    PyTorch's (x.shape[:-k] + (1,)*k)."""
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(range(x.ndim - k, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean) * rstd
    if w is not None:
        y = y * np.asarray(w, dtype=np.float64)
    if b is not None:
        y = y + np.asarray(b, dtype=np.float64)
    return y, mean, rstd


def reference_backward(dy, x, k, w=None, eps=1e-5):
    """(dx, dw, db) in float64 from the closed-form gradient."""
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    axes = tuple(range(x.ndim - k, x.ndim))
    lead = tuple(range(x.ndim - k))
    _, mean, rstd = reference_forward(x, k, eps=eps)
    xhat = (x - mean) * rstd
    g = dy * (1.0 if w is None else np.asarray(w, dtype=np.float64))
    dx = rstd * (g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    return dx, (dy * xhat).sum(axis=lead), dy.sum(axis=lead)


@pytest.fixture
def rng():
    return np.random.default_rng(20261127)


def reference_rms(x, k, w=None, eps=1e-5):
    """RMSNorm in float64: (y, rstd)."""
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(range(x.ndim - k, x.ndim))
    rstd = 1.0 / np.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
    y = x * rstd
    return (y if w is None else y * np.asarray(w, dtype=np.float64)), rstd


def reference_rms_backward(dy, x, k, w=None, eps=1e-5):
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    axes = tuple(range(x.ndim - k, x.ndim))
    _, rstd = reference_rms(x, k, eps=eps)
    xhat = x * rstd
    g = dy * (1.0 if w is None else np.asarray(w, dtype=np.float64))
    dx = rstd * (g - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    return dx, (dy * xhat).sum(axis=tuple(range(x.ndim - k)))
