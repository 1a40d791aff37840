"""PyTorch interop (optional): ``layernorm.torch.layer_norm`` and ``layernorm.torch.LayerNorm``
run our kernels inside autograd. Importing ``layernorm`` never imports torch; this module
does, and fails with ImportError where torch is not installed.

Tensors go through numpy (CPU): CUDA tensors are moved to the CPU and back.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch

from . import layer_norm as _forward
from . import layer_norm_backward as _backward
from . import rms_norm as _rms_forward
from . import rms_norm_backward as _rms_backward

__all__ = ["layer_norm", "LayerNorm", "rms_norm", "RMSNorm"]


def _np(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    return None if t is None else t.detach().cpu().contiguous().numpy()


class _LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, normalized_shape, eps):
        xn = _np(x)
        y, mean, rstd = _forward(xn, normalized_shape, _np(weight), _np(bias), eps, return_stats=True)
        ctx.save_for_backward(x, weight, bias, torch.from_numpy(mean), torch.from_numpy(rstd))
        ctx.normalized_shape = tuple(normalized_shape)
        return torch.from_numpy(y).to(x.device)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        mask = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        dx, dw, db = _backward(
            _np(grad_out), _np(x), mean.numpy(), rstd.numpy(), ctx.normalized_shape, _np(weight), _np(bias), mask
        )
        to = lambda a: None if a is None else torch.from_numpy(a).to(x.device)
        return to(dx), to(dw), to(db), None, None


def layer_norm(
    input: torch.Tensor,
    normalized_shape: Union[int, Sequence[int]],
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``torch.nn.functional.layer_norm``, computed by layernorm's kernels, with autograd."""
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    return _LayerNormFunction.apply(input, weight, bias, tuple(normalized_shape), float(eps))


class LayerNorm(torch.nn.Module):
    """``torch.nn.LayerNorm`` backed by layernorm's kernels."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 dtype=None):
        super().__init__()
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        if elementwise_affine:
            self.weight = torch.nn.Parameter(torch.ones(self.normalized_shape, dtype=dtype))
            self.bias = torch.nn.Parameter(torch.zeros(self.normalized_shape, dtype=dtype)) if bias else None
        else:
            self.weight = None
            self.bias = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.weight is not None}"


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, normalized_shape, eps):
        y, rstd = _rms_forward(_np(x), normalized_shape, _np(weight), eps, return_stats=True)
        ctx.save_for_backward(x, weight, torch.from_numpy(rstd))
        ctx.normalized_shape = tuple(normalized_shape)
        return torch.from_numpy(y).to(x.device)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, rstd = ctx.saved_tensors
        mask = (ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        dx, dw = _rms_backward(_np(grad_out), _np(x), rstd.numpy(), ctx.normalized_shape, _np(weight), mask)
        to = lambda a: None if a is None else torch.from_numpy(a).to(x.device)
        return to(dx), to(dw), None, None


def rms_norm(
    input: torch.Tensor,
    normalized_shape: Union[int, Sequence[int]],
    weight: Optional[torch.Tensor] = None,
    eps: Optional[float] = None,
) -> torch.Tensor:
    """``torch.nn.functional.rms_norm`` (``eps=None`` meaning the dtype's machine epsilon, as
    PyTorch does), computed by layernorm's kernels, with autograd."""
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    if eps is None:
        eps = torch.finfo(input.dtype).eps
    return _RMSNormFunction.apply(input, weight, tuple(normalized_shape), float(eps))


class RMSNorm(torch.nn.Module):
    """``torch.nn.RMSNorm`` backed by layernorm's kernels."""

    def __init__(self, normalized_shape, eps: Optional[float] = None, elementwise_affine: bool = True, dtype=None):
        super().__init__()
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        self.weight = (
            torch.nn.Parameter(torch.ones(self.normalized_shape, dtype=dtype)) if elementwise_affine else None
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return rms_norm(input, self.normalized_shape, self.weight, self.eps)
