//! Helpers shared by the integration tests: seeded random data, conversions through f64, and
//! an elementwise closeness check that reports every bad index.

use layernorm::{Element, Float};
use proptest::prelude::Rng;
use proptest::test_runner::{RngAlgorithm, TestRng};

/// Seeded generator: the same numbers on every run and machine.
pub struct Rand(TestRng);

impl Rand {
    pub fn new(seed: u8) -> Self {
        Rand(TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]))
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    pub fn normals<T: Element>(&mut self, n: usize, mean: f64, std: f64) -> Vec<T> {
        (0..n)
            .map(|_| from_f64(mean + std * self.normal()))
            .collect()
    }
}

pub fn from_f64<T: Element>(v: f64) -> T {
    T::narrow(T::Compute::from_f64(v))
}

pub fn to_f64<T: Element>(v: T) -> f64 {
    v.widen().to_f64()
}

/// Half the spacing of `T`'s subnormals: the absolute error of rounding a result to `T` in
/// its subnormal range, where a relative bound (a few u·|result|) does not hold. It matters
/// for f16 (2^-25, beside outputs of order 1: a value of |x̂| below 2^-14 is stored as an
/// f16 subnormal, one element in ~10^4 of a normal sample).
pub fn subnormal_rounding<T: Element>() -> f64 {
    let mut v = 1.0f64;
    while to_f64(from_f64::<T>(v / 2.0)) != 0.0 {
        v /= 2.0;
    }
    v / 2.0
}

pub fn widen_all<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|&x| to_f64(x)).collect()
}

pub fn widen_stats<S: Float>(v: &[S]) -> Vec<f64> {
    v.iter().map(|&x| x.to_f64()).collect()
}

/// Asserts `|got − want| ≤ abs + rel·|want|` elementwise (NaN only matches NaN), listing every
/// failing index (the first 10) and how many there were.
#[track_caller]
pub fn assert_close(what: &str, got: &[f64], want: &[f64], abs: f64, rel: f64) {
    let bound: Vec<f64> = want.iter().map(|w| abs + rel * w.abs()).collect();
    assert_within(what, got, want, &bound);
}

/// ‖got − want‖₂ / ‖want‖₂.
pub fn normwise_error(got: &[f64], want: &[f64]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(g, w)| (g - w) * (g - w)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den).sqrt()
}

/// Largest |v|.
pub fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Asserts `|got_i − want_i| ≤ bound_i` (NaN only matches NaN), listing the failures.
#[track_caller]
pub fn assert_within(what: &str, got: &[f64], want: &[f64], bound: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<String> = (0..got.len())
        .filter(|&i| {
            let (g, w) = (got[i], want[i]);
            if g.is_nan() || w.is_nan() {
                !(g.is_nan() && w.is_nan())
            } else {
                !(g == w || (g - w).abs() <= bound[i])
            }
        })
        .map(|i| {
            let (g, w) = (got[i], want[i]);
            format!(
                "[{i}] got {g:e} want {w:e} diff {:e} bound {:e}",
                (g - w).abs(),
                bound[i]
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} elements off:\n  {}",
        bad.len(),
        got.len(),
        bad.iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

/// Which of γ and β a case has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AffineKind {
    None,
    Scale,
    Shift,
    ScaleShift,
}

impl AffineKind {
    pub const ALL: [AffineKind; 4] = [
        AffineKind::None,
        AffineKind::Scale,
        AffineKind::Shift,
        AffineKind::ScaleShift,
    ];
    pub fn has_weight(self) -> bool {
        matches!(self, AffineKind::Scale | AffineKind::ScaleShift)
    }
    pub fn has_bias(self) -> bool {
        matches!(self, AffineKind::Shift | AffineKind::ScaleShift)
    }
}
