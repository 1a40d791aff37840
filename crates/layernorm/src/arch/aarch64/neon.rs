//! NEON: 4 f32 lanes, 2 f64 lanes. f16/bf16 convert through `half` lane by lane (the NEON
//! f16 intrinsic types are not stable in Rust yet).

use std::arch::aarch64::*;

use half::{bf16, f16};

use crate::arch::{Simd, WithSimd};

/// Proof that the CPU has NEON; only [`Neon::try_new`] makes one.
#[derive(Clone, Copy, Debug)]
pub struct Neon {
    _private: (),
}

impl Neon {
    pub(crate) fn try_new() -> Option<Self> {
        std::arch::is_aarch64_feature_detected!("neon").then_some(Neon { _private: () })
    }

    #[inline(always)]
    pub(crate) fn vectorize<W: WithSimd>(self, w: W) -> W::Output {
        #[target_feature(enable = "neon")]
        fn inner<W: WithSimd>(simd: Neon, w: W) -> W::Output {
            w.with_simd(simd)
        }
        // SAFETY: a `Neon` exists only if detection found neon.
        unsafe { inner(self, w) }
    }
}

// SAFETY (for every `unsafe` block below): the intrinsics need neon, which `self` proves;
// every load and store first slices its buffer to the 4 elements it touches.
impl Simd for Neon {
    const LANES: usize = 4;
    type F32 = float32x4_t;
    type F64 = float64x2_t;

    #[inline(always)]
    fn splat(self, v: f32) -> float32x4_t {
        // SAFETY: see the impl comment.
        unsafe { vdupq_n_f32(v) }
    }
    #[inline(always)]
    fn add(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: see the impl comment.
        unsafe { vaddq_f32(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: see the impl comment.
        unsafe { vsubq_f32(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: see the impl comment.
        unsafe { vmulq_f32(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        // SAFETY: see the impl comment.
        unsafe { vfmaq_f32(c, a, b) }
    }
    #[inline(always)]
    fn splat64(self, v: f64) -> float64x2_t {
        // SAFETY: see the impl comment.
        unsafe { vdupq_n_f64(v) }
    }
    #[inline(always)]
    fn add64(self, a: float64x2_t, b: float64x2_t) -> float64x2_t {
        // SAFETY: see the impl comment.
        unsafe { vaddq_f64(a, b) }
    }
    #[inline(always)]
    fn sub64(self, a: float64x2_t, b: float64x2_t) -> float64x2_t {
        // SAFETY: see the impl comment.
        unsafe { vsubq_f64(a, b) }
    }
    #[inline(always)]
    fn mul64(self, a: float64x2_t, b: float64x2_t) -> float64x2_t {
        // SAFETY: see the impl comment.
        unsafe { vmulq_f64(a, b) }
    }
    #[inline(always)]
    fn mul_add64(self, a: float64x2_t, b: float64x2_t, c: float64x2_t) -> float64x2_t {
        // SAFETY: see the impl comment.
        unsafe { vfmaq_f64(c, a, b) }
    }
    #[inline(always)]
    fn widen(self, v: float32x4_t) -> [float64x2_t; 2] {
        // SAFETY: see the impl comment.
        unsafe { [vcvt_f64_f32(vget_low_f32(v)), vcvt_high_f64_f32(v)] }
    }
    #[inline(always)]
    fn reduce64(self, v: float64x2_t) -> f64 {
        // SAFETY: see the impl comment.
        unsafe { vgetq_lane_f64::<0>(v) + vgetq_lane_f64::<1>(v) }
    }
    #[inline(always)]
    fn load_f64(self, src: &[f64]) -> float64x2_t {
        let src = &src[..2];
        // SAFETY: see the impl comment.
        unsafe { vld1q_f64(src.as_ptr()) }
    }
    #[inline(always)]
    fn store_f64(self, dst: &mut [f64], v: float64x2_t) {
        let dst = &mut dst[..2];
        // SAFETY: see the impl comment.
        unsafe { vst1q_f64(dst.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn load_f32(self, src: &[f32]) -> float32x4_t {
        let src = &src[..4];
        // SAFETY: see the impl comment.
        unsafe { vld1q_f32(src.as_ptr()) }
    }
    #[inline(always)]
    fn store_f32(self, dst: &mut [f32], v: float32x4_t) {
        let dst = &mut dst[..4];
        // SAFETY: see the impl comment.
        unsafe { vst1q_f32(dst.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn load_f16(self, src: &[f16]) -> float32x4_t {
        let lanes: [f32; 4] = std::array::from_fn(|i| src[i].to_f32());
        self.load_f32(&lanes)
    }
    #[inline(always)]
    fn store_f16(self, dst: &mut [f16], v: float32x4_t) {
        let mut lanes = [0.0f32; 4];
        self.store_f32(&mut lanes, v);
        for (d, v) in dst[..4].iter_mut().zip(lanes) {
            *d = f16::from_f32(v);
        }
    }
    #[inline(always)]
    fn load_bf16(self, src: &[bf16]) -> float32x4_t {
        let src = &src[..4];
        // SAFETY: see the impl comment; bf16 is a transparent u16, 4 of them are 8 bytes.
        unsafe { vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(src.as_ptr().cast()))) }
    }
    #[inline(always)]
    fn store_bf16(self, dst: &mut [bf16], v: float32x4_t) {
        let mut lanes = [0.0f32; 4];
        self.store_f32(&mut lanes, v);
        for (d, v) in dst[..4].iter_mut().zip(lanes) {
            *d = bf16::from_f32(v);
        }
    }
}
