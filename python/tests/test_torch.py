"""Against PyTorch, when it is installed (skipped otherwise)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import layernorm  # noqa: E402
import layernorm.torch as lt  # noqa: E402


def test_matches_torch_functional():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 32, generator=g)
    w = torch.randn(32, generator=g)
    b = torch.randn(32, generator=g)
    ours = layernorm.layer_norm(x.numpy(), (32,), w.numpy(), b.numpy())
    theirs = torch.nn.functional.layer_norm(x, (32,), w, b).numpy()
    np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=0)


def test_stats_match_native_layer_norm():
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    _, mean, rstd = torch.native_layer_norm(x, [4, 5], None, None, 1e-5)
    _, m, r = layernorm.layer_norm(x.numpy(), (4, 5), return_stats=True)
    assert m.shape == tuple(mean.shape) and r.shape == tuple(rstd.shape)
    np.testing.assert_allclose(m, mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(r, rstd.numpy(), rtol=1e-12)


def test_autograd_function_passes_gradcheck():
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: lt.layer_norm(x, 7, w, b), (x, w, b))


def test_module_matches_torch_module():
    torch.manual_seed(1)
    ours, theirs = lt.LayerNorm(16), torch.nn.LayerNorm(16)
    x = torch.randn(5, 16, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    ours(x).pow(2).sum().backward()
    theirs(x2).pow(2).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), x2.grad.numpy(), atol=1e-4)
    np.testing.assert_allclose(ours.weight.grad.numpy(), theirs.weight.grad.numpy(), atol=1e-4)


def test_more_exact_than_torch_at_a_large_mean():
    x = (1e7 + torch.randn(8, 768)).float()
    ref = torch.nn.functional.layer_norm(x.double(), (768,)).numpy()
    ours = layernorm.layer_norm(x.numpy(), 768)
    err = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    assert err < 1e-6


def test_rms_autograd_passes_gradcheck_and_matches_torch():
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: lt.rms_norm(x, 7, w), (x, w))
    ours = lt.RMSNorm(7, dtype=torch.float64)(x)
    theirs = torch.nn.RMSNorm(7, dtype=torch.float64)(x)
    np.testing.assert_allclose(ours.detach().numpy(), theirs.detach().numpy(), atol=1e-12)
