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
fn f64_to_f32_round_odd(v: f64) -> f32 {
    let nearest = v as f32;
    if !nearest.is_finite() || f64::from(nearest) == v {
        return nearest;
    }
    // The f32 on the zero side of v (the bit pattern's magnitude is one lower when the
    // nearest rounded away from zero), with its last bit set.
    let toward_zero = if f64::from(nearest).abs() > v.abs() {
        f32::from_bits(nearest.to_bits() - 1)
    } else {
        nearest
    };
    f32::from_bits(toward_zero.to_bits() | 1)
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
    #[inline]
    fn round_from_f64(v: f64) -> Self {
        bf16::from_f32(f64_to_f32_round_odd(v))
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
}
