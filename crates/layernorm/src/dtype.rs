//! Element types.
//!
//! [`Element`] is the storage type of tensors (f32 and f64 today; f16 and bf16 slot in by
//! implementing it, with no new kernel). Kernels never compute in the storage type: they widen
//! to [`Element::Compute`] (f32 for f32 and the 16-bit types, f64 for f64), accumulate row
//! statistics in f64, and narrow once on store. The saved statistics (mean, rstd) have the
//! compute type, as PyTorch's `native_layer_norm` does.

use std::fmt::Debug;
use std::ops::{Add, Div, Mul, Neg, Sub};

use half::{bf16, f16};

use crate::arch::Storage;
use crate::kernels::RowKernels;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// A floating-point type the kernels compute in: `f32` or `f64`. Sealed.
pub trait Float:
    sealed::Sealed
    + Copy
    + Send
    + Sync
    + Debug
    + Default
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + 'static
{
    /// Name as in numpy (`"float32"`).
    const NAME: &'static str;
    /// Zero.
    const ZERO: Self;
    /// One.
    const ONE: Self;
    /// The smallest positive normal number, as f64.
    const MIN_POSITIVE: f64;
    /// The smallest and largest scale factor (rstd) that still carries full precision and
    /// cannot push `(x − μ)·rstd` out of range; rows outside it are computed in f64.
    const SCALE_RANGE: (f64, f64);
    /// The smallest nonzero |mean| whose hi + lo split in this type is exact to full precision
    /// (below it the low part would be subnormal); rows with a smaller mean are computed in f64.
    const MIN_SPLIT_MEAN: f64;
    /// Rounds an f64 to this type (round to nearest).
    fn from_f64(v: f64) -> Self;
    /// Widens to f64 (exact).
    fn to_f64(self) -> f64;
    /// Converts from another compute type (exact when widening, round to nearest otherwise).
    #[inline(always)]
    fn cast<K: Float>(v: K) -> Self {
        Self::from_f64(v.to_f64())
    }
}

impl Float for f32 {
    const NAME: &'static str = "float32";
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const MIN_POSITIVE: f64 = f32::MIN_POSITIVE as f64;
    // 2^±100: |x − μ| ≤ σ·√n < 2^100·2^32 stays below f32::MAX, and rstd stays normal.
    const SCALE_RANGE: (f64, f64) = (7.888_609_052_210_118e-31, 1.267_650_600_228_229_4e30);
    // 2^-100: the low part, ≈ 2^-24·|μ|, stays normal.
    const MIN_SPLIT_MEAN: f64 = 7.888_609_052_210_118e-31;
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Float for f64 {
    const NAME: &'static str = "float64";
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const MIN_POSITIVE: f64 = f64::MIN_POSITIVE;
    // 2^±900.
    const SCALE_RANGE: (f64, f64) = (1.183_052_186_166_774_7e-271, 8.452_712_498_170_644e270);
    // f64 needs no split (lo is 0).
    const MIN_SPLIT_MEAN: f64 = 0.0;
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
}

/// A tensor element type. Sealed: implemented for `f32`, `f64`, and the 16-bit storage types
/// [`half::f16`] and [`half::bf16`] (computed in f32).
///
/// Per-type code is only the widening load and the narrowing store; everything else is shared.
pub trait Element:
    sealed::Sealed + RowKernels + Storage + Copy + Send + Sync + Debug + Default + PartialEq + 'static
{
    /// The type arithmetic is done in, and the type of the saved statistics.
    type Compute: Float;
    /// Name as in numpy (`"float32"`).
    const NAME: &'static str;
    /// Unit roundoff of the storage type (2^-24 for f32, 2^-53 for f64): the relative error
    /// of one rounding, the unit that tolerances are written in.
    const UNIT_ROUNDOFF: f64;
    /// Widens to the compute type (exact).
    fn widen(self) -> Self::Compute;
    /// Rounds from the compute type (round to nearest even).
    fn narrow(v: Self::Compute) -> Self;
    /// Rounds from f64 with a single rounding (nearest even), as sums accumulated in f64 are
    /// returned. (Going through f32 would round twice for the 16-bit types.)
    #[inline]
    fn round_from_f64(v: f64) -> Self {
        Self::narrow(Self::Compute::from_f64(v))
    }
    /// [`Element::round_from_f64`] of every sum, into `out` (as far as both go).
    #[doc(hidden)]
    #[inline]
    fn round_all_from_f64(sums: &[f64], out: &mut [Self]) {
        for (o, &v) in out.iter_mut().zip(sums) {
            *o = Self::round_from_f64(v);
        }
    }
    /// The slice itself, if this is f32 (no conversion needed); `None` for the other types.
    /// (For the kernels' parameter hand-off; not part of the API.)
    #[doc(hidden)]
    #[inline]
    fn as_f32_slice(v: &[Self]) -> Option<&[f32]> {
        let _ = v;
        None
    }
    /// The slice itself, if this is f64; `None` for the other types.
    #[doc(hidden)]
    #[inline]
    fn as_f64_slice(v: &[Self]) -> Option<&[f64]> {
        let _ = v;
        None
    }
}

/// f64 → f32 rounding to odd: truncate, then set the last bit if anything was cut. Rounding
/// that result to a type with at least two fewer mantissa bits (f16, bf16) gives the correctly
/// rounded (nearest even) value of the f64 — one rounding, not two.
///
/// Branch-free (both candidates computed, one selected), so that a loop of them vectorizes:
/// `round_into` rounds a dγ/dβ per column, which for few rows (one decoding step, long rows)
/// is as much work as the rows themselves.
///
/// A finite v beyond f32's range gives ±`f32::MAX` (truncation's result; rounding it on to a
/// 16-bit type gives the infinity that v itself would round to).
#[inline(always)]
pub(crate) fn f64_to_f32_round_odd(v: f64) -> f32 {
    let nearest = v as f32;
    let back = f64::from(nearest);
    // The f32 on the zero side of v (the bit pattern's magnitude is one lower when the
    // nearest rounded away from zero: from infinity, to f32::MAX), with its last bit set.
    // (Not used where v is exact or not finite, so the wrapping subtraction never matters.)
    let toward_zero = nearest
        .to_bits()
        .wrapping_sub(u32::from(back.abs() > v.abs()));
    let odd = f32::from_bits(toward_zero | 1);
    if v.is_finite() && back != v {
        odd
    } else {
        nearest
    }
}

/// f32 → bf16 rounding to nearest even, NaN quieted (as `half::bf16::from_f32`), branch-free
/// (see [`f64_to_f32_round_odd`]).
#[inline(always)]
fn f32_to_bf16_nearest(v: f32) -> bf16 {
    let x = v.to_bits();
    let rounded = x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16;
    let nan = (x & 0x7fff_ffff) > 0x7f80_0000;
    bf16::from_bits((if nan { (x >> 16) | 0x40 } else { rounded }) as u16)
}

impl Element for f32 {
    type Compute = f32;
    const NAME: &'static str = "float32";
    const UNIT_ROUNDOFF: f64 = f32::EPSILON as f64 / 2.0;
    #[inline]
    fn as_f32_slice(v: &[f32]) -> Option<&[f32]> {
        Some(v)
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
    #[inline(always)]
    fn narrow(v: f32) -> Self {
        v
    }
}

impl Element for f64 {
    type Compute = f64;
    const NAME: &'static str = "float64";
    const UNIT_ROUNDOFF: f64 = f64::EPSILON / 2.0;
    #[inline]
    fn as_f64_slice(v: &[f64]) -> Option<&[f64]> {
        Some(v)
    }
    #[inline(always)]
    fn widen(self) -> f64 {
        self
    }
    #[inline(always)]
    fn narrow(v: f64) -> Self {
        v
    }
}

impl Element for f16 {
    type Compute = f32;
    const NAME: &'static str = "float16";
    const UNIT_ROUNDOFF: f64 = 1.0 / 2048.0; // 2^-11
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn narrow(v: f32) -> Self {
        f16::from_f32(v)
    }
    #[inline]
    fn round_from_f64(v: f64) -> Self {
        f16::from_f32(f64_to_f32_round_odd(v))
    }
    /// Vector code on the active ISA (see `kernels::RoundInto`).
    fn round_all_from_f64(sums: &[f64], out: &mut [Self]) {
        crate::arch::active().vectorize(crate::kernels::RoundInto { sums, out });
    }
}

impl Element for bf16 {
    type Compute = f32;
    const NAME: &'static str = "bfloat16";
    const UNIT_ROUNDOFF: f64 = 1.0 / 256.0; // 2^-8
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn narrow(v: f32) -> Self {
        bf16::from_f32(v)
    }
    #[inline(always)]
    fn round_from_f64(v: f64) -> Self {
        f32_to_bf16_nearest(f64_to_f32_round_odd(v))
    }
    /// Vector code on the active ISA (see `kernels::RoundInto`).
    fn round_all_from_f64(sums: &[f64], out: &mut [Self]) {
        crate::arch::active().vectorize(crate::kernels::RoundInto { sums, out });
    }
}

/// Widens an element straight to f64 (exact for every element type).
#[inline(always)]
pub(crate) fn to_f64<T: Element>(v: T) -> f64 {
    v.widen().to_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_bit_types_round_f64_once() {
        // 1 + 2^-8 + 2^-30 lies just above the bf16 midpoint 1 + 2^-8: nearest is 1 + 2^-7.
        // Through f32 (1 + 2^-8, a tie) it would round to even, 1.0.
        let v = 1.0 + 2f64.powi(-8) + 2f64.powi(-30);
        assert_eq!(bf16::round_from_f64(v), bf16::from_f32(1.0 + 2f32.powi(-7)));
        assert_eq!(
            bf16::round_from_f64(-v),
            bf16::from_f32(-(1.0 + 2f32.powi(-7)))
        );
        // The same for f16 at its midpoint 1 + 2^-11.
        let v = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
        assert_eq!(f16::round_from_f64(v), f16::from_f32(1.0 + 2f32.powi(-10)));
        // Exact values, ties, zero, overflow and NaN behave as plain rounding.
        for v in [0.0, -0.0, 1.5, 1.0 + 2f64.powi(-8), 1e300, -1e300, 3.0e-45] {
            assert_eq!(bf16::round_from_f64(v), bf16::from_f64(v), "{v}");
        }
        assert!(bf16::round_from_f64(f64::NAN).is_nan());
        assert_eq!(f32::round_from_f64(0.1), 0.1f32);
    }

    /// The branch-free bf16 rounding gives `half`'s bits for every sign, exponent and
    /// mantissa top, with the low half at and around each rounding boundary (ties, both
    /// sides of them, the extremes) — infinities and every NaN class included.
    #[test]
    fn branch_free_bf16_rounding_matches_half() {
        let lows = [
            0u32, 1, 0x3fff, 0x7ffe, 0x7fff, 0x8000, 0x8001, 0xbfff, 0xfffe, 0xffff,
        ];
        for high in 0..=u16::MAX {
            for &low in &lows {
                let v = f32::from_bits((u32::from(high) << 16) | low);
                assert_eq!(
                    f32_to_bf16_nearest(v).to_bits(),
                    bf16::from_f32(v).to_bits(),
                    "{:#010x}",
                    v.to_bits()
                );
            }
        }
    }

    /// The branch-free rounding to odd agrees with its definition: v itself where f32 holds
    /// it exactly (infinities and NaN included), otherwise the f32 on the zero side of v
    /// (f32::MAX beyond it) with its last bit set.
    #[test]
    fn round_to_odd_keeps_its_definition() {
        let mut values = vec![0.0, -0.0, 1e-50, -1e-50, 1e-300, 1.0, -1.0, 1e300, -1e300];
        values.extend([
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            f64::MIN_POSITIVE,
        ]);
        values.extend([f64::from(f32::MAX), f64::from(f32::MAX) * (1.0 + 1e-12)]);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Random bits with exponents around f32's range.
            let exp = 1023 - 160 + (state >> 52) % 320;
            values.push(f64::from_bits(
                (state & 0x800f_ffff_ffff_ffff) | (exp << 52),
            ));
        }
        for v in values {
            let nearest = v as f32;
            let want = if !v.is_finite() || f64::from(nearest) == v {
                nearest
            } else {
                // Truncated toward zero (to f32::MAX from beyond it), then the sticky bit.
                let mut t = nearest.clamp(-f32::MAX, f32::MAX);
                if f64::from(t).abs() > v.abs() {
                    t = f32::from_bits(t.to_bits() - 1);
                }
                f32::from_bits(t.to_bits() | 1)
            };
            let got = f64_to_f32_round_odd(v);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{v:e}: {got:e} against {want:e}"
            );
        }
    }
}
