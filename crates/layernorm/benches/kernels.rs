//! Kernel throughput per instruction set, on the same data: scalar vs AVX2 vs AVX-512 (or
//! NEON), forward and backward, f32 and bf16.
//!
//!     cargo bench -p layernorm --bench kernels
//!
//! Throughput is bytes moved by the byte model of `layernorm bench` (forward 2·n·size,
//! backward 3·n·size). For ratios against the memory-copy ceiling, use `layernorm bench`.

use divan::counter::BytesCount;
use divan::Bencher;
use layernorm::{
    bf16, layer_norm, Affine, Element, Float, GradsMut, IsaKind, Parallelism, StatsRef,
};

fn main() {
    divan::main();
}

/// (rows, cols): the seed's batch, a BERT-base activation, a wide row.
const SHAPES: [(usize, usize); 3] = [(1600, 128), (2048, 768), (64, 16384)];

fn isas() -> Vec<IsaKind> {
    layernorm::cpu_info().available
}

fn data<T: Element>(n: usize, seed: u64) -> Vec<T> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            T::narrow(T::Compute::from_f64(
                (s >> 40) as f64 / (1u64 << 24) as f64 * 4.0 - 1.0,
            ))
        })
        .collect()
}

fn forward<T: Element>(bencher: Bencher, isa: IsaKind, (rows, cols): (usize, usize)) {
    let n = rows * cols;
    let (x, w, b) = (data::<T>(n, 1), data::<T>(cols, 2), data::<T>(cols, 3));
    let mut y = vec![T::default(); n];
    bencher
        .counter(BytesCount::new(2 * n * size_of::<T>()))
        .bench_local(|| {
            layernorm::with_isa(isa, || {
                let affine = Affine::scale_shift(&w, &b);
                layer_norm::forward_into(
                    &x,
                    cols,
                    affine,
                    1e-5,
                    &mut y,
                    None,
                    Parallelism::Sequential,
                )
            })
        });
}

fn backward<T: Element>(bencher: Bencher, isa: IsaKind, (rows, cols): (usize, usize)) {
    let n = rows * cols;
    let (x, dy, w) = (data::<T>(n, 1), data::<T>(n, 4), data::<T>(cols, 2));
    let par = Parallelism::Sequential;
    let (_, stats) = layer_norm::forward(&x, cols, Affine::scale(&w), 1e-5, par).unwrap();
    let (mut dx, mut dw, mut db) = (
        vec![T::default(); n],
        vec![T::default(); cols],
        vec![T::default(); cols],
    );
    bencher
        .counter(BytesCount::new(3 * n * size_of::<T>()))
        .bench_local(|| {
            layernorm::with_isa(isa, || {
                let grads = GradsMut {
                    dx: Some(&mut dx),
                    dweight: Some(&mut dw),
                    dbias: Some(&mut db),
                };
                let stats = StatsRef {
                    mean: &stats.mean,
                    rstd: &stats.rstd,
                };
                layer_norm::backward_into(&dy, &x, cols, stats, Some(&w), grads, par)
            })
        });
}

#[divan::bench(args = isas(), consts = [0, 1, 2])]
fn forward_f32<const SHAPE: usize>(bencher: Bencher, isa: IsaKind) {
    forward::<f32>(bencher, isa, SHAPES[SHAPE]);
}

#[divan::bench(args = isas(), consts = [0, 1, 2])]
fn forward_bf16<const SHAPE: usize>(bencher: Bencher, isa: IsaKind) {
    forward::<bf16>(bencher, isa, SHAPES[SHAPE]);
}

#[divan::bench(args = isas(), consts = [0, 1, 2])]
fn backward_f32<const SHAPE: usize>(bencher: Bencher, isa: IsaKind) {
    backward::<f32>(bencher, isa, SHAPES[SHAPE]);
}

#[divan::bench(args = isas(), consts = [0, 1, 2])]
fn backward_bf16<const SHAPE: usize>(bencher: Bencher, isa: IsaKind) {
    backward::<bf16>(bencher, isa, SHAPES[SHAPE]);
}
