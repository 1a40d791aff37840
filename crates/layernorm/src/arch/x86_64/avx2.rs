//! AVX2 + FMA + F16C: 8 f32 lanes, 4 f64 lanes.

use std::arch::x86_64::*;

use half::{bf16, f16};

use crate::arch::{Simd, WithSimd};

/// Proof that the CPU has AVX2, FMA and F16C; only [`Avx2::try_new`] makes one.
#[derive(Clone, Copy, Debug)]
pub struct Avx2 {
    _private: (),
}

impl Avx2 {
    pub(crate) fn try_new() -> Option<Self> {
        let ok = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        ok.then_some(Avx2 { _private: () })
    }

    #[inline(always)]
    pub(crate) fn vectorize<W: WithSimd>(self, w: W) -> W::Output {
        #[target_feature(enable = "avx2,fma,f16c")]
        fn inner<W: WithSimd>(simd: Avx2, w: W) -> W::Output {
            w.with_simd(simd)
        }
        // SAFETY: an `Avx2` exists only if detection found avx2, fma and f16c.
        unsafe { inner(self, w) }
    }
}

// SAFETY (for every `unsafe` block below): the intrinsics need avx2/fma/f16c, which `self`
// proves; every load and store first slices its buffer to the 8 (or 4) elements it touches,
// so the pointer is valid for them; unaligned loads and stores (`loadu`/`storeu`) are used.
impl Simd for Avx2 {
    const LANES: usize = 8;
    type F32 = __m256;
    type F64 = __m256d;

    #[inline(always)]
    fn splat(self, v: f32) -> __m256 {
        // SAFETY: see the impl comment.
        unsafe { _mm256_set1_ps(v) }
    }
    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: see the impl comment.
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: see the impl comment.
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: see the impl comment.
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: see the impl comment.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn splat64(self, v: f64) -> __m256d {
        // SAFETY: see the impl comment.
        unsafe { _mm256_set1_pd(v) }
    }
    #[inline(always)]
    fn add64(self, a: __m256d, b: __m256d) -> __m256d {
        // SAFETY: see the impl comment.
        unsafe { _mm256_add_pd(a, b) }
    }
    #[inline(always)]
    fn sub64(self, a: __m256d, b: __m256d) -> __m256d {
        // SAFETY: see the impl comment.
        unsafe { _mm256_sub_pd(a, b) }
    }
    #[inline(always)]
    fn mul64(self, a: __m256d, b: __m256d) -> __m256d {
        // SAFETY: see the impl comment.
        unsafe { _mm256_mul_pd(a, b) }
    }
    #[inline(always)]
    fn mul_add64(self, a: __m256d, b: __m256d, c: __m256d) -> __m256d {
        // SAFETY: see the impl comment.
        unsafe { _mm256_fmadd_pd(a, b, c) }
    }
    #[inline(always)]
    fn widen(self, v: __m256) -> [__m256d; 2] {
        // SAFETY: see the impl comment.
        unsafe {
            [
                _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)),
            ]
        }
    }
    #[inline(always)]
    fn reduce64(self, v: __m256d) -> f64 {
        let mut lanes = [0.0f64; 4];
        // SAFETY: see the impl comment; `lanes` holds 4 f64.
        unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), v) };
        (lanes[0] + lanes[2]) + (lanes[1] + lanes[3])
    }
    #[inline(always)]
    fn load_f64(self, src: &[f64]) -> __m256d {
        let src = &src[..4];
        // SAFETY: see the impl comment.
        unsafe { _mm256_loadu_pd(src.as_ptr()) }
    }
    #[inline(always)]
    fn store_f64(self, dst: &mut [f64], v: __m256d) {
        let dst = &mut dst[..4];
        // SAFETY: see the impl comment.
        unsafe { _mm256_storeu_pd(dst.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn load_f32(self, src: &[f32]) -> __m256 {
        let src = &src[..8];
        // SAFETY: see the impl comment.
        unsafe { _mm256_loadu_ps(src.as_ptr()) }
    }
    #[inline(always)]
    fn load_f32_wide(self, src: &[f32]) -> [__m256d; 2] {
        let src = &src[..8];
        // SAFETY: see the impl comment; each half is 4 f32 of `src`.
        unsafe {
            [
                _mm256_cvtps_pd(_mm_loadu_ps(src.as_ptr())),
                _mm256_cvtps_pd(_mm_loadu_ps(src[4..].as_ptr())),
            ]
        }
    }
    #[inline(always)]
    fn store_f32(self, dst: &mut [f32], v: __m256) {
        let dst = &mut dst[..8];
        // SAFETY: see the impl comment.
        unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn stream_f32(self, dst: &mut [f32], v: __m256) {
        let dst = &mut dst[..8];
        if (dst.as_ptr() as usize).is_multiple_of(32) {
            // SAFETY: see the impl comment; the pointer is 32-byte aligned, as required.
            unsafe { _mm256_stream_ps(dst.as_mut_ptr(), v) }
        } else {
            self.store_f32(dst, v)
        }
    }
    #[inline(always)]
    fn fence(self) {
        // SAFETY: see the impl comment (sfence is SSE, part of the baseline).
        unsafe { _mm_sfence() }
    }
    #[inline(always)]
    fn load_f16(self, src: &[f16]) -> __m256 {
        let src = &src[..8];
        // SAFETY: see the impl comment; f16 is a transparent u16, 8 of them are 16 bytes.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().cast())) }
    }
    #[inline(always)]
    fn store_f16(self, dst: &mut [f16], v: __m256) {
        let dst = &mut dst[..8];
        // SAFETY: see the impl comment; 8 f16 are 16 bytes.
        unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), self.pack_f16(v)) }
    }
    #[inline(always)]
    fn stream_f16(self, dst: &mut [f16], v: __m256) {
        let dst = &mut dst[..8];
        if (dst.as_ptr() as usize).is_multiple_of(16) {
            // SAFETY: see the impl comment; 8 f16 are 16 bytes, 16-byte aligned as required.
            unsafe { _mm_stream_si128(dst.as_mut_ptr().cast(), self.pack_f16(v)) }
        } else {
            self.store_f16(dst, v)
        }
    }
    #[inline(always)]
    fn load_bf16(self, src: &[bf16]) -> __m256 {
        let src = &src[..8];
        // SAFETY: see the impl comment; bf16 is a transparent u16, 8 of them are 16 bytes.
        unsafe {
            let bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(src.as_ptr().cast()));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bits))
        }
    }
    #[inline(always)]
    fn load_bf16_wide(self, src: &[bf16]) -> [__m256d; 2] {
        let src = &src[..8];
        // SAFETY: see the impl comment; 8 bf16 (transparent u16) are 16 bytes. Each word
        // interleaved above a zero word is its f32 bits: values 0–3, then 4–7 (in order).
        unsafe {
            let bits = _mm_loadu_si128(src.as_ptr().cast());
            let zero = _mm_setzero_si128();
            [
                _mm256_cvtps_pd(_mm_castsi128_ps(_mm_unpacklo_epi16(zero, bits))),
                _mm256_cvtps_pd(_mm_castsi128_ps(_mm_unpackhi_epi16(zero, bits))),
            ]
        }
    }
    #[inline(always)]
    fn store_bf16(self, dst: &mut [bf16], v: __m256) {
        let dst = &mut dst[..8];
        // SAFETY: see the impl comment; 8 bf16 are 16 bytes.
        unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), self.pack_bf16(v)) }
    }
    #[inline(always)]
    fn stream_bf16(self, dst: &mut [bf16], v: __m256) {
        let dst = &mut dst[..8];
        if (dst.as_ptr() as usize).is_multiple_of(16) {
            // SAFETY: see the impl comment; 8 bf16 are 16 bytes, 16-byte aligned as required.
            unsafe { _mm_stream_si128(dst.as_mut_ptr().cast(), self.pack_bf16(v)) }
        } else {
            self.store_bf16(dst, v)
        }
    }
    #[inline(always)]
    fn store_bf16x2(self, dst: &mut [bf16], [a, b]: [__m256; 2]) {
        let dst = &mut dst[..16];
        // SAFETY: see the impl comment; 16 bf16 are 32 bytes.
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), self.pack_bf16x2(a, b)) }
    }
    #[inline(always)]
    fn stream_bf16x2(self, dst: &mut [bf16], [a, b]: [__m256; 2]) {
        let dst = &mut dst[..16];
        let packed = self.pack_bf16x2(a, b);
        let at = dst.as_ptr() as usize;
        if at.is_multiple_of(32) {
            // SAFETY: see the impl comment; 16 bf16 are 32 bytes, 32-byte aligned as required.
            unsafe { _mm256_stream_si256(dst.as_mut_ptr().cast(), packed) }
        } else if at.is_multiple_of(16) {
            // SAFETY: see the impl comment; two halves of 16 bytes, each 16-byte aligned.
            unsafe {
                let (lo, hi) = dst.split_at_mut(8);
                _mm_stream_si128(lo.as_mut_ptr().cast(), _mm256_castsi256_si128(packed));
                let high = _mm256_extracti128_si256::<1>(packed);
                _mm_stream_si128(hi.as_mut_ptr().cast(), high);
            }
        } else {
            // SAFETY: see the impl comment; 16 bf16 are 32 bytes.
            unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), packed) }
        }
    }
}

/// Conversions shared by the stores and the non-temporal stores.
impl Avx2 {
    /// 8 f32 rounded to nearest even f16, packed.
    #[inline(always)]
    fn pack_f16(self, v: __m256) -> __m128i {
        // SAFETY: `self` proves the CPU has AVX2 and F16C (see the `Simd` impl comment); no
        // memory is touched.
        unsafe { _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v) }
    }

    /// 8 f32 rounded to nearest even bf16, packed; NaN stays NaN.
    #[inline(always)]
    fn pack_bf16(self, v: __m256) -> __m128i {
        // SAFETY: `self` proves the CPU has AVX2 (see the `Simd` impl comment); no memory is
        // touched.
        unsafe {
            // Pack 8 × u32 → 8 × u16 (packus works per 128-bit half, so gather the halves).
            let high = self.round_bf16(v);
            let packed = _mm256_packus_epi32(high, high);
            let ordered = _mm256_permute4x64_epi64::<0b1000>(packed);
            _mm256_castsi256_si128(ordered)
        }
    }

    /// 16 f32, `a` then `b`, rounded to nearest even bf16 and packed: the bits of two
    /// [`Avx2::pack_bf16`], with one pack and one permute instead of two of each.
    #[inline(always)]
    fn pack_bf16x2(self, a: __m256, b: __m256) -> __m256i {
        // SAFETY: `self` proves the CPU has AVX2 (see the `Simd` impl comment); no memory is
        // touched.
        unsafe {
            // Per 128-bit half k: a[4k..4k + 4], then b[4k..4k + 4] (the values are at most
            // 0xffff: no saturation); the permute orders the quadwords a0 a1 b0 b1.
            let packed = _mm256_packus_epi32(self.round_bf16(a), self.round_bf16(b));
            _mm256_permute4x64_epi64::<0b11_01_10_00>(packed)
        }
    }

    /// 8 f32 rounded to nearest even bf16, each in the low half of its 32-bit lane; NaN
    /// stays NaN.
    #[inline(always)]
    fn round_bf16(self, v: __m256) -> __m256i {
        // SAFETY: `self` proves the CPU has AVX2 (see the `Simd` impl comment); no memory is
        // touched.
        unsafe {
            // Round to nearest even: add 0x7fff plus the lowest kept bit, then truncate.
            let bits = _mm256_castps_si256(v);
            let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
            let rounded = _mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff)));
            // NaN must stay NaN (rounding could carry it into infinity): quiet it instead.
            let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
            let quiet = _mm256_or_si256(bits, _mm256_set1_epi32(0x0040_0000));
            let bits = _mm256_blendv_epi8(rounded, quiet, nan);
            _mm256_srli_epi32::<16>(bits)
        }
    }
}
