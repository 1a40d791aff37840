//! x86-64: AVX2 (+FMA, F16C) and AVX-512 tokens.

mod avx2;
mod avx512;

pub(crate) use avx2::Avx2;
pub(crate) use avx512::{Avx512, Avx512Bf16};

pub(super) fn features() -> Vec<(&'static str, bool)> {
    vec![
        ("sse4.2", is_x86_feature_detected!("sse4.2")),
        ("avx2", is_x86_feature_detected!("avx2")),
        ("fma", is_x86_feature_detected!("fma")),
        ("f16c", is_x86_feature_detected!("f16c")),
        ("avx512f", is_x86_feature_detected!("avx512f")),
        ("avx512bw", is_x86_feature_detected!("avx512bw")),
        ("avx512dq", is_x86_feature_detected!("avx512dq")),
        ("avx512vl", is_x86_feature_detected!("avx512vl")),
        ("avx512bf16", is_x86_feature_detected!("avx512bf16")),
        ("avx512fp16", is_x86_feature_detected!("avx512fp16")),
    ]
}

/// `dst.copy_from_slice(src)` with non-temporal stores (SSE2, part of the x86-64 baseline):
/// 16-byte unaligned loads, aligned streaming stores from dst's first 16-byte boundary on.
pub(super) fn stream_copy_bytes(src: &[u8], dst: &mut [u8]) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    assert_eq!(src.len(), dst.len(), "stream_copy_bytes: lengths differ");
    let head = dst.as_ptr().align_offset(16).min(dst.len());
    dst[..head].copy_from_slice(&src[..head]);
    let body = (dst.len() - head) / 16 * 16;
    let (s, d) = (&src[head..head + body], &mut dst[head..head + body]);
    for (d, s) in d.chunks_exact_mut(16).zip(s.chunks_exact(16)) {
        // SAFETY: both chunks are 16 bytes long; `d` starts on a 16-byte boundary (dst's
        // first one, plus multiples of 16), as `_mm_stream_si128` requires, and the load is
        // unaligned. SSE2 is part of the x86-64 baseline.
        unsafe {
            let v = _mm_loadu_si128(s.as_ptr().cast::<__m128i>());
            _mm_stream_si128(d.as_mut_ptr().cast::<__m128i>(), v);
        }
    }
    // SAFETY: sfence is SSE, part of the baseline; it orders the streaming stores above
    // before any later store.
    unsafe { _mm_sfence() };
    dst[head + body..].copy_from_slice(&src[head + body..]);
}
