#!/usr/bin/env python3
"""Generate BatchNorm / GroupNorm / InstanceNorm / axes-LayerNorm reference vectors from PyTorch.

Writes crates/layernorm/tests/data/torch/family/<case>.<array>.npy and manifest.txt (stale *.npy
in that folder are deleted first). Each case holds the inputs and PyTorch's outputs:

  inputs:  x, dy (random upstream gradient), weight/bias (affine cases),
           running_mean/running_var (BatchNorm cases)
  outputs: y; dx, dweight/dbias (autograd; dweight/dbias only when affine);
           mean, rstd (saved statistics, all ops except BatchNorm eval);
           running_mean_out/running_var_out (BatchNorm training: running stats after the call,
           new = (1 - momentum) * old + momentum * batch, var from the unbiased batch variance).

Statistics shapes:
  batch      (C,)      torch.native_batch_norm's save_mean / save_invstd
  group      (N, G)    torch.native_group_norm's mean / rstd
  instance   (N, C)    torch.native_group_norm with G = C (y/dx from F.instance_norm)
  layer_axes the kept (non-normalized) axes' sizes in their original order, from
             torch.native_layer_norm on x with the normalized axes permuted to the end.

Layouts: PyTorch puts channels on axis 1. A case whose channel_axis is the last axis stores x, dy,
y and dx in the channel-last layout (e.g. N x H x W x C); torch results come from
x.movedim(-1, 1) -> op -> movedim(1, -1). GroupNorm groups are contiguous channel ranges, as in
PyTorch. layer_axes follows Keras: normalize over the listed axes (need not be trailing), weight
and bias shaped like the listed axes' sizes in order (x 2x3x4x5, axes 1,3 -> weight 3x5).

Arrays are saved in the case's dtype, except bfloat16 cases: numpy has no bf16, so every array of
a bf16 case is saved as float32 holding the exact bf16 values (all of them, statistics and
running statistics included, are bf16 tensors in torch for these cases).

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy
    /tmp/torchenv/bin/python scripts/gen_family_vectors.py
"""
import pathlib

import numpy as np
import torch
import torch.nn.functional as F

OUT = (pathlib.Path(__file__).resolve().parent.parent
       / "crates/layernorm/tests/data/torch/family")

# BatchNorm: name, dtype, shape, channel_axis, affine, training, momentum, eps, offset
BATCH = [
    ("bn_f32", "float32", (4, 3, 5, 2), 1, "scale_shift", True, 0.1, 1e-5, 0.0),
    ("bn_nospatial_f32", "float32", (6, 4), 1, "none", True, 0.1, 1e-5, 0.0),
    ("bn_last_f32", "float32", (2, 3, 4, 5), 3, "scale_shift", True, 0.3, 1e-5, 0.0),
    ("bn_f64", "float64", (3, 5, 7), 1, "scale_shift", True, 0.1, 1e-5, 0.0),
    ("bn_eval_f32", "float32", (4, 3, 5), 1, "scale_shift", False, None, 1e-5, 0.0),
    ("bn_eval_last_f64", "float64", (5, 2, 3), 2, "scale_shift", False, None, 1e-5, 0.0),
    ("bn_offset_f32", "float32", (8, 4, 9), 1, "scale_shift", True, 0.1, 1e-5, 100.0),
    ("bn_bf16", "bfloat16", (4, 6, 8), 1, "scale_shift", True, 0.1, 1e-5, 0.0),
]

# GroupNorm: name, dtype, shape, channel_axis, groups, affine, eps
GROUP = [
    ("gn_f32", "float32", (2, 6, 5, 3), 1, 3, "scale_shift", 1e-5),
    ("gn_noaffine_f32", "float32", (3, 4, 7), 1, 2, "none", 1e-5),
    ("gn_last_f32", "float32", (2, 5, 4, 6), 3, 2, "scale_shift", 1e-5),
    ("gn_f64", "float64", (2, 8, 9), 1, 4, "scale_shift", 1e-5),
    ("gn_one_group_f32", "float32", (2, 4, 5), 1, 1, "scale_shift", 1e-5),
    ("gn_bf16", "bfloat16", (2, 6, 10), 1, 3, "scale_shift", 1e-5),
]

# InstanceNorm: name, dtype, shape, channel_axis, affine, eps
INSTANCE = [
    ("in_f32", "float32", (2, 3, 4, 5), 1, "scale_shift", 1e-5),
    ("in_noaffine_f64", "float64", (3, 2, 7), 1, "none", 1e-5),
    ("in_last_f32", "float32", (2, 6, 5, 3), 3, "scale_shift", 1e-5),
]

# Axes LayerNorm (Keras semantics): name, dtype, shape, axes, affine, eps
LAYER_AXES = [
    ("la_13_f32", "float32", (2, 3, 4, 5), (1, 3), "scale_shift", 1e-5),
    ("la_0_f64", "float64", (3, 4, 5), (0,), "scale_shift", 1e-5),
    ("la_12_noaffine_f32", "float32", (2, 3, 4, 5), (1, 2), "none", 1e-5),
    ("la_02_f32", "float32", (4, 6, 5), (0, 2), "scale_shift", 1e-3),
]


def fmt_shape(s):
    return "x".join(str(d) for d in s)


def to_numpy(t):
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.to(torch.float32)  # exact: every bf16 value is an f32 value
    return t.contiguous().numpy()


class Case:
    def __init__(self, gen):
        self.gen = gen

    def randn(self, shape, dt, scale=1.0, shift=0.0):
        t = torch.randn(shape, generator=self.gen, dtype=torch.float64)
        return (shift + scale * t).to(dt)

    def rand(self, shape, dt, shift=0.0):
        return (shift + torch.rand(shape, generator=self.gen, dtype=torch.float64)).to(dt)


def params(case, dt, pshape, affine):
    w = b = None
    if affine == "scale_shift":
        w = case.randn(pshape, dt, 0.5, 1.0).requires_grad_(True)
        b = case.randn(pshape, dt, 0.5).requires_grad_(True)
    return w, b


def to_first(t, channel_axis):
    return t if channel_axis == 1 else t.movedim(-1, 1).contiguous()


def from_first(t, channel_axis):
    return t if channel_axis == 1 else t.movedim(1, -1)


def gen_batch(case, spec):
    name, dtype, shape, cax, affine, training, momentum, eps, offset = spec
    assert cax == 1 or cax == len(shape) - 1
    dt = getattr(torch, dtype)
    C = shape[cax]
    x = case.randn(shape, dt, 1.0, offset).requires_grad_(True)
    w, b = params(case, dt, (C,), affine)
    rm_in = case.randn((C,), dt, 0.5)
    rv_in = case.rand((C,), dt, 0.5)
    dy = case.randn(shape, dt)
    rm, rv = rm_in.clone(), rv_in.clone()
    y_first, save_mean, save_invstd = torch.native_batch_norm(
        to_first(x, cax), w, b, rm, rv, training, momentum if training else 0.0, eps)
    y = from_first(y_first, cax)
    y.backward(dy)
    # Agrees with the public op (which is what F.batch_norm dispatches to on CPU).
    rm2, rv2 = rm_in.clone(), rv_in.clone()
    with torch.no_grad():
        ref = F.batch_norm(to_first(x.detach(), cax), rm2, rv2, w, b, training,
                           momentum if training else 0.0, eps)
    assert torch.equal(from_first(ref, cax), y.detach()), name
    assert torch.equal(rm2, rm) and torch.equal(rv2, rv), name
    arrays = {"x": x, "dy": dy, "running_mean": rm_in, "running_var": rv_in, "y": y,
              "dx": x.grad}
    if training:
        arrays.update(mean=save_mean, rstd=save_invstd, running_mean_out=rm, running_var_out=rv)
        # Cross-check the momentum convention (f64 reference; loose for rounded dtypes).
        xf = to_first(x.detach(), cax).double()
        dims = [d for d in range(xf.dim()) if d != 1]
        tol = 1e-12 if dt == torch.float64 else (1e-5 if dt == torch.float32 else 5e-2)
        exp_rm = (1 - momentum) * rm_in.double() + momentum * xf.mean(dims)
        exp_rv = (1 - momentum) * rv_in.double() + momentum * xf.var(dims, unbiased=True)
        assert torch.allclose(rm.double(), exp_rm, rtol=tol, atol=tol), name
        assert torch.allclose(rv.double(), exp_rv, rtol=tol, atol=tol), name
        assert save_mean.shape == (C,) and save_invstd.shape == (C,)
    else:
        assert torch.equal(rm, rm_in) and torch.equal(rv, rv_in)
    add_affine(arrays, w, b)
    row = [name, "batch", dtype, fmt_shape(shape), str(cax), "-", "-", affine,
           "1" if training else "0", repr(momentum) if training else "-", repr(eps)]
    return arrays, row


def gen_group(case, spec):
    name, dtype, shape, cax, groups, affine, eps = spec
    assert cax == 1 or cax == len(shape) - 1
    dt = getattr(torch, dtype)
    N, C = shape[0], shape[cax]
    hw = int(np.prod(shape)) // (N * C)
    x = case.randn(shape, dt).requires_grad_(True)
    w, b = params(case, dt, (C,), affine)
    dy = case.randn(shape, dt)
    y_first, mean, rstd = torch.native_group_norm(to_first(x, cax), w, b, N, C, hw, groups, eps)
    y = from_first(y_first, cax)
    y.backward(dy)
    assert mean.shape == (N, groups) and rstd.shape == (N, groups)
    # Agrees with the public op.
    ref = from_first(F.group_norm(to_first(x.detach(), cax), groups, w, b, eps), cax)
    assert torch.equal(ref, y.detach()), name
    arrays = {"x": x, "dy": dy, "y": y, "dx": x.grad, "mean": mean, "rstd": rstd}
    add_affine(arrays, w, b)
    row = [name, "group", dtype, fmt_shape(shape), str(cax), str(groups), "-", affine,
           "-", "-", repr(eps)]
    return arrays, row


def gen_instance(case, spec):
    name, dtype, shape, cax, affine, eps = spec
    assert cax == 1 or cax == len(shape) - 1
    dt = getattr(torch, dtype)
    N, C = shape[0], shape[cax]
    hw = int(np.prod(shape)) // (N * C)
    x = case.randn(shape, dt).requires_grad_(True)
    w, b = params(case, dt, (C,), affine)
    dy = case.randn(shape, dt)
    y = from_first(F.instance_norm(to_first(x, cax), weight=w, bias=b, eps=eps), cax)
    y.backward(dy)
    with torch.no_grad():
        y_gn, mean, rstd = torch.native_group_norm(
            to_first(x.detach(), cax), w, b, N, C, hw, C, eps)
    assert torch.allclose(from_first(y_gn, cax), y.detach(), rtol=1e-5, atol=1e-5), name
    arrays = {"x": x, "dy": dy, "y": y, "dx": x.grad, "mean": mean, "rstd": rstd}
    add_affine(arrays, w, b)
    row = [name, "instance", dtype, fmt_shape(shape), str(cax), "-", "-", affine,
           "-", "-", repr(eps)]
    return arrays, row


def gen_layer_axes(case, spec):
    name, dtype, shape, axes, affine, eps = spec
    dt = getattr(torch, dtype)
    kept = [d for d in range(len(shape)) if d not in axes]
    perm = kept + list(axes)
    inv = [perm.index(d) for d in range(len(shape))]
    nshape = [shape[a] for a in axes]
    kshape = [shape[k] for k in kept]
    x = case.randn(shape, dt).requires_grad_(True)
    w, b = params(case, dt, tuple(nshape), affine)
    dy = case.randn(shape, dt)
    y_perm, mean, rstd = torch.native_layer_norm(x.permute(perm).contiguous(), nshape, w, b, eps)
    y = y_perm.permute(inv)
    y.backward(dy)
    ref = F.layer_norm(x.detach().permute(perm), nshape, w, b, eps).permute(inv)
    assert torch.equal(ref, y.detach()), name
    arrays = {"x": x, "dy": dy, "y": y, "dx": x.grad,
              "mean": mean.reshape(kshape), "rstd": rstd.reshape(kshape)}
    add_affine(arrays, w, b)
    row = [name, "layer_axes", dtype, fmt_shape(shape), "-", "-",
           ",".join(str(a) for a in axes), affine, "-", "-", repr(eps)]
    return arrays, row


def add_affine(arrays, w, b):
    if w is not None:
        arrays["weight"] = w
        arrays["dweight"] = w.grad
    if b is not None:
        arrays["bias"] = b
        arrays["dbias"] = b.grad


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.npy"):
        old.unlink()
    torch.manual_seed(20261127)
    case = Case(torch.Generator().manual_seed(20261127))
    manifest = [
        "# name op dtype shape channel_axis groups axes affine training momentum eps"
        " (generated by torch %s; '-' = not applicable; bfloat16 cases are saved as float32"
        " holding exact bf16 values)" % torch.__version__
    ]
    jobs = ([(gen_batch, s) for s in BATCH] + [(gen_group, s) for s in GROUP]
            + [(gen_instance, s) for s in INSTANCE] + [(gen_layer_axes, s) for s in LAYER_AXES])
    for fn, spec in jobs:
        arrays, row = fn(case, spec)
        for key, t in arrays.items():
            assert t is not None, (row[0], key)
            np.save(OUT / f"{row[0]}.{key}.npy", to_numpy(t))
        manifest.append(" ".join(row))
    (OUT / "manifest.txt").write_text("\n".join(manifest) + "\n")
    print(f"wrote {len(jobs)} cases to {OUT}")


if __name__ == "__main__":
    main()
