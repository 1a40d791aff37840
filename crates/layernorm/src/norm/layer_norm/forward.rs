//! LayerNorm forward: validation, then the row kernel over a deterministic split of rows.

use crate::dtype::{Element, Float};
use crate::error::{Operand, Result};
use crate::kernels::layer_norm::forward_row;
use crate::layout::RowsCols;
use crate::norm::{check_eps, check_len, Affine, Stats, StatsMut};
use crate::par::{for_each_block, split_opt, Blocks, Parallelism, RowSplit};

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
    let shape = RowsCols::from_len(x.len(), normalized_len)?;
    let mut y = vec![T::default(); x.len()];
    let mut stats = Stats {
        mean: vec![T::Compute::ZERO; shape.rows],
        rstd: vec![T::Compute::ZERO; shape.rows],
    };
    forward_into(
        x,
        normalized_len,
        affine,
        eps,
        &mut y,
        Some(stats.as_mut()),
        par,
    )?;
    Ok((y, stats))
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
    let shape = RowsCols::from_len(x.len(), normalized_len)?;
    check_eps::<T::Compute>(eps)?;
    affine.check(shape.cols)?;
    check_len(Operand::Output, x.len(), y.len())?;
    if let Some(s) = &stats {
        s.check(shape.rows)?;
    }
    let (mean, rstd) = match stats {
        Some(s) => (Some(s.mean), Some(s.rstd)),
        None => (None, None),
    };
    let work = Rows {
        cols: shape.cols,
        x,
        y,
        mean,
        rstd,
    };
    let kernel = |mut rows: Rows<'_, T>, _block: usize| {
        for r in 0..rows.x.len() / rows.cols {
            let span = r * rows.cols..(r + 1) * rows.cols;
            let stats = forward_row(
                &rows.x[span.clone()],
                affine.weight,
                affine.bias,
                eps,
                &mut rows.y[span],
            );
            if let Some(m) = rows.mean.as_deref_mut() {
                m[r] = T::Compute::from_f64(stats.mean);
            }
            if let Some(s) = rows.rstd.as_deref_mut() {
                s[r] = T::Compute::from_f64(stats.rstd);
            }
        }
    };
    let blocks = Blocks::for_map(shape.rows, shape.cols);
    for_each_block(par, x.len(), blocks, work, &kernel);
    Ok(())
}

/// A range of rows of the forward problem.
struct Rows<'a, T: Element> {
    cols: usize,
    x: &'a [T],
    y: &'a mut [T],
    mean: Option<&'a mut [T::Compute]>,
    rstd: Option<&'a mut [T::Compute]>,
}

impl<T: Element> RowSplit for Rows<'_, T> {
    fn split_at(self, at: usize) -> (Self, Self) {
        let (x0, x1) = self.x.split_at(at * self.cols);
        let (y0, y1) = self.y.split_at_mut(at * self.cols);
        let (m0, m1) = split_opt(self.mean, at);
        let (s0, s1) = split_opt(self.rstd, at);
        let cols = self.cols;
        (
            Rows {
                cols,
                x: x0,
                y: y0,
                mean: m0,
                rstd: s0,
            },
            Rows {
                cols,
                x: x1,
                y: y1,
                mean: m1,
                rstd: s1,
            },
        )
    }
}
