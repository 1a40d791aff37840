//! RMSNorm over the trailing dimensions: LayerNorm without the centring, as in LLaMA-style
//! models (PyTorch `F.rms_norm`, ONNX `RMSNormalization`).
//!
//! ```text
//! rstd = 1/√(mean(x²) + ε)    x̂ = x·rstd    y = x̂·γ
//! dx = rstd·(g − x̂·mean(g·x̂)),  g = dy·γ        dγ = Σ_rows dy·x̂
//! ```
//!
//! Same kernels, numerics and guarantees as [`layer_norm`](crate::layer_norm): mean(x²) is
//! accumulated in f64 (exact squares of f32 inputs, rescaled for f64 rows that would
//! overflow), outputs are bitwise identical across thread counts and batch sizes, NaN/Inf stay
//! in their row. The saved statistic is `rstd` alone (one per row).
//!
//! Default ε: 1e-5 here ([`DEFAULT_EPS`], ONNX's default and that of most LLaMA checkpoints).
//! PyTorch's `F.rms_norm(eps=None)` uses `torch.finfo(x.dtype).eps` instead; pass it explicitly
//! to match (1.19e-7 for f32).

use crate::dtype::Element;
use crate::error::Result;
use crate::kernels::{Norm, ParamOf};
use crate::norm::residual::{self, ResidualOutput, Upstream};
use crate::norm::rows::{self, ForwardJob};
use crate::norm::{Affine, GradMask, Gradients, GradsMut};
use crate::par::Parallelism;

/// ε used when none is given (ONNX `RMSNormalization`'s default).
pub const DEFAULT_EPS: f64 = 1e-5;

/// RMS-normalizes `x`, viewed as rows of `normalized_len` elements, scaling by `weight` (γ)
/// if given; returns `y` and the per-row `rstd = 1/√(mean(x²) + ε)`.
///
/// ```
/// use layernorm::{rms_norm, Parallelism};
///
/// let x = [3.0f32, 4.0]; // mean(x²) = 12.5
/// let (y, rstd) = rms_norm::forward(&x, 2, None, 1e-5, Parallelism::Sequential)?;
/// assert!((rstd[0] - 1.0 / 12.5f32.sqrt()).abs() < 1e-6);
/// assert!((y[0] - 3.0 / 12.5f32.sqrt()).abs() < 1e-6);
/// # Ok::<(), layernorm::Error>(())
/// ```
///
/// # Errors
/// As [`layer_norm::forward`](crate::layer_norm::forward).
pub fn forward<T: Element>(
    x: &[T],
    normalized_len: usize,
    weight: Option<&[T]>,
    eps: f64,
    par: Parallelism,
) -> Result<(Vec<T>, Vec<T::Compute>)> {
    let affine = Affine { weight, bias: None };
    let (y, stats) = rows::forward_alloc(Norm::Rms, x, normalized_len, affine, eps, par)?;
    Ok((y, stats.rstd))
}

/// [`forward`] into caller-provided buffers, allocating nothing.
///
/// # Errors
/// As [`forward`], plus [`Error::LengthMismatch`](crate::Error::LengthMismatch) for `y` or
/// `rstd` of the wrong length.
pub fn forward_into<T: Element>(
    x: &[T],
    normalized_len: usize,
    weight: Option<&[T]>,
    eps: f64,
    y: &mut [T],
    rstd: Option<&mut [T::Compute]>,
    par: Parallelism,
) -> Result<()> {
    let affine = Affine { weight, bias: None };
    let job = ForwardJob {
        norm: Norm::Rms,
        x,
        residual: None,
        normalized_len,
        affine,
        eps,
        y,
        mean: None,
        rstd,
    };
    rows::forward(job, par)
}

/// Gradients of RMSNorm for `x` and γ (as `mask` selects; `mask.bias` is ignored and `dbias`
/// comes back `None`), from the upstream gradient and the saved `rstd`.
///
/// # Errors
/// As [`layer_norm::backward`](crate::layer_norm::backward).
pub fn backward<T: Element>(
    dy: &[T],
    x: &[T],
    normalized_len: usize,
    rstd: &[T::Compute],
    weight: Option<&[T]>,
    mask: GradMask,
    par: Parallelism,
) -> Result<Gradients<T>> {
    let job = rows::plain_backward(
        dy,
        x,
        normalized_len,
        (None, rstd),
        weight,
        GradsMut::default(),
    );
    rows::backward_alloc(job, mask, par)
}

/// [`backward`] into caller-provided buffers (`grads.dbias`, if given, receives Σ_rows dy).
///
/// # Errors
/// As [`backward`], plus [`Error::LengthMismatch`](crate::Error::LengthMismatch) for an
/// output buffer of the wrong length.
pub fn backward_into<T: Element>(
    dy: &[T],
    x: &[T],
    normalized_len: usize,
    rstd: &[T::Compute],
    weight: Option<&[T]>,
    grads: GradsMut<'_, T>,
    par: Parallelism,
) -> Result<()> {
    let job = rows::plain_backward(dy, x, normalized_len, (None, rstd), weight, grads);
    rows::backward(job, par)
}

/// Fused residual add + RMSNorm: `sum = x + residual`, `y = RMSNorm(sum)`, both returned, in
/// one pass over memory; `stats.mean` comes back empty.
///
/// # Errors
/// As [`forward`], plus a length error for a `residual` not shaped like `x`.
pub fn forward_residual<T: Element>(
    x: &[T],
    residual: &[T],
    normalized_len: usize,
    weight: Option<&[T]>,
    eps: f64,
    par: Parallelism,
) -> Result<ResidualOutput<T, T::Compute>> {
    let affine = Affine { weight, bias: None };
    residual::forward(Norm::Rms, x, residual, normalized_len, affine, eps, par)
}

/// Backward of [`forward_residual`]: `dx = RMSNorm'(dy) + dsum` (also the residual's
/// gradient) and dγ, from the forward's `sum` and `rstd`.
///
/// # Errors
/// As [`backward`], plus a length error for `dsum`.
pub fn backward_residual<T: Element>(
    upstream: Upstream<'_, T>,
    sum: &[T],
    normalized_len: usize,
    rstd: &[T::Compute],
    weight: Option<&[T]>,
    mask: GradMask,
    par: Parallelism,
) -> Result<Gradients<T>> {
    let mask = GradMask {
        bias: false,
        ..mask
    };
    residual::backward(
        Norm::Rms,
        upstream,
        sum,
        normalized_len,
        None,
        rstd,
        weight,
        mask,
        par,
    )
}

/// [`forward`] with an f32 γ for f16 or bf16 (or f32) data (mixed precision).
///
/// # Errors
/// As [`forward`].
pub fn forward_mixed<T: Element<Compute = f32>>(
    x: &[T],
    normalized_len: usize,
    weight: Option<&[f32]>,
    eps: f64,
    par: Parallelism,
) -> Result<(Vec<T>, Vec<f32>)>
where
    f32: ParamOf<T>,
{
    let affine = Affine { weight, bias: None };
    let (y, stats) = rows::forward_alloc(Norm::Rms, x, normalized_len, affine, eps, par)?;
    Ok((y, stats.rstd))
}

/// [`backward`] with an f32 γ for f16 or bf16 (or f32) data; dγ comes back in f32.
///
/// # Errors
/// As [`backward`].
pub fn backward_mixed<T: Element<Compute = f32>>(
    dy: &[T],
    x: &[T],
    normalized_len: usize,
    rstd: &[f32],
    weight: Option<&[f32]>,
    mask: GradMask,
    par: Parallelism,
) -> Result<Gradients<T, f32>>
where
    f32: ParamOf<T>,
{
    let job = rows::plain_backward(
        dy,
        x,
        normalized_len,
        (None, rstd),
        weight,
        GradsMut::default(),
    );
    rows::backward_alloc(job, mask, par)
}
