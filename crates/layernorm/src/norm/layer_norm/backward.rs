//! LayerNorm backward: validation, the row kernel over fixed blocks of rows, and the
//! fixed-order reduction of the per-block dγ/dβ partials.

use crate::arch;
use crate::dtype::{Element, Float};
use crate::error::{Operand, Result};
use crate::kernels::BackwardBlock;
use crate::layout::RowsCols;
use crate::norm::{check_len, GradMask, Gradients, GradsMut, StatsRef};
use crate::par::{for_each_block, Blocks, Parallelism};

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
    let shape = RowsCols::from_len(x.len(), normalized_len)?;
    let buffer = |wanted: bool, len: usize| wanted.then(|| arch::filled_vec(len));
    let mut grads = Gradients {
        dx: buffer(mask.input, x.len()),
        dweight: buffer(mask.weight, shape.cols),
        dbias: buffer(mask.bias, shape.cols),
    };
    let out = GradsMut::from_gradients(&mut grads);
    backward_into(dy, x, normalized_len, stats, weight, out, par)?;
    Ok(grads)
}

/// [`backward`] into caller-provided buffers: each of `grads.dx` (shaped like x),
/// `grads.dweight` and `grads.dbias` (one value per element of a row) is filled if present.
///
/// Allocates nothing but, when dγ or dβ is requested, their f64 partial sums (at most 64
/// blocks of `normalized_len` values each, and never more than 8 MiB).
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
    let shape = RowsCols::from_len(x.len(), normalized_len)?;
    let cols = shape.cols;
    check_len(Operand::GradOutput, x.len(), dy.len())?;
    stats.check(shape.rows)?;
    if let Some(w) = weight {
        check_len(Operand::Weight, cols, w.len())?;
    }
    if let Some(dx) = &grads.dx {
        check_len(Operand::GradInput, x.len(), dx.len())?;
    }
    if let Some(dw) = &grads.dweight {
        check_len(Operand::GradWeight, cols, dw.len())?;
    }
    if let Some(db) = &grads.dbias {
        check_len(Operand::GradBias, cols, db.len())?;
    }

    let want_dw = grads.dweight.is_some();
    let want_db = grads.dbias.is_some();
    let partial_len = cols * (usize::from(want_dw) + usize::from(want_db));
    let blocks = if partial_len > 0 {
        Blocks::for_reduction(shape.rows, cols, partial_len / cols)
    } else {
        Blocks::for_map(shape.rows, cols)
    };
    let mut partials = vec![0.0f64; blocks.count() * partial_len];
    let work = BackwardBlock {
        cols,
        block_rows: blocks.block_rows,
        partial_len,
        want_dweight: want_dw,
        want_dbias: want_db,
        weight,
        x,
        dy,
        mean: stats.mean,
        rstd: stats.rstd,
        dx: grads.dx,
        partials: &mut partials,
    };
    let isa = arch::active();
    for_each_block(par, x.len(), blocks, work, &|block, _| {
        T::backward_block(isa, block)
    });

    // Combine the block partials in block order, into the first block's (so every column is
    // p0 + p1 + p2 + …, whatever the threads): the result does not depend on threads.
    let first_len = partial_len.min(partials.len());
    let (first, rest) = partials.split_at_mut(first_len);
    for block in rest.chunks_exact(partial_len.max(1)) {
        for (acc, v) in first.iter_mut().zip(block) {
            *acc += v;
        }
    }
    let narrow = |v: &f64| T::narrow(T::Compute::from_f64(*v));
    let (dw_sum, db_sum) = first.split_at(if want_dw { cols } else { 0 });
    if let Some(dw) = grads.dweight {
        dw.iter_mut().zip(dw_sum).for_each(|(o, v)| *o = narrow(v));
    }
    if let Some(db) = grads.dbias {
        db.iter_mut().zip(db_sum).for_each(|(o, v)| *o = narrow(v));
    }
    Ok(())
}
