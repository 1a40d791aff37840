"""PyTorch interop (optional): ``layer_norm``/``LayerNorm``, ``rms_norm``/``RMSNorm``,
``batch_norm``/``BatchNorm`` and ``group_norm``/``GroupNorm`` run our kernels inside autograd. Importing ``layernorm`` never imports torch; this module
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
from . import batch_norm as _bn_forward
from . import batch_norm_backward as _bn_backward
from . import group_norm as _gn_forward
from . import group_norm_backward as _gn_backward

__all__ = ["layer_norm", "LayerNorm", "rms_norm", "RMSNorm", "batch_norm", "BatchNorm", "group_norm", "GroupNorm"]


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


def _grads_to(x: torch.Tensor, *arrays):
    return tuple(None if a is None else torch.from_numpy(a).to(x.device) for a in arrays)


class _BatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps):
        # Running statistics are updated in place: a contiguous CPU tensor through the numpy
        # view that shares its memory, any other through a copy written back afterwards.
        buffers = (running_mean, running_var)
        shared = [t is not None and t.device.type == "cpu" and t.is_contiguous() for t in buffers]
        rm, rv = (None if t is None else t.detach().numpy() if sh else _np(t).copy() for t, sh in zip(buffers, shared))
        y, mean, rstd = _bn_forward(_np(x), rm, rv, _np(weight), _np(bias), training, momentum, eps,
                                    return_stats=True)
        if training:
            for t, a, sh in zip(buffers, (rm, rv), shared):
                if t is not None and not sh:
                    t.copy_(torch.from_numpy(a))
            stats = (torch.from_numpy(mean), torch.from_numpy(rstd))
        else:
            # Eval: the backward needs the running statistics of this call (copies: a later
            # training call may update them before the backward runs).
            stats = (torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy()))
        ctx.save_for_backward(x, weight, bias, *stats)
        ctx.training, ctx.eps = training, eps
        return torch.from_numpy(y).to(x.device)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, s0, s1 = ctx.saved_tensors
        mask = tuple(ctx.needs_input_grad[:3])
        if ctx.training:
            kw = dict(training=True)
            mean, rstd = s0.numpy(), s1.numpy()
        else:
            kw = dict(training=False, running_mean=s0.numpy(), running_var=s1.numpy(), eps=ctx.eps)
            mean = rstd = None
        dx, dw, db = _bn_backward(_np(grad_out), _np(x), mean, rstd, _np(weight), _np(bias), output_mask=mask, **kw)
        return _grads_to(x, dx, dw, db) + (None,) * 5


def batch_norm(
    input: torch.Tensor,
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``torch.nn.functional.batch_norm`` (channel axis 1), computed by layernorm's kernels, with
    autograd; the running statistics (x's dtype) are updated in place in training mode."""
    return _BatchNormFunction.apply(input, weight, bias, running_mean, running_var, bool(training),
                                    float(momentum), float(eps))


class BatchNorm(torch.nn.Module):
    """``torch.nn.BatchNorm1d/2d/3d`` backed by layernorm's kernels (any input rank >= 2, channel
    axis 1). ``momentum=None`` (a cumulative average) is not supported."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True, dtype=None):
        super().__init__()
        if momentum is None:
            raise NotImplementedError("momentum=None (a cumulative moving average) is not supported")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = torch.nn.Parameter(torch.ones(num_features, dtype=dtype))
            self.bias = torch.nn.Parameter(torch.zeros(num_features, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, dtype=dtype))
            self.register_buffer("running_var", torch.ones(num_features, dtype=dtype))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # As torch.nn.modules.batchnorm._BatchNorm.forward.
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
        use_batch_stats = self.training or self.running_mean is None
        pass_stats = not self.training or self.track_running_stats
        return batch_norm(
            input,
            self.running_mean if pass_stats else None,
            self.running_var if pass_stats else None,
            self.weight,
            self.bias,
            use_batch_stats,
            self.momentum,
            self.eps,
        )

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class _GroupNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, num_groups, eps):
        y, mean, rstd = _gn_forward(_np(x), num_groups, _np(weight), _np(bias), eps, return_stats=True)
        ctx.save_for_backward(x, weight, bias, torch.from_numpy(mean), torch.from_numpy(rstd))
        ctx.num_groups = num_groups
        return torch.from_numpy(y).to(x.device)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        mask = tuple(ctx.needs_input_grad[:3])
        dx, dw, db = _gn_backward(_np(grad_out), _np(x), mean.numpy(), rstd.numpy(), ctx.num_groups, _np(weight),
                                  _np(bias), output_mask=mask)
        return _grads_to(x, dx, dw, db) + (None, None)


def group_norm(
    input: torch.Tensor,
    num_groups: int,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``torch.nn.functional.group_norm``, computed by layernorm's kernels, with autograd."""
    return _GroupNormFunction.apply(input, weight, bias, int(num_groups), float(eps))


class GroupNorm(torch.nn.Module):
    """``torch.nn.GroupNorm`` backed by layernorm's kernels."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, dtype=None):
        super().__init__()
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        if affine:
            self.weight = torch.nn.Parameter(torch.ones(num_channels, dtype=dtype))
            self.bias = torch.nn.Parameter(torch.zeros(num_channels, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
