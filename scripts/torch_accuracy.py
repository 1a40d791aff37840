#!/usr/bin/env python3
"""PyTorch's f32 layer_norm on x = c + N(0, 1): normwise error against an f64 reference on the
same f32 inputs (the counterpart of `cargo run --release -p layernorm --example accuracy`).

    /tmp/torchenv/bin/python scripts/torch_accuracy.py
"""
import numpy as np
import torch

rows, cols = 64, 768
rng = np.random.default_rng(0)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; f32 x = c + N(0,1), {rows}x{cols}")
for c in [0.0, 1e2, 1e4, 1e6, 1e7, 1e8]:
    x32 = (c + rng.standard_normal((rows, cols))).astype(np.float32)
    y = torch.nn.functional.layer_norm(torch.from_numpy(x32), (cols,), eps=1e-5).numpy()
    x = x32.astype(np.float64)
    mu = x.mean(axis=1, keepdims=True)
    ref = (x - mu) / np.sqrt(((x - mu) ** 2).mean(axis=1, keepdims=True) + 1e-5)
    err = np.linalg.norm(y.astype(np.float64) - ref) / np.linalg.norm(ref)
    print(f"{c:8.0e} {err:12.2e}")
