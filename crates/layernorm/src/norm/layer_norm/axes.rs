//! LayerNorm over any set of axes (Keras' `LayerNormalization(axis=[1, 3])`), without the
//! caller transposing: the normalized axes are brought to the end (a tiled copy), the rows
//! go through the ordinary kernels, and the result is copied back. Normalized axes that are
//! already trailing take no copy at all.

use crate::dtype::Element;
use crate::error::{Operand, Result};
use crate::layout::AxesLayout;
use crate::norm::layer_norm::{backward, forward};
use crate::norm::{check_len, Affine, GradMask, Gradients, Stats, StatsRef};
use crate::par::Parallelism;

/// LayerNorm of `x` (of shape `shape`) over `axes` — any axes, in any order, negative ones
/// counting from the end. γ/β have the normalized axes' sizes in increasing axis order
/// ([`AxesLayout::param_shape`]); the statistics have one value per index of the other axes,
/// in their order ([`AxesLayout::stats_shape`]).
///
/// ```
/// use layernorm::{layer_norm, Affine, Parallelism};
///
/// // (2, 3) normalized over axis 0: each column on its own.
/// let x = [1.0f32, 10.0, 100.0, 3.0, 30.0, 300.0];
/// let (y, stats) = layer_norm::forward_axes(&x, &[2, 3], &[0], Affine::none(), 1e-5, Parallelism::Rayon)?;
/// assert_eq!(stats.mean, [2.0, 20.0, 200.0]);
/// assert!((y[0] + 1.0).abs() < 1e-4 && (y[5] - 1.0).abs() < 1e-6);
/// # Ok::<(), layernorm::Error>(())
/// ```
///
/// # Errors
/// Those of [`AxesLayout::new`], [`Error::LengthMismatch`](crate::Error::LengthMismatch) when
/// x does not hold `shape`'s elements, and those of [`forward`].
pub fn forward_axes<T: Element>(
    x: &[T],
    shape: &[usize],
    axes: &[isize],
    affine: Affine<'_, T>,
    eps: f64,
    par: Parallelism,
) -> Result<(Vec<T>, Stats<T::Compute>)> {
    let layout = AxesLayout::new(shape, axes)?;
    check_len(Operand::Input, layout.rows_cols.len(), x.len())?;
    let cols = layout.rows_cols.cols;
    if layout.is_trailing() {
        return forward(x, cols, affine, eps, par);
    }
    let xp = permuted(&layout, x);
    let (yp, stats) = forward(&xp, cols, affine, eps, par)?;
    Ok((restored(&layout, &yp), stats))
}

/// Backward of [`forward_axes`], from its saved statistics.
///
/// # Errors
/// As [`forward_axes`], and those of [`backward`].
#[allow(clippy::too_many_arguments)]
pub fn backward_axes<T: Element>(
    dy: &[T],
    x: &[T],
    shape: &[usize],
    axes: &[isize],
    stats: StatsRef<'_, T::Compute>,
    weight: Option<&[T]>,
    mask: GradMask,
    par: Parallelism,
) -> Result<Gradients<T>> {
    let layout = AxesLayout::new(shape, axes)?;
    check_len(Operand::Input, layout.rows_cols.len(), x.len())?;
    check_len(Operand::GradOutput, layout.rows_cols.len(), dy.len())?;
    let cols = layout.rows_cols.cols;
    if layout.is_trailing() {
        return backward(dy, x, cols, stats, weight, mask, par);
    }
    let (dyp, xp) = (permuted(&layout, dy), permuted(&layout, x));
    let mut grads = backward(&dyp, &xp, cols, stats, weight, mask, par)?;
    grads.dx = grads.dx.map(|dx| restored(&layout, &dx));
    Ok(grads)
}

fn permuted<T: Element>(layout: &AxesLayout, src: &[T]) -> Vec<T> {
    let mut out = vec![T::default(); src.len()];
    layout.to_rows(src, &mut out);
    out
}

fn restored<T: Element>(layout: &AxesLayout, src: &[T]) -> Vec<T> {
    let mut out = vec![T::default(); src.len()];
    layout.restore_rows(src, &mut out);
    out
}
