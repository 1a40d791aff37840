//! Throughput of the channel normalizations (BatchNorm, GroupNorm, InstanceNorm) and of
//! LayerNorm over non-trailing axes, against LayerNorm over trailing axes on the same bytes,
//! one thread:
//!
//!     cargo bench -p layernorm --bench family
//!
//! Bytes follow `layernorm bench`'s model: forward 2·n·size, backward 3·n·size.

use divan::counter::BytesCount;
use divan::Bencher;
use layernorm::batch_norm::BatchNorm;
use layernorm::group_norm::GroupNorm;
use layernorm::{layer_norm, Affine, GradMask, Parallelism};

fn main() {
    divan::main();
}

const SEQ: Parallelism = Parallelism::Sequential;

/// A ResNet-style activation, (N, C, H, W) = (8, 64, 56, 56), and its channels-last twin.
const NCHW: [usize; 4] = [8, 64, 56, 56];
const NHWC: [usize; 4] = [8, 56, 56, 64];

fn data(n: usize) -> Vec<f32> {
    let mut s = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u32 << 24) as f32 * 4.0 - 1.0
        })
        .collect()
}

fn elems() -> usize {
    NCHW.iter().product()
}

#[divan::bench(args = [1, -1])]
fn batch_norm_forward(bencher: Bencher, channel_axis: isize) {
    let shape = if channel_axis == 1 { NCHW } else { NHWC };
    let (x, w) = (data(elems()), vec![1.5f32; 64]);
    let bn = BatchNorm {
        channel_axis,
        ..BatchNorm::default()
    };
    bencher
        .counter(BytesCount::new(2 * elems() * 4))
        .bench_local(|| bn.forward_train(&x, &shape, Affine::scale_shift(&w, &w), None, SEQ));
}

#[divan::bench(args = [1, -1])]
fn batch_norm_backward(bencher: Bencher, channel_axis: isize) {
    let shape = if channel_axis == 1 { NCHW } else { NHWC };
    let (x, dy, w) = (data(elems()), data(elems()), vec![1.5f32; 64]);
    let bn = BatchNorm {
        channel_axis,
        ..BatchNorm::default()
    };
    let (_, stats) = bn
        .forward_train(&x, &shape, Affine::scale(&w), None, SEQ)
        .unwrap();
    bencher
        .counter(BytesCount::new(3 * elems() * 4))
        .bench_local(|| {
            bn.backward_train(
                &dy,
                &x,
                &shape,
                stats.as_ref(),
                Some(&w),
                GradMask::ALL,
                SEQ,
            )
        });
}

#[divan::bench(args = [1, -1])]
fn group_norm_forward(bencher: Bencher, channel_axis: isize) {
    let shape = if channel_axis == 1 { NCHW } else { NHWC };
    let (x, w) = (data(elems()), vec![1.5f32; 64]);
    let gn = GroupNorm {
        channel_axis,
        ..GroupNorm::new(32)
    };
    bencher
        .counter(BytesCount::new(2 * elems() * 4))
        .bench_local(|| gn.forward(&x, &shape, Affine::scale_shift(&w, &w), SEQ));
}

/// The same bytes as rows of 3136: LayerNorm's trailing fast path, for scale.
#[divan::bench]
fn layer_norm_trailing(bencher: Bencher) {
    let x = data(elems());
    bencher
        .counter(BytesCount::new(2 * elems() * 4))
        .bench_local(|| layer_norm::forward(&x, 56 * 56, Affine::<f32>::none(), 1e-5, SEQ));
}

/// LayerNorm over (C, W) of NCHW: a permuted copy in, the fast path, a copy back.
#[divan::bench]
fn layer_norm_axes_1_3(bencher: Bencher) {
    let x = data(elems());
    bencher
        .counter(BytesCount::new(2 * elems() * 4))
        .bench_local(|| {
            layer_norm::forward_axes(&x, &NCHW, &[1, 3], Affine::<f32>::none(), 1e-5, SEQ)
        });
}
