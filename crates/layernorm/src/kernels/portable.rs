//! The portable LayerNorm row kernels: the algorithm in plain Rust, generic over the element
//! type. f64 tensors run here, and so do the rare f32/f16/bf16 rows that need the f64 path
//! (see the end of this comment); the vector kernels in `simd.rs` follow the same steps.
//!
//! Forward, for one row of n elements — statistics in f64, normalization in the arithmetic
//! type K (f32 for f32 storage, f64 for f64):
//!
//! ```text
//! m0   = Σ x / n                                pass 1
//! d    = x − m0;   s1 = Σ d;   s2 = Σ d²        pass 2 (the row is in cache now)
//! μ    = m0 + s1/n;   σ² = (s2 − s1²/n) / n     corrected two-pass: s1 repairs m0's rounding
//! rstd = 1 / √(σ² + ε)
//! y    = ((x − μ_hi) − μ_lo) · rstd · γ + β     pass 3, with μ = μ_hi + μ_lo split in K
//! ```
//!
//! Backward, from saved (mean, rstd), with g = dy·γ and x̂ = (x − μ)·rstd:
//!
//! ```text
//! pass 1 (f64): d = x − mean;  Σd, Σg, Σg·d
//!               δ = Σd/n (the saved mean may be rounded to f32: δ recovers the exact μ)
//!               mean_g = Σg/n;   mean_gx = (Σg·d − δ·Σg)·rstd / n   (= mean(g·x̂))
//! pass 2 (K):   dx = rstd · (g − mean_g − x̂·mean_gx)
//!               dγ += dy·x̂;   dβ += dy                  (per-block f64 partials)
//! ```
//!
//! Rows whose rstd lies outside K's safe range (a spread beyond 2^100 in f32, or ε and σ
//! below 2^-200), or whose mean is so small that its low part would be subnormal in K, take
//! the same algorithm in f64; f64 rows whose squares overflow are scaled by
//! an exact power of two. So finite inputs give finite outputs, and NaN/Inf stay in their row.

use super::reduce::lane_sums;
use super::Norm;
use crate::dtype::{to_f64, Element, Float};

/// 2^-600, exact: scales an f64 row whose sum or squares would overflow back into range.
const DOWNSCALE: f64 = f64::from_bits((1023 - 600) << 52);

/// Statistics of one row, in f64.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowStats {
    pub mean: f64,
    pub rstd: f64,
}

/// Mean and biased variance of `x·scale`, by the corrected two-pass algorithm; for RMSNorm
/// (`norm` not centring), mean 0 and the mean square.
#[inline(always)]
fn moments<T: Element>(x: &[T], scale: f64, norm: Norm) -> (f64, f64) {
    let n = x.len() as f64;
    if !norm.centers() {
        let [sq] = lane_sums(x.len(), |i| {
            let v = to_f64(x[i]) * scale;
            [v * v]
        });
        return (0.0, sq / n);
    }
    let [sum] = lane_sums(x.len(), |i| [to_f64(x[i]) * scale]);
    let m0 = sum / n;
    let [s1, s2] = lane_sums(x.len(), |i| {
        let d = to_f64(x[i]) * scale - m0;
        [d, d * d]
    });
    let var = (s2 - s1 * s1 / n) / n;
    // Rounding can leave a hair below zero; a NaN must stay NaN (f64::max would hide it).
    let var = if var < 0.0 { 0.0 } else { var };
    (m0 + s1 / n, var)
}

/// Mean and rstd of a row, exact to f64 rounding, finite for every finite row.
pub(crate) fn row_stats<T: Element>(x: &[T], eps: f64, norm: Norm) -> RowStats {
    let (mean, var) = moments(x, 1.0, norm);
    if !(mean.is_finite() && var.is_finite()) {
        let (mean_s, var_s) = moments(x, DOWNSCALE, norm);
        if mean_s.is_finite() && var_s.is_finite() {
            // (DOWNSCALE² itself underflows: divide twice.)
            let var = var_s / DOWNSCALE / DOWNSCALE;
            let rstd = if var.is_finite() {
                // A large mean with a modest spread (a constant row near f64::MAX, say).
                1.0 / (var + eps).sqrt()
            } else {
                // A spread beyond f64: ε is negligible beside it.
                DOWNSCALE / var_s.sqrt()
            };
            return RowStats {
                mean: mean_s / DOWNSCALE,
                rstd,
            };
        }
    }
    RowStats {
        mean,
        rstd: 1.0 / (var + eps).sqrt(),
    }
}

/// How a kernel forms x̂ = (x − μ)·rstd in its arithmetic type K.
trait Center<K: Float> {
    fn xhat(&self, x: K) -> K;
}

/// μ split as hi + lo in K: `x − hi` is exact for x near μ, and lo keeps the part of μ that
/// K cannot hold (f32 rounds a mean near 1e7 by up to 0.5 — half a standard deviation of
/// `1e7 + N(0, 1)`).
struct SplitMean<K> {
    hi: K,
    lo: K,
    rstd: K,
}

impl<K: Float> SplitMean<K> {
    fn new(mean: f64, rstd: f64) -> Self {
        let hi = K::from_f64(mean);
        SplitMean {
            hi,
            lo: K::from_f64(mean - hi.to_f64()),
            rstd: K::from_f64(rstd),
        }
    }
}

impl<K: Float> Center<K> for SplitMean<K> {
    #[inline(always)]
    fn xhat(&self, x: K) -> K {
        ((x - self.hi) - self.lo) * self.rstd
    }
}

/// The f64 path for rows outside K's safe range: x and μ pre-scaled by a power of two when
/// `x − μ` could overflow f64.
struct ScaledMean {
    scale: f64,
    shift: f64,
    rstd: f64,
}

impl ScaledMean {
    fn new(mean: f64, rstd: f64) -> Self {
        let scale = if rstd < f64::SCALE_RANGE.0 {
            DOWNSCALE
        } else {
            1.0
        };
        ScaledMean {
            scale,
            shift: mean * scale,
            rstd: rstd / scale,
        }
    }
}

impl Center<f64> for ScaledMean {
    #[inline(always)]
    fn xhat(&self, x: f64) -> f64 {
        (x * self.scale - self.shift) * self.rstd
    }
}

/// Whether a row with these statistics can be computed in K (see `Float::SCALE_RANGE` and
/// `Float::MIN_SPLIT_MEAN`); otherwise it takes the f64 path.
#[inline(always)]
pub(crate) fn in_safe_range<K: Float>(mean: f64, rstd: f64) -> bool {
    let (lo, hi) = K::SCALE_RANGE;
    (lo..=hi).contains(&rstd) && (mean == 0.0 || mean.abs() >= K::MIN_SPLIT_MEAN)
}

#[inline(always)]
fn load<T: Element, K: Float>(v: T) -> K {
    K::cast(v.widen())
}

#[inline(always)]
fn store<T: Element, K: Float>(v: K) -> T {
    T::narrow(T::Compute::cast(v))
}

/// Normalizes one row into `y`; returns its statistics.
pub(crate) fn forward_row<T: Element, P: Element>(
    x: &[T],
    weight: Option<&[P]>,
    bias: Option<&[P]>,
    eps: f64,
    y: &mut [T],
    norm: Norm,
) -> RowStats {
    let stats = row_stats(x, eps, norm);
    if in_safe_range::<T::Compute>(stats.mean, stats.rstd) {
        let center = SplitMean::<T::Compute>::new(stats.mean, stats.rstd);
        normalize(x, weight, bias, y, &center);
    } else {
        normalize(x, weight, bias, y, &ScaledMean::new(stats.mean, stats.rstd));
    }
    stats
}

#[inline(always)]
fn normalize<T: Element, P: Element, K: Float, C: Center<K>>(
    x: &[T],
    weight: Option<&[P]>,
    bias: Option<&[P]>,
    y: &mut [T],
    c: &C,
) {
    let xhat = |v: T| c.xhat(load::<T, K>(v));
    let rows = y.iter_mut().zip(x);
    match (weight, bias) {
        (None, None) => rows.for_each(|(y, &x)| *y = store(xhat(x))),
        (Some(w), None) => rows
            .zip(w)
            .for_each(|((y, &x), &w)| *y = store(xhat(x) * load::<P, K>(w))),
        (None, Some(b)) => rows
            .zip(b)
            .for_each(|((y, &x), &b)| *y = store(xhat(x) + load::<P, K>(b))),
        (Some(w), Some(b)) => rows.zip(w).zip(b).for_each(|(((y, &x), &w), &b)| {
            *y = store(xhat(x) * load::<P, K>(w) + load::<P, K>(b))
        }),
    }
}

/// Where the backward pass of one row writes: each output optional.
pub(crate) struct RowGrads<'a, T> {
    pub dx: Option<&'a mut [T]>,
    /// Fused residual add: the upstream gradient of the sum, added to dx.
    pub dsum: Option<&'a [T]>,
    /// f64 partial sums of dγ for the row's block.
    pub dweight: Option<&'a mut [f64]>,
    /// f64 partial sums of dβ for the row's block.
    pub dbias: Option<&'a mut [f64]>,
}

/// Backward pass of one row from its saved `mean` (0 for RMSNorm) and `rstd`.
pub(crate) fn backward_row<T: Element, P: Element>(
    x: &[T],
    dy: &[T],
    weight: Option<&[P]>,
    stats: (f64, f64),
    out: RowGrads<'_, T>,
    norm: Norm,
) {
    BackwardRow::new(x, dy, weight, stats, norm).apply(x, dy, weight, out);
}

/// The constants of a row's backward pass 2, from its pass 1 over the whole row: applied to
/// the whole row ([`backward_row`]) or to one piece of it at a time (long rows, `long.rs`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BackwardRow {
    mean: f64,
    rstd: f64,
    mean_g: f64,
    mean_gx: f64,
}

impl BackwardRow {
    /// Pass 1 of a row from its saved `mean` (0 for RMSNorm) and `rstd`.
    pub(crate) fn new<T: Element, P: Element>(
        x: &[T],
        dy: &[T],
        weight: Option<&[P]>,
        (mean, rstd): (f64, f64),
        norm: Norm,
    ) -> Self {
        let n = x.len() as f64;
        let scale = if rstd < f64::SCALE_RANGE.0 {
            DOWNSCALE
        } else {
            1.0
        };
        let pivot = mean * scale;
        let gamma = |i: usize| weight.map_or(1.0, |w| to_f64(w[i]));
        let [sum_d, sum_g, sum_gd] = lane_sums(x.len(), |i| {
            let d = to_f64(x[i]) * scale - pivot;
            let g = to_f64(dy[i]) * gamma(i);
            [d, g, g * d]
        });
        // RMSNorm has no mean to refine and no mean(g) term: x̂ = x·rstd.
        let delta = if norm.centers() { sum_d / n } else { 0.0 };
        BackwardRow {
            mean: (pivot + delta) / scale,
            rstd,
            mean_g: if norm.centers() { sum_g / n } else { 0.0 },
            mean_gx: (sum_gd - delta * sum_g) * (rstd / scale) / n,
        }
    }

    /// Pass 2 over columns of the row (`x`, `dy`, `weight` and `out` cut alike): dx, and dγ/dβ
    /// added to the partials.
    pub(crate) fn apply<T: Element, P: Element>(
        &self,
        x: &[T],
        dy: &[T],
        weight: Option<&[P]>,
        out: RowGrads<'_, T>,
    ) {
        let BackwardRow {
            mean,
            rstd,
            mean_g,
            mean_gx,
        } = *self;
        if in_safe_range::<T::Compute>(mean, rstd) {
            let center = SplitMean::<T::Compute>::new(mean, rstd);
            backward_apply(x, dy, weight, &center, [rstd, mean_g, mean_gx], out);
        } else {
            let center = ScaledMean::new(mean, rstd);
            backward_apply(x, dy, weight, &center, [rstd, mean_g, mean_gx], out);
        }
    }
}

#[inline(always)]
fn backward_apply<T: Element, P: Element, K: Float, C: Center<K>>(
    x: &[T],
    dy: &[T],
    weight: Option<&[P]>,
    c: &C,
    [rstd, mean_g, mean_gx]: [f64; 3],
    out: RowGrads<'_, T>,
) {
    let xhat = |v: T| c.xhat(load::<T, K>(v));
    if let Some(dx) = out.dx {
        let (rstd, mean_g, mean_gx) =
            (K::from_f64(rstd), K::from_f64(mean_g), K::from_f64(mean_gx));
        for i in 0..dx.len() {
            let g = load::<T, K>(dy[i]) * weight.map_or(K::ONE, |w| load::<P, K>(w[i]));
            let v = rstd * (g - mean_g - xhat(x[i]) * mean_gx);
            // Fused residual: the sum's own upstream gradient flows straight through.
            dx[i] = store(match out.dsum {
                Some(ds) => v + load(ds[i]),
                None => v,
            });
        }
    }
    if let Some(dw) = out.dweight {
        for ((dw, &x), &dy) in dw.iter_mut().zip(x).zip(dy) {
            *dw += to_f64(dy) * xhat(x).to_f64();
        }
    }
    if let Some(db) = out.dbias {
        for (db, &dy) in db.iter_mut().zip(dy) {
            *db += to_f64(dy);
        }
    }
}

/// Normalizes every row of a block (the f64 element type's kernel).
pub(crate) fn forward_block<T: Element, P: Element>(mut block: super::ForwardBlock<'_, T, P>) {
    let cols = block.cols;
    for r in 0..block.rows() {
        let span = r * cols..(r + 1) * cols;
        let (weight, bias, eps, norm) = (block.weight, block.bias, block.eps, block.norm);
        let x = match block.residual.as_mut() {
            Some(res) => {
                let sum = &mut res.sum[span.clone()];
                add_row(&block.x[span.clone()], &res.residual[span.clone()], sum);
                &*sum
            }
            None => &block.x[span.clone()],
        };
        let stats = forward_row(x, weight, bias, eps, &mut block.y[span], norm);
        block.save_stats(r, stats);
    }
}

/// `sum = x + residual`, in the compute type, rounded to the storage type.
pub(crate) fn add_row<T: Element>(x: &[T], residual: &[T], sum: &mut [T]) {
    for ((s, &a), &b) in sum.iter_mut().zip(x).zip(residual) {
        *s = T::narrow(a.widen() + b.widen());
    }
}

/// Backward for every row of a block (the f64 element type's kernel).
pub(crate) fn backward_block<T: Element, P: Element>(block: super::BackwardBlock<'_, T, P>) {
    let super::BackwardBlock {
        norm,
        cols,
        want_dweight,
        want_dbias,
        weight,
        x,
        dy,
        mean,
        rstd,
        mut dx,
        dsum,
        partials,
        ..
    } = block;
    let split = if want_dweight { cols } else { 0 };
    let (dw, db) = partials.split_at_mut(split);
    for r in 0..rstd.len() {
        let span = r * cols..(r + 1) * cols;
        let stats = (mean.map_or(0.0, |m| m[r].to_f64()), rstd[r].to_f64());
        let out = RowGrads {
            dx: dx.as_deref_mut().map(|dx| &mut dx[span.clone()]),
            dsum: dsum.map(|ds| &ds[span.clone()]),
            dweight: want_dweight.then_some(&mut *dw),
            dbias: want_dbias.then_some(&mut *db),
        };
        backward_row(&x[span.clone()], &dy[span], weight, stats, out, norm);
    }
}
