//! LayerNorm backward: the public entry points over the shared row driver.

use crate::dtype::Element;
use crate::error::Result;
use crate::norm::rows;
use crate::norm::{GradMask, Gradients, GradsMut, StatsRef};
use crate::par::Parallelism;

/// Gradients of LayerNorm with respect to x, γ and β, from the upstream gradient `dy`, the
/// input `x`, the statistics saved by the forward pass and γ (`None` if the forward had none).
/// `mask` selects which gradients to compute; the others come back as `None`.
///
/// The saved mean may have been rounded (to f32, say): the exact mean is recovered from `x`, so
/// the gradients are accurate even when |mean| ≫ std.
///
/// ```
/// use layernorm::{layer_norm, Affine, GradMask, Parallelism};
///
/// let x = [0.1f64, 0.5, 0.3, 0.8];
/// let gamma = [2.0, 0.5];
/// let par = Parallelism::Sequential;
/// let (_y, stats) = layer_norm::forward(&x, 2, Affine::scale(&gamma), 1e-5, par)?;
/// let dy = [1.0, 0.0, 0.0, 1.0];
/// let grads = layer_norm::backward(&dy, &x, 2, stats.as_ref(), Some(&gamma), GradMask::ALL, par)?;
/// let dbias = grads.dbias.unwrap();
/// assert_eq!(dbias, vec![1.0, 1.0]); // dβ = Σ_rows dy
/// # Ok::<(), layernorm::Error>(())
/// ```
///
/// # Errors
/// As [`forward`](super::forward), plus [`Error::LengthMismatch`] if `dy` is not shaped like
/// `x` or the statistics do not have one value per row.
///
/// [`Error::LengthMismatch`]: crate::Error::LengthMismatch
pub fn backward<T: Element>(
    dy: &[T],
    x: &[T],
    normalized_len: usize,
    stats: StatsRef<'_, T::Compute>,
    weight: Option<&[T]>,
    mask: GradMask,
    par: Parallelism,
) -> Result<Gradients<T>> {
    let job = rows::plain_backward(
        dy,
        x,
        normalized_len,
        (Some(stats.mean), stats.rstd),
        weight,
        GradsMut::default(),
    );
    rows::backward_alloc(job, mask, par)
}

/// [`backward`] into caller-provided buffers: each of `grads.dx` (shaped like x),
/// `grads.dweight` and `grads.dbias` (one value per element of a row) is filled if present.
///
/// Allocates nothing but, when dγ or dβ is requested, their f64 partial sums: at most 64
/// blocks of `normalized_len` values each and about 8 MiB — or a single block (16 bytes per
/// column) for rows longer than 2^19.
///
/// # Errors
/// As [`backward`], plus [`Error::LengthMismatch`] for an output buffer of the wrong length.
///
/// [`Error::LengthMismatch`]: crate::Error::LengthMismatch
pub fn backward_into<T: Element>(
    dy: &[T],
    x: &[T],
    normalized_len: usize,
    stats: StatsRef<'_, T::Compute>,
    weight: Option<&[T]>,
    grads: GradsMut<'_, T>,
    par: Parallelism,
) -> Result<()> {
    let job = rows::plain_backward(
        dy,
        x,
        normalized_len,
        (Some(stats.mean), stats.rstd),
        weight,
        grads,
    );
    rows::backward(job, par)
}
