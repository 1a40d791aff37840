//! LayerNorm forward: the public entry points over the shared row driver.

use crate::dtype::Element;
use crate::error::Result;
use crate::kernels::Norm;
use crate::norm::rows;
use crate::norm::{Affine, Stats, StatsMut};
use crate::par::Parallelism;

/// Normalizes `x`, viewed as rows of `normalized_len` elements, and returns `y` with the saved
/// statistics (one mean and one rstd per row).
///
/// ```
/// use layernorm::{layer_norm, Affine, Parallelism};
///
/// // The seed's "I love AI": three tokens with 2-dim embeddings.
/// let x = [0.1f32, 0.5, 0.3, 0.8, 0.9, 0.4];
/// let (y, stats) = layer_norm::forward(&x, 2, Affine::none(), 1e-5, Parallelism::Sequential)?;
/// assert!((stats.mean[0] - 0.3).abs() < 1e-7);
/// assert!((y[0] + 1.0).abs() < 1e-3 && (y[1] - 1.0).abs() < 1e-3);
/// # Ok::<(), layernorm::Error>(())
/// ```
///
/// # Errors
/// [`Error::ZeroSizeDim`] for an empty `x` or `normalized_len == 0`, [`Error::RaggedInput`]
/// if `x.len()` is not a multiple of `normalized_len`, [`Error::LengthMismatch`] for γ or β
/// not of length `normalized_len`, [`Error::InvalidEpsilon`] unless ε is finite and at least the
/// smallest normal number of the compute type (`f32::MIN_POSITIVE` for f32).
///
/// [`Error::ZeroSizeDim`]: crate::Error::ZeroSizeDim
/// [`Error::RaggedInput`]: crate::Error::RaggedInput
/// [`Error::LengthMismatch`]: crate::Error::LengthMismatch
/// [`Error::InvalidEpsilon`]: crate::Error::InvalidEpsilon
pub fn forward<T: Element>(
    x: &[T],
    normalized_len: usize,
    affine: Affine<'_, T>,
    eps: f64,
    par: Parallelism,
) -> Result<(Vec<T>, Stats<T::Compute>)> {
    rows::forward_alloc(Norm::Layer, x, normalized_len, affine, eps, par)
}

/// [`forward`] into caller-provided buffers, allocating nothing: `y` has `x.len()` elements,
/// `stats` (optional) one mean and one rstd per row.
///
/// # Errors
/// As [`forward`], plus [`Error::LengthMismatch`] for `y` or `stats` of the wrong length.
///
/// [`Error::LengthMismatch`]: crate::Error::LengthMismatch
pub fn forward_into<T: Element>(
    x: &[T],
    normalized_len: usize,
    affine: Affine<'_, T>,
    eps: f64,
    y: &mut [T],
    stats: Option<StatsMut<'_, T::Compute>>,
    par: Parallelism,
) -> Result<()> {
    rows::forward_stats(Norm::Layer, x, normalized_len, affine, eps, y, stats, par)
}
