//! AVX-512 (F, BW, DQ, VL) + FMA + F16C: 16 f32 lanes, 8 f64 lanes.

use std::arch::x86_64::*;

use half::{bf16, f16};

use crate::arch::{Simd, WithSimd};

/// Proof that the CPU has AVX-512 F/BW/DQ/VL (and AVX2, FMA, F16C), and with `BF16` its
/// BF16 conversions too (AVX512_BF16: Cooper Lake, Sapphire Rapids, Zen 4 on); only
/// [`Avx512::try_new`] makes one.
///
/// The two tokens run the same kernels; they differ only in how f32 is narrowed to bf16 (see
/// [`Avx512::pack_bf16x2`]), so only kernels that store bf16 are compiled for both (see
/// [`crate::arch::Storage::vectorize_avx512_bf16`]).
#[derive(Clone, Copy, Debug)]
pub struct Avx512<const BF16: bool> {
    _private: (),
}

/// [`Avx512`] with the AVX512_BF16 conversions.
pub type Avx512Bf16 = Avx512<true>;

impl<const BF16: bool> Avx512<BF16> {
    pub(crate) fn try_new() -> Option<Self> {
        let ok = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
            && (!BF16 || is_x86_feature_detected!("avx512bf16"));
        ok.then_some(Avx512 { _private: () })
    }
}

impl Avx512<false> {
    #[inline(always)]
    pub(crate) fn vectorize<W: WithSimd>(self, w: W) -> W::Output {
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
        fn inner<W: WithSimd>(simd: Avx512<false>, w: W) -> W::Output {
            w.with_simd(simd)
        }
        // SAFETY: an `Avx512` exists only if detection found every feature enabled above.
        unsafe { inner(self, w) }
    }
}

impl Avx512<true> {
    #[inline(always)]
    pub(crate) fn vectorize<W: WithSimd>(self, w: W) -> W::Output {
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,avx512bf16")]
        fn inner<W: WithSimd>(simd: Avx512<true>, w: W) -> W::Output {
            w.with_simd(simd)
        }
        // SAFETY: an `Avx512<true>` exists only if detection found every feature enabled
        // above.
        unsafe { inner(self, w) }
    }

    /// The same CPU, narrowing bf16 without the BF16 instructions.
    #[inline(always)]
    pub(crate) fn without_bf16(self) -> Avx512<false> {
        Avx512 { _private: () }
    }
}

// SAFETY (for every `unsafe` block below): the intrinsics need the AVX-512 features that
// `self` proves; every load and store first slices its buffer to the 16 (or 8) elements it
// touches, so the pointer is valid for them; unaligned loads and stores are used.
impl<const BF16: bool> Simd for Avx512<BF16> {
    const LANES: usize = 16;
    type F32 = __m512;
    type F64 = __m512d;

    #[inline(always)]
    fn splat(self, v: f32) -> __m512 {
        // SAFETY: see the impl comment.
        unsafe { _mm512_set1_ps(v) }
    }
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: see the impl comment.
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: see the impl comment.
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: see the impl comment.
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: see the impl comment.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn splat64(self, v: f64) -> __m512d {
        // SAFETY: see the impl comment.
        unsafe { _mm512_set1_pd(v) }
    }
    #[inline(always)]
    fn add64(self, a: __m512d, b: __m512d) -> __m512d {
        // SAFETY: see the impl comment.
        unsafe { _mm512_add_pd(a, b) }
    }
    #[inline(always)]
    fn sub64(self, a: __m512d, b: __m512d) -> __m512d {
        // SAFETY: see the impl comment.
        unsafe { _mm512_sub_pd(a, b) }
    }
    #[inline(always)]
    fn mul64(self, a: __m512d, b: __m512d) -> __m512d {
        // SAFETY: see the impl comment.
        unsafe { _mm512_mul_pd(a, b) }
    }
    #[inline(always)]
    fn mul_add64(self, a: __m512d, b: __m512d, c: __m512d) -> __m512d {
        // SAFETY: see the impl comment.
        unsafe { _mm512_fmadd_pd(a, b, c) }
    }
    #[inline(always)]
    fn widen(self, v: __m512) -> [__m512d; 2] {
        // SAFETY: see the impl comment.
        unsafe {
            let high = _mm512_extractf32x8_ps::<1>(v);
            [
                _mm512_cvtps_pd(_mm512_castps512_ps256(v)),
                _mm512_cvtps_pd(high),
            ]
        }
    }
    #[inline(always)]
    fn narrow_odd(self, [a, b]: [__m512d; 2]) -> __m512 {
        const TRUNCATE: i32 = _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC;
        // SAFETY: see the impl comment.
        unsafe {
            let (lo, hi) = (
                _mm512_cvt_roundpd_ps::<TRUNCATE>(a),
                _mm512_cvt_roundpd_ps::<TRUNCATE>(b),
            );
            // Lanes that lost something (NaN compares unequal too, and is left alone).
            let cut = _mm512_cmp_pd_mask::<_CMP_NEQ_UQ>(_mm512_cvtps_pd(lo), a) as u16
                | ((_mm512_cmp_pd_mask::<_CMP_NEQ_UQ>(_mm512_cvtps_pd(hi), b) as u16) << 8);
            let t = _mm512_insertf32x8::<1>(_mm512_castps256_ps512(lo), hi);
            let sticky = cut & !_mm512_fpclass_ps_mask::<NAN>(t);
            let bits = _mm512_castps_si512(t);
            _mm512_castsi512_ps(_mm512_mask_or_epi32(
                bits,
                sticky,
                bits,
                _mm512_set1_epi32(1),
            ))
        }
    }
    #[inline(always)]
    fn reduce64(self, v: __m512d) -> f64 {
        let mut l = [0.0f64; 8];
        // SAFETY: see the impl comment; `l` holds 8 f64.
        unsafe { _mm512_storeu_pd(l.as_mut_ptr(), v) };
        ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
    }
    #[inline(always)]
    fn load_f64(self, src: &[f64]) -> __m512d {
        let src = &src[..8];
        // SAFETY: see the impl comment.
        unsafe { _mm512_loadu_pd(src.as_ptr()) }
    }
    #[inline(always)]
    fn store_f64(self, dst: &mut [f64], v: __m512d) {
        let dst = &mut dst[..8];
        // SAFETY: see the impl comment.
        unsafe { _mm512_storeu_pd(dst.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn load_f32(self, src: &[f32]) -> __m512 {
        let src = &src[..16];
        // SAFETY: see the impl comment.
        unsafe { _mm512_loadu_ps(src.as_ptr()) }
    }
    #[inline(always)]
    fn load_f32_wide(self, src: &[f32]) -> [__m512d; 2] {
        let src = &src[..16];
        // SAFETY: see the impl comment; each half is 8 f32 of `src`.
        unsafe {
            [
                _mm512_cvtps_pd(_mm256_loadu_ps(src.as_ptr())),
                _mm512_cvtps_pd(_mm256_loadu_ps(src[8..].as_ptr())),
            ]
        }
    }
    #[inline(always)]
    fn store_f32(self, dst: &mut [f32], v: __m512) {
        let dst = &mut dst[..16];
        // SAFETY: see the impl comment.
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn stream_f32(self, dst: &mut [f32], v: __m512) {
        let dst = &mut dst[..16];
        if (dst.as_ptr() as usize).is_multiple_of(64) {
            // SAFETY: see the impl comment; the pointer is 64-byte aligned, as required.
            unsafe { _mm512_stream_ps(dst.as_mut_ptr(), v) }
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
    fn load_f16(self, src: &[f16]) -> __m512 {
        let src = &src[..16];
        // SAFETY: see the impl comment; 16 f16 (transparent u16) are 32 bytes.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(src.as_ptr().cast())) }
    }
    #[inline(always)]
    fn store_f16(self, dst: &mut [f16], v: __m512) {
        let dst = &mut dst[..16];
        // SAFETY: see the impl comment; 16 f16 are 32 bytes.
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), self.pack_f16(v)) }
    }
    #[inline(always)]
    fn stream_f16(self, dst: &mut [f16], v: __m512) {
        let dst = &mut dst[..16];
        if (dst.as_ptr() as usize).is_multiple_of(32) {
            // SAFETY: see the impl comment; 16 f16 are 32 bytes, 32-byte aligned as required.
            unsafe { _mm256_stream_si256(dst.as_mut_ptr().cast(), self.pack_f16(v)) }
        } else {
            self.store_f16(dst, v)
        }
    }
    #[inline(always)]
    fn load_bf16(self, src: &[bf16]) -> __m512 {
        let src = &src[..16];
        // SAFETY: see the impl comment; 16 bf16 (transparent u16) are 32 bytes.
        unsafe {
            let bits = _mm512_castsi256_si512(_mm256_loadu_si256(src.as_ptr().cast()));
            let spread = _mm512_permutexvar_epi64(_mm512_set_epi64(3, 3, 2, 2, 1, 1, 0, 0), bits);
            _mm512_castsi512_ps(_mm512_unpacklo_epi16(_mm512_setzero_si512(), spread))
        }
    }
    #[inline(always)]
    fn load_bf16_wide(self, src: &[bf16]) -> [__m512d; 2] {
        let src = &src[..16];
        // SAFETY: see the impl comment; 16 bf16 (transparent u16) are 32 bytes. With the
        // middle quarters swapped, the low words of each 128-bit lane are values 0–7, the
        // high ones 8–15; each interleaved above a zero word is its f32 bits.
        unsafe {
            let bits =
                _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_loadu_si256(src.as_ptr().cast()));
            let zero = _mm256_setzero_si256();
            [
                _mm512_cvtps_pd(_mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, bits))),
                _mm512_cvtps_pd(_mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, bits))),
            ]
        }
    }
    #[inline(always)]
    fn load_bf16_wide_unordered(self, src: &[bf16]) -> [__m512d; 2] {
        let src = &src[..16];
        // SAFETY: see the impl comment; 16 bf16 (transparent u16) are 32 bytes. Each word
        // interleaved above a zero word is its f32 bits: lanes 0–3 and 8–11 in the first
        // vector, 4–7 and 12–15 in the second.
        unsafe {
            let bits = _mm256_loadu_si256(src.as_ptr().cast());
            let zero = _mm256_setzero_si256();
            [
                _mm512_cvtps_pd(_mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, bits))),
                _mm512_cvtps_pd(_mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, bits))),
            ]
        }
    }
    #[inline(always)]
    fn store_bf16(self, dst: &mut [bf16], v: __m512) {
        let dst = &mut dst[..16];
        // SAFETY: see the impl comment; 16 bf16 are 32 bytes.
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), self.pack_bf16(v)) }
    }
    #[inline(always)]
    fn stream_bf16(self, dst: &mut [bf16], v: __m512) {
        let dst = &mut dst[..16];
        if (dst.as_ptr() as usize).is_multiple_of(32) {
            // SAFETY: see the impl comment; 16 bf16 are 32 bytes, 32-byte aligned as required.
            unsafe { _mm256_stream_si256(dst.as_mut_ptr().cast(), self.pack_bf16(v)) }
        } else {
            self.store_bf16(dst, v)
        }
    }
    #[inline(always)]
    fn store_bf16x2(self, dst: &mut [bf16], [a, b]: [__m512; 2]) {
        let dst = &mut dst[..32];
        // SAFETY: see the impl comment; 32 bf16 are 64 bytes.
        unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), self.pack_bf16x2(a, b)) }
    }
    #[inline(always)]
    fn stream_bf16x2(self, dst: &mut [bf16], [a, b]: [__m512; 2]) {
        let dst = &mut dst[..32];
        let packed = self.pack_bf16x2(a, b);
        let at = dst.as_ptr() as usize;
        if at.is_multiple_of(64) {
            // SAFETY: see the impl comment; 32 bf16 are 64 bytes, 64-byte aligned as required.
            unsafe { _mm512_stream_si512(dst.as_mut_ptr().cast(), packed) }
        } else if at.is_multiple_of(32) {
            // SAFETY: see the impl comment; two halves of 32 bytes, each 32-byte aligned.
            unsafe {
                let (lo, hi) = dst.split_at_mut(16);
                _mm256_stream_si256(lo.as_mut_ptr().cast(), _mm512_castsi512_si256(packed));
                let high = _mm512_extracti64x4_epi64::<1>(packed);
                _mm256_stream_si256(hi.as_mut_ptr().cast(), high);
            }
        } else {
            // SAFETY: see the impl comment; 32 bf16 are 64 bytes.
            unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), packed) }
        }
    }
}

/// `vfpclassps`'s class bits for quiet and signalling NaN.
const NAN: i32 = 0x01 | 0x80;

/// `vfpclassps`'s class bit for subnormal (denormal) values.
const SUBNORMAL: i32 = 0x20;

/// Conversions shared by the stores and the non-temporal stores.
impl<const BF16: bool> Avx512<BF16> {
    /// 16 f32 rounded to nearest even f16, packed.
    #[inline(always)]
    fn pack_f16(self, v: __m512) -> __m256i {
        // SAFETY: `self` proves the CPU has AVX-512 (see the `Simd` impl comment); no memory
        // is touched.
        unsafe { _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v) }
    }

    /// 16 f32 rounded to nearest even bf16, packed; NaN stays NaN. With `BF16`, one
    /// `vcvtneps2bf16` (see [`Avx512::pack_bf16x2`]).
    #[inline(always)]
    fn pack_bf16(self, v: __m512) -> __m256i {
        // SAFETY: `self` proves the CPU has AVX-512, and with `BF16` AVX512_BF16 (see the
        // `Simd` impl comment); no memory is touched.
        unsafe {
            if BF16 && _mm512_fpclass_ps_mask::<SUBNORMAL>(v) == 0 {
                return std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v));
            }
            _mm512_cvtepi32_epi16(self.round_bf16(v))
        }
    }

    /// 32 f32 (`a` then `b`) rounded as [`Avx512::pack_bf16`] rounds them, packed.
    ///
    /// With `BF16`, one `vcvtne2ps2bf16`: the same rounding to nearest even, NaN quieted the
    /// same way, but subnormal inputs flushed to (signed) zero, so a pair holding one takes
    /// the integer path below (one `vfpclassps` per vector tells). The same bits either way
    /// (tested on every class of input), at a fraction of the cost: ~20 instructions per 32
    /// values without.
    ///
    /// Without: the integer rounding of [`Avx512::round_bf16`], one in-lane pack and one
    /// qword permute, where two `pack_bf16` would narrow with two cross-lane moves of two
    /// micro-ops each (all on port 5, the busiest port here).
    #[inline(always)]
    fn pack_bf16x2(self, a: __m512, b: __m512) -> __m512i {
        // SAFETY: `self` proves the CPU has AVX-512, and with `BF16` AVX512_BF16 (see the
        // `Simd` impl comment); no memory is touched.
        unsafe {
            if BF16
                && (_mm512_fpclass_ps_mask::<SUBNORMAL>(a) | _mm512_fpclass_ps_mask::<SUBNORMAL>(b))
                    == 0
            {
                // b goes to the high half, a to the low one.
                return std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(b, a));
            }
            // Per 128-bit lane k: a[4k..4k + 4], then b[4k..4k + 4] (the values are at most
            // 0xffff: no saturation).
            let packed = _mm512_packus_epi32(self.round_bf16(a), self.round_bf16(b));
            _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7), packed)
        }
    }

    /// 16 f32 rounded to nearest even bf16, each in the low half of its 32-bit lane; NaN
    /// stays NaN.
    #[inline(always)]
    fn round_bf16(self, v: __m512) -> __m512i {
        // SAFETY: `self` proves the CPU has AVX-512 (see the `Simd` impl comment); no memory
        // is touched.
        unsafe {
            // Round to nearest even: add 0x7fff plus the lowest kept bit, then truncate.
            let bits = _mm512_castps_si512(v);
            let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
            let rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
            // NaN must stay NaN (rounding could carry it into infinity): quiet it instead.
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
            let quiet = _mm512_or_si512(bits, _mm512_set1_epi32(0x0040_0000));
            let bits = _mm512_mask_blend_epi32(nan, rounded, quiet);
            _mm512_srli_epi32::<16>(bits)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bf16 bits of 32 values narrowed every way a kernel can: two vectors at once and one at
    /// a time, with and without the BF16 instructions.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,avx512bf16")]
    fn narrow_every_way(t: Avx512Bf16, v: &[f32]) -> [[u16; 32]; 4] {
        let (a, b) = (t.load_f32(v), t.load_f32(&v[16..]));
        let plain = t.without_bf16();
        let mut out = [[bf16::ZERO; 32]; 4];
        t.store_bf16x2(&mut out[0], [a, b]);
        plain.store_bf16x2(&mut out[1], [a, b]);
        for (k, v) in [a, b].into_iter().enumerate() {
            t.store_bf16(&mut out[2][16 * k..], v);
            plain.store_bf16(&mut out[3][16 * k..], v);
        }
        out.map(|o| o.map(bf16::to_bits))
    }

    /// The BF16 instructions flush subnormal inputs to zero; the kernels' narrowing must not:
    /// on every class of f32 (zeros, subnormals, normals, rounding ties, the largest finite
    /// values, infinities, quiet and signalling NaNs) and on pseudo-random bit patterns (one
    /// vector in eight holds a subnormal beside normal values), every way of narrowing gives
    /// the bits of `half`'s correctly rounded conversion.
    #[test]
    fn bf16_instructions_narrow_as_the_integer_rounding() {
        let Some(t) = Avx512Bf16::try_new() else {
            eprintln!("skipped: this CPU has no AVX512_BF16");
            return;
        };
        let mut bits: Vec<u32> = vec![
            0x0000_0000,
            0x8000_0000,
            0x0000_0001,
            0x8000_0001,
            0x007f_ffff,
            0x807f_ffff,
            0x0000_8000,
            0x0000_7fff,
            0x0001_8000,
            0x0080_0000,
            0x8080_0000,
            0x3f80_8000,
            0x3f81_8000,
            0x3f80_7fff,
            0x3f80_8001,
            0x7f7f_ffff,
            0xff7f_ffff,
            0x7f7f_7fff,
            0x7f80_0000,
            0xff80_0000,
            0x7f80_0001,
            0xff80_0001,
            0x7fc0_0000,
            0xffff_ffff,
            0x7fbf_ffff,
            0x7f80_8000,
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        while bits.len() < 1 << 20 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            bits.push((state >> 32) as u32);
        }
        for chunk in bits.chunks_exact(32) {
            let values: Vec<f32> = chunk.iter().map(|&b| f32::from_bits(b)).collect();
            let want: Vec<u16> = values
                .iter()
                .map(|&v| bf16::from_f32(v).to_bits())
                .collect();
            // SAFETY: `t` proves the CPU has every feature `narrow_every_way` enables.
            let got = unsafe { narrow_every_way(t, &values) };
            for (way, got) in got.iter().enumerate() {
                assert_eq!(&got[..], &want[..], "way {way}, inputs {chunk:08x?}");
            }
        }
    }

    /// Every way the kernels widen 16 bf16 (to f32, to f64 in order, to f64 in the lanes'
    /// own order), for one vector of bit patterns.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
    fn widen_every_way(t: Avx512<false>, v: &[bf16]) -> ([u64; 16], [u64; 16], [u64; 16]) {
        let mut narrow = [0.0f32; 16];
        t.store_f32(&mut narrow, t.load_bf16(v));
        let mut in_order = [0.0f64; 16];
        let mut any_order = [0.0f64; 16];
        for (out, halves) in [
            (&mut in_order, t.load_bf16_wide(v)),
            (&mut any_order, t.load_bf16_wide_unordered(v)),
        ] {
            t.store_f64(out, halves[0]);
            t.store_f64(&mut out[8..], halves[1]);
        }
        (
            narrow.map(|x| f64::from(x).to_bits()),
            in_order.map(f64::to_bits),
            any_order.map(f64::to_bits),
        )
    }

    /// The unpacking loads give exactly `half`'s widening, NaN payloads, signed zeros and
    /// subnormals included, for all 65536 patterns: in order where they promise it, and as
    /// the same values in some order where they do not.
    #[test]
    fn bf16_loads_widen_exactly() {
        let Some(t) = Avx512::<false>::try_new() else {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        };
        let all: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
        for chunk in all.chunks_exact(16) {
            let want: Vec<u64> = chunk.iter().map(|v| v.to_f64().to_bits()).collect();
            // SAFETY: `t` proves the CPU has every feature `widen_every_way` enables.
            let (narrow, in_order, any_order) = unsafe { widen_every_way(t, chunk) };
            assert_eq!(&narrow[..], &want[..], "to f32");
            assert_eq!(&in_order[..], &want[..], "to f64 in order");
            let (mut got, mut want) = (any_order.to_vec(), want);
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "to f64 in any order");
        }
    }
}
