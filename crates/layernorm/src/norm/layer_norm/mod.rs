//! Layer Normalization over the trailing dimensions of a tensor.
//!
//! A contiguous input is seen as `rows × cols`, `cols` being the product of the normalized
//! dims. Each row is normalized on its own:
//!
//! ```text
//! μ = mean(x)    σ² = mean((x − μ)²)    rstd = 1/√(σ² + ε)    x̂ = (x − μ)·rstd
//! y = x̂·γ + β
//! ```
//!
//! and the backward pass, from the saved `mean` and `rstd`, with `g = dy·γ`:
//!
//! ```text
//! dx = rstd·(g − mean(g) − x̂·mean(g·x̂))    dγ = Σ_rows dy·x̂    dβ = Σ_rows dy
//! ```
//!
//! Guarantees, on every input:
//! - **Exact statistics.** The mean and variance are accumulated in f64 by a corrected
//!   two-pass algorithm (never `E[x²] − E[x]²`), and `x − μ` keeps the part of μ that f32
//!   cannot hold. For f32 input `x = c + N(0, 1)`, the normwise error of y against an f64
//!   reference is below 1e-6 for any offset c.
//! - **Determinism.** Every output — y, the statistics, dx, dγ and dβ — is bitwise identical
//!   whatever the number of threads, and a row's outputs do not depend on the other rows of
//!   the batch (batch invariance).
//! - **Containment.** Finite rows give finite outputs (a constant row gives exactly β); a NaN
//!   or ±Inf in a row makes that row's outputs NaN and touches no other row (dγ and dβ, which
//!   sum over rows, do pick it up).
//!
//! These functions take flat slices and the row length (`normalized_len`); the [`LayerNorm`]
//! layer takes shapes and owns γ and β.
//!
//! [`LayerNorm`]: crate::LayerNorm

mod axes;
mod backward;
mod forward;
mod layer;
mod mixed;

use crate::dtype::Element;
use crate::error::Result;
use crate::kernels::Norm;
use crate::norm::residual::{self, ResidualOut, ResidualOutput, Upstream};
use crate::norm::{Affine, GradMask, Gradients, StatsRef};
use crate::par::Parallelism;

pub use axes::{backward_axes, forward_axes};
pub use backward::{backward, backward_into};
pub use forward::{forward, forward_into};
pub use layer::{LayerNorm, LayerNormConfig};
pub use mixed::{backward_mixed, forward_mixed, forward_mixed_into};

/// ε used when none is given, as in PyTorch's `nn.LayerNorm` (Keras uses 1e-3).
pub const DEFAULT_EPS: f64 = 1e-5;

/// Fused residual add + LayerNorm: `sum = x + residual`, `y = LayerNorm(sum)`, both returned,
/// in one pass over memory; `sum` is rounded to `T` before it is normalized, so `y` is exactly
/// the LayerNorm of the returned `sum`.
///
/// ```
/// use layernorm::{layer_norm, Affine, Parallelism};
///
/// let x = [1.0f32, 2.0, 3.0, 4.0];
/// let r = [0.5f32, 0.5, -1.0, 1.0];
/// let out = layer_norm::forward_residual(&x, &r, 2, Affine::none(), 1e-5, Parallelism::Sequential)?;
/// assert_eq!(out.sum, vec![1.5, 2.5, 2.0, 5.0]);
/// assert!(out.y[0] < 0.0 && out.y[1] > 0.0);
/// # Ok::<(), layernorm::Error>(())
/// ```
///
/// # Errors
/// As [`forward`], plus [`Error::LengthMismatch`](crate::Error::LengthMismatch) for a
/// `residual` not shaped like `x`.
pub fn forward_residual<T: Element>(
    x: &[T],
    residual: &[T],
    normalized_len: usize,
    affine: Affine<'_, T>,
    eps: f64,
    par: Parallelism,
) -> Result<ResidualOutput<T, T::Compute>> {
    residual::forward(Norm::Layer, x, residual, normalized_len, affine, eps, par)
}

/// [`forward_residual`] into caller-provided buffers, allocating nothing.
///
/// # Errors
/// As [`forward_residual`], plus length errors for the output buffers.
pub fn forward_residual_into<T: Element>(
    x: &[T],
    residual: &[T],
    normalized_len: usize,
    affine: Affine<'_, T>,
    eps: f64,
    out: ResidualOut<'_, T, T::Compute>,
    par: Parallelism,
) -> Result<()> {
    residual::forward_into(
        Norm::Layer,
        x,
        residual,
        normalized_len,
        affine,
        eps,
        out,
        par,
    )
}

/// Backward of [`forward_residual`]: `dx = LayerNorm'(dy) + dsum` (also the residual's
/// gradient), dγ and dβ, from the forward's `sum` and statistics.
///
/// # Errors
/// As [`backward`], plus a length error for `dsum`.
pub fn backward_residual<T: Element>(
    upstream: Upstream<'_, T>,
    sum: &[T],
    normalized_len: usize,
    stats: StatsRef<'_, T::Compute>,
    weight: Option<&[T]>,
    mask: GradMask,
    par: Parallelism,
) -> Result<Gradients<T>> {
    let (mean, rstd) = (Some(stats.mean), stats.rstd);
    residual::backward(
        Norm::Layer,
        upstream,
        sum,
        normalized_len,
        mean,
        rstd,
        weight,
        mask,
        par,
    )
}
