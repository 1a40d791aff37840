#!/usr/bin/env python3
"""layernorm.layer_norm vs torch.nn.functional.layer_norm, float32, side by side in one run.

    /work/torchenv/bin/pip install ./python && /work/torchenv/bin/python scripts/bench_vs_torch.py

Each case alternates the two calls (plus a numpy copy of the same array as a yardstick) and
reports the median of the runs; both libraries use all cores. ``out=``/preallocated variants
are timed too, since allocation is a large part of the cost on big tensors.
"""
import statistics
import time

import numpy as np
import torch

import layernorm


def median_time(fns, min_runs=15, min_seconds=1.0):
    times = [[] for _ in fns]
    for f in fns:
        f()  # warm up: first touch, thread start
    start = time.perf_counter()
    while len(times[0]) < min_runs or time.perf_counter() - start < min_seconds:
        for k, f in enumerate(fns):
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def main():
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), layernorm {layernorm.__version__} "
          f"(isa {layernorm.cpu_info()[0]}), numpy {np.__version__}")
    print(f"{'shape':>16} {'variant':>8} {'torch ms':>10} {'ours ms':>10} {'speedup':>8} {'copy ms':>9}")
    rng = np.random.default_rng(0)
    for shape in [(32, 50, 128), (4096, 4096)]:
        n = shape[-1]
        x = rng.standard_normal(shape, dtype=np.float32)
        w = rng.standard_normal(n, dtype=np.float32)
        b = rng.standard_normal(n, dtype=np.float32)
        xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
        out_np = np.empty_like(x)
        out_t = torch.from_numpy(out_np.copy())
        copy_dst = np.empty_like(x)
        cases = {
            "alloc": (
                lambda: torch.nn.functional.layer_norm(xt, (n,), wt, bt),
                lambda: layernorm.layer_norm(x, (n,), w, b),
            ),
            # torch has no out= for layer_norm; torch.native_layer_norm allocates too, so the
            # closest is the same call; ours fills a preallocated array.
            "out=": (
                lambda: torch.nn.functional.layer_norm(xt, (n,), wt, bt),
                lambda: layernorm.layer_norm(x, (n,), w, b, out=out_np),
            ),
        }
        for variant, (theirs, ours) in cases.items():
            t_torch, t_ours, t_copy = median_time([theirs, ours, lambda: np.copyto(copy_dst, x)])
            print(f"{str(shape):>16} {variant:>8} {t_torch * 1e3:>10.3f} {t_ours * 1e3:>10.3f} "
                  f"{t_torch / t_ours:>7.2f}x {t_copy * 1e3:>9.3f}")
        ours = layernorm.layer_norm(x, (n,), w, b)
        theirs = torch.nn.functional.layer_norm(xt, (n,), wt, bt).numpy()
        print(f"{'':>16} max |ours − torch| = {np.abs(ours - theirs).max():.2e}")


if __name__ == "__main__":
    main()
