//! The drivers shared by every row-wise normalization (LayerNorm, RMSNorm): validate the
//! buffers, cut the rows into deterministic blocks, run the kernel of the element type on
//! each, and combine the dγ/dβ partials in a fixed order.

use crate::arch;
use crate::dtype::{Element, Float};
use crate::error::{Operand, Result};
use crate::kernels::{round_into, BackwardBlock, ForwardBlock, Norm, ParamOf, Residual, LONG_COLS};
use crate::layout::RowsCols;
use crate::norm::{check_eps, check_len, Affine, GradMask, Gradients, GradsMut, Stats, StatsMut};
use crate::par::{for_each_block, Blocks, Parallelism};

/// A forward call, before validation.
pub(crate) struct ForwardJob<'a, T: Element, P = T> {
    pub norm: Norm,
    pub x: &'a [T],
    /// Fused residual add: normalize `x + residual`, written to the sum buffer.
    pub residual: Option<Residual<'a, T>>,
    pub normalized_len: usize,
    pub affine: Affine<'a, P>,
    pub eps: f64,
    pub y: &'a mut [T],
    /// Per-row means to fill (LayerNorm only) and per-row rstd.
    pub mean: Option<&'a mut [T::Compute]>,
    pub rstd: Option<&'a mut [T::Compute]>,
}

pub(crate) fn forward<T: Element, P: ParamOf<T>>(
    job: ForwardJob<'_, T, P>,
    par: Parallelism,
) -> Result<()> {
    let ForwardJob {
        norm,
        x,
        residual,
        normalized_len,
        affine,
        eps,
        y,
        mean,
        rstd,
    } = job;
    let shape = RowsCols::from_len(x.len(), normalized_len)?;
    check_eps::<T::Compute>(eps)?;
    affine.check(shape.cols)?;
    check_len(Operand::Output, x.len(), y.len())?;
    if let Some(res) = &residual {
        check_len(Operand::Residual, x.len(), res.residual.len())?;
        check_len(Operand::Sum, x.len(), res.sum.len())?;
    }
    if let Some(m) = &mean {
        check_len(Operand::Mean, shape.rows, m.len())?;
    }
    if let Some(r) = &rstd {
        check_len(Operand::Rstd, shape.rows, r.len())?;
    }
    let work = ForwardBlock {
        norm,
        cols: shape.cols,
        eps,
        stream: arch::stream_output(y, true),
        weight: affine.weight,
        bias: affine.bias,
        x,
        residual,
        y,
        mean,
        rstd,
    };
    T::forward(arch::active(), par, work);
    Ok(())
}

/// A backward call, before validation.
pub(crate) struct BackwardJob<'a, T: Element, P = T> {
    pub norm: Norm,
    pub dy: &'a [T],
    pub x: &'a [T],
    pub normalized_len: usize,
    /// Saved per-row means (LayerNorm only) and rstd.
    pub mean: Option<&'a [T::Compute]>,
    pub rstd: &'a [T::Compute],
    pub weight: Option<&'a [P]>,
    /// Fused residual add: the upstream gradient of the sum, added to dx.
    pub dsum: Option<&'a [T]>,
    pub grads: GradsMut<'a, T, P>,
}

pub(crate) fn backward<T: Element, P: ParamOf<T>>(
    job: BackwardJob<'_, T, P>,
    par: Parallelism,
) -> Result<()> {
    let BackwardJob {
        norm,
        dy,
        x,
        normalized_len,
        mean,
        rstd,
        weight,
        dsum,
        grads,
    } = job;
    let shape = RowsCols::from_len(x.len(), normalized_len)?;
    let cols = shape.cols;
    check_len(Operand::GradOutput, x.len(), dy.len())?;
    if let Some(ds) = dsum {
        check_len(Operand::GradSum, x.len(), ds.len())?;
    }
    if let Some(m) = mean {
        check_len(Operand::Mean, shape.rows, m.len())?;
    }
    check_len(Operand::Rstd, shape.rows, rstd.len())?;
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
    // Long rows: one block, cut into pieces of columns, writing dγ/dβ itself (see `forward`).
    let long = T::LONG_ROWS && cols >= LONG_COLS && dsum.is_none();
    let partial_len = if long {
        0
    } else {
        cols * (usize::from(want_dw) + usize::from(want_db))
    };
    let blocks = if long {
        Blocks::single(shape.rows)
    } else if partial_len > 0 {
        Blocks::for_reduction(shape.rows, cols, partial_len / cols)
    } else {
        Blocks::for_map(shape.rows, cols)
    };
    // Zeroed by writing (huge pages where large): a calloc'd buffer would map the zero page
    // on the kernels' first read of each 4 KiB, then fault again (copy-on-write, with a TLB
    // shootdown to every core) on its first write.
    let mut partials: Vec<f64> = arch::filled_vec(blocks.count() * partial_len);
    let stream = grads
        .dx
        .as_deref()
        .is_some_and(|dx| arch::stream_output(dx, false));
    let weight = T::kernel_params(weight);
    let work = BackwardBlock {
        norm,
        cols,
        block_rows: blocks.block_rows,
        partial_len,
        want_dweight: want_dw,
        want_dbias: want_db,
        stream,
        weight: weight.as_deref(),
        x,
        dy,
        mean,
        rstd,
        dx: grads.dx,
        dsum,
        partials: &mut partials,
    };
    let isa = arch::active();
    if long {
        T::backward_long(isa, par, work, grads.dweight, grads.dbias);
        return Ok(());
    }
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
    let (dw_sum, db_sum) = first.split_at(if want_dw { cols } else { 0 });
    round_into(grads.dweight, dw_sum);
    round_into(grads.dbias, db_sum);
    Ok(())
}

/// [`forward`] with optional caller statistics buffers (the mean is only written for
/// LayerNorm).
#[allow(clippy::too_many_arguments)] // the public entry points fix `norm` and take seven
pub(crate) fn forward_stats<T: Element, P: ParamOf<T>>(
    norm: Norm,
    x: &[T],
    normalized_len: usize,
    affine: Affine<'_, P>,
    eps: f64,
    y: &mut [T],
    stats: Option<StatsMut<'_, T::Compute>>,
    par: Parallelism,
) -> Result<()> {
    let (mean, rstd) = match stats {
        Some(s) => ((norm == Norm::Layer).then_some(s.mean), Some(s.rstd)),
        None => (None, None),
    };
    let job = ForwardJob {
        norm,
        x,
        residual: None,
        normalized_len,
        affine,
        eps,
        y,
        mean,
        rstd,
    };
    forward(job, par)
}

/// Allocating forward: `y` and the statistics (`mean` empty for RMSNorm).
pub(crate) fn forward_alloc<T: Element, P: ParamOf<T>>(
    norm: Norm,
    x: &[T],
    normalized_len: usize,
    affine: Affine<'_, P>,
    eps: f64,
    par: Parallelism,
) -> Result<(Vec<T>, Stats<T::Compute>)> {
    let shape = RowsCols::from_len(x.len(), normalized_len)?;
    let mut y = arch::filled_vec(x.len());
    let zero = T::Compute::ZERO;
    let mean_rows = if norm == Norm::Layer { shape.rows } else { 0 };
    let mut stats = Stats {
        mean: vec![zero; mean_rows],
        rstd: vec![zero; shape.rows],
    };
    forward_stats(
        norm,
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

/// Allocating backward: the gradients `mask` asks for (dβ never for RMSNorm).
pub(crate) fn backward_alloc<T: Element, P: ParamOf<T>>(
    job: BackwardJob<'_, T, P>,
    mask: GradMask,
    par: Parallelism,
) -> Result<Gradients<T, P>> {
    let shape = RowsCols::from_len(job.x.len(), job.normalized_len)?;
    let wants_bias = mask.bias && job.norm == Norm::Layer;
    let mut grads = Gradients {
        dx: mask.input.then(|| arch::filled_vec(job.x.len())),
        dweight: mask.weight.then(|| arch::filled_vec(shape.cols)),
        dbias: wants_bias.then(|| arch::filled_vec(shape.cols)),
    };
    backward(
        BackwardJob {
            grads: GradsMut::from_gradients(&mut grads),
            ..job
        },
        par,
    )?;
    Ok(grads)
}

/// The backward job of a plain (not fused) call: LayerNorm when `mean` is given, RMSNorm
/// when it is not.
pub(crate) fn plain_backward<'a, T: Element, P>(
    dy: &'a [T],
    x: &'a [T],
    normalized_len: usize,
    (mean, rstd): (Option<&'a [T::Compute]>, &'a [T::Compute]),
    weight: Option<&'a [P]>,
    grads: GradsMut<'a, T, P>,
) -> BackwardJob<'a, T, P> {
    let norm = if mean.is_some() {
        Norm::Layer
    } else {
        Norm::Rms
    };
    BackwardJob {
        norm,
        dy,
        x,
        normalized_len,
        mean,
        rstd,
        weight,
        dsum: None,
        grads,
    }
}
