//! The portable instruction set: vectors are plain arrays, operations are loops over lanes.
//! Same lane counts and accumulation order shape as the SIMD ISAs, so the same algorithm.

use half::{bf16, f16};

use super::Simd;

const LANES: usize = 8;

/// The token of the portable "instruction set"; always available.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scalar;

#[inline(always)]
fn map<const N: usize, T: Copy>(a: [T; N], b: [T; N], f: impl Fn(T, T) -> T) -> [T; N] {
    std::array::from_fn(|i| f(a[i], b[i]))
}

impl Simd for Scalar {
    const LANES: usize = LANES;
    type F32 = [f32; LANES];
    type F64 = [f64; LANES / 2];

    #[inline(always)]
    fn splat(self, v: f32) -> Self::F32 {
        [v; LANES]
    }
    #[inline(always)]
    fn add(self, a: Self::F32, b: Self::F32) -> Self::F32 {
        map(a, b, |a, b| a + b)
    }
    #[inline(always)]
    fn sub(self, a: Self::F32, b: Self::F32) -> Self::F32 {
        map(a, b, |a, b| a - b)
    }
    #[inline(always)]
    fn mul(self, a: Self::F32, b: Self::F32) -> Self::F32 {
        map(a, b, |a, b| a * b)
    }
    #[inline(always)]
    fn mul_add(self, a: Self::F32, b: Self::F32, c: Self::F32) -> Self::F32 {
        // Unfused: a libm fma call per lane would cost more than the whole kernel.
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    fn splat64(self, v: f64) -> Self::F64 {
        [v; LANES / 2]
    }
    #[inline(always)]
    fn add64(self, a: Self::F64, b: Self::F64) -> Self::F64 {
        map(a, b, |a, b| a + b)
    }
    #[inline(always)]
    fn sub64(self, a: Self::F64, b: Self::F64) -> Self::F64 {
        map(a, b, |a, b| a - b)
    }
    #[inline(always)]
    fn mul64(self, a: Self::F64, b: Self::F64) -> Self::F64 {
        map(a, b, |a, b| a * b)
    }
    #[inline(always)]
    fn mul_add64(self, a: Self::F64, b: Self::F64, c: Self::F64) -> Self::F64 {
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    fn widen(self, v: Self::F32) -> [Self::F64; 2] {
        [
            std::array::from_fn(|i| f64::from(v[i])),
            std::array::from_fn(|i| f64::from(v[i + LANES / 2])),
        ]
    }
    #[inline(always)]
    fn reduce64(self, v: Self::F64) -> f64 {
        (v[0] + v[2]) + (v[1] + v[3])
    }
    #[inline(always)]
    fn load_f64(self, src: &[f64]) -> Self::F64 {
        std::array::from_fn(|i| src[i])
    }
    #[inline(always)]
    fn store_f64(self, dst: &mut [f64], v: Self::F64) {
        dst[..LANES / 2].copy_from_slice(&v);
    }
    #[inline(always)]
    fn load_f32(self, src: &[f32]) -> Self::F32 {
        std::array::from_fn(|i| src[i])
    }
    #[inline(always)]
    fn store_f32(self, dst: &mut [f32], v: Self::F32) {
        dst[..LANES].copy_from_slice(&v);
    }
    #[inline(always)]
    fn load_f16(self, src: &[f16]) -> Self::F32 {
        std::array::from_fn(|i| src[i].to_f32())
    }
    #[inline(always)]
    fn store_f16(self, dst: &mut [f16], v: Self::F32) {
        for (d, v) in dst[..LANES].iter_mut().zip(v) {
            *d = f16::from_f32(v);
        }
    }
    #[inline(always)]
    fn load_bf16(self, src: &[bf16]) -> Self::F32 {
        std::array::from_fn(|i| src[i].to_f32())
    }
    #[inline(always)]
    fn store_bf16(self, dst: &mut [bf16], v: Self::F32) {
        for (d, v) in dst[..LANES].iter_mut().zip(v) {
            *d = bf16::from_f32(v);
        }
    }
}
