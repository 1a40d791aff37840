//! Fused residual add + normalization, as Transformer blocks use it (the public entry points
//! are `layer_norm::forward_residual` and `rms_norm::forward_residual`, with their backward):
//!
//! ```text
//! sum = x + residual          y = LayerNorm(sum)   or   y = RMSNorm(sum)
//! ```
//!
//! returning both `sum` (the next residual stream) and `y`, in one pass over memory: each row
//! of the sum is formed, written, and normalized while it is still in cache. `sum` is rounded
//! to the element type before it is normalized, so `y` is exactly the normalization of the
//! returned `sum` — the same bits as the two steps done apart.
//!
//! Backward takes the upstream gradients of both outputs and returns
//! `dx = norm'(dy) + dsum`, which is also the residual's gradient, plus dγ and dβ.

use crate::arch;
use crate::dtype::{Element, Float};
use crate::error::Result;
use crate::kernels::{Norm, Residual};
use crate::layout::RowsCols;
use crate::norm::rows::{self, BackwardJob, ForwardJob};
use crate::norm::{Affine, GradMask, Gradients, GradsMut, Stats, StatsMut};
use crate::par::Parallelism;

/// Where a fused forward writes: the sum, y, and (optionally) the statistics.
#[derive(Debug)]
pub struct ResidualOut<'a, T, S> {
    /// `x + residual`, shaped like x.
    pub sum: &'a mut [T],
    /// The normalized sum, shaped like x.
    pub y: &'a mut [T],
    /// Per-row statistics (for RMSNorm, `mean` is not written and may be empty).
    pub stats: Option<StatsMut<'a, S>>,
}

/// The owned results of a fused forward.
#[derive(Clone, Debug, PartialEq)]
pub struct ResidualOutput<T, S> {
    /// `x + residual`.
    pub sum: Vec<T>,
    /// The normalized sum.
    pub y: Vec<T>,
    /// Per-row statistics (`mean` is empty for RMSNorm).
    pub stats: Stats<S>,
}

/// The upstream gradients of a fused op's two outputs.
#[derive(Clone, Copy, Debug)]
pub struct Upstream<'a, T> {
    /// ∂L/∂y.
    pub dy: &'a [T],
    /// ∂L/∂sum (the residual stream's own gradient), if the sum is used downstream.
    pub dsum: Option<&'a [T]>,
}

/// `sum = x + residual; y = norm(sum)` into caller buffers (for RMSNorm, `affine.bias` is
/// `None`).
#[allow(clippy::too_many_arguments)] // the public wrappers fix `norm` and take seven
pub(crate) fn forward_into<T: Element>(
    norm: Norm,
    x: &[T],
    residual: &[T],
    normalized_len: usize,
    affine: Affine<'_, T>,
    eps: f64,
    out: ResidualOut<'_, T, T::Compute>,
    par: Parallelism,
) -> Result<()> {
    let (mean, rstd) = match out.stats {
        Some(s) if norm == Norm::Layer => (Some(s.mean), Some(s.rstd)),
        Some(s) => (None, Some(s.rstd)),
        None => (None, None),
    };
    let residual = Some(Residual {
        residual,
        sum: out.sum,
    });
    let y = out.y;
    let job = ForwardJob {
        norm,
        x,
        residual,
        normalized_len,
        affine,
        eps,
        y,
        mean,
        rstd,
    };
    rows::forward(job, par)
}

/// `sum = x + residual; y = norm(sum)`, allocating the outputs.
pub(crate) fn forward<T: Element>(
    norm: Norm,
    x: &[T],
    residual: &[T],
    normalized_len: usize,
    affine: Affine<'_, T>,
    eps: f64,
    par: Parallelism,
) -> Result<ResidualOutput<T, T::Compute>> {
    let shape = RowsCols::from_len(x.len(), normalized_len)?;
    let mut sum = arch::filled_vec(x.len());
    let mut y = arch::filled_vec(x.len());
    let zero = T::Compute::ZERO;
    let mean_rows = if norm == Norm::Layer { shape.rows } else { 0 };
    let mut stats = Stats {
        mean: vec![zero; mean_rows],
        rstd: vec![zero; shape.rows],
    };
    let out = ResidualOut {
        sum: &mut sum,
        y: &mut y,
        stats: Some(stats.as_mut()),
    };
    forward_into(norm, x, residual, normalized_len, affine, eps, out, par)?;
    Ok(ResidualOutput { sum, y, stats })
}

/// Gradients of the fused op: `dx = norm'(dy) + dsum` (also the residual's gradient), dγ,
/// dβ, from the forward's `sum` and statistics (`mean` is `None` for RMSNorm).
#[allow(clippy::too_many_arguments)] // the public wrappers fix `norm` and take seven
pub(crate) fn backward<T: Element>(
    norm: Norm,
    upstream: Upstream<'_, T>,
    sum: &[T],
    normalized_len: usize,
    mean: Option<&[T::Compute]>,
    rstd: &[T::Compute],
    weight: Option<&[T]>,
    mask: GradMask,
    par: Parallelism,
) -> Result<Gradients<T>> {
    let job = BackwardJob {
        norm,
        dy: upstream.dy,
        x: sum,
        normalized_len,
        mean,
        rstd,
        weight,
        dsum: upstream.dsum,
        grads: GradsMut::default(),
    };
    rows::backward_alloc(job, mask, par)
}
