//! Mixed precision: 16-bit activations (f16, bf16) with f32 γ and β — the f32 master weights
//! that mixed-precision training keeps. The same kernels run; γ/β are read as f32 and dγ/dβ
//! are returned in f32 (their f64 partials are rounded once, to f32 rather than to 16 bits).

use crate::arch;
use crate::dtype::Element;
use crate::error::Result;
use crate::kernels::{Norm, ParamOf};
use crate::layout::RowsCols;
use crate::norm::rows::{self, BackwardJob, ForwardJob};
use crate::norm::{Affine, GradMask, Gradients, GradsMut, Stats, StatsMut, StatsRef};
use crate::par::Parallelism;

/// [`forward`](super::forward) with f32 γ/β for f16 or bf16 (or f32) data.
///
/// ```
/// use layernorm::{bf16, layer_norm, Affine, Parallelism};
///
/// let x: Vec<bf16> = [1.0f32, 2.0, 3.0, 4.0].map(bf16::from_f32).to_vec();
/// let (gamma, beta) = ([1.5f32, 0.5], [0.0f32, 0.25]);
/// let (y, _) = layer_norm::forward_mixed(&x, 2, Affine::scale_shift(&gamma, &beta), 1e-5, Parallelism::Sequential)?;
/// assert_eq!(y[0], bf16::from_f32(-1.5));
/// # Ok::<(), layernorm::Error>(())
/// ```
///
/// # Errors
/// As [`forward`](super::forward).
pub fn forward_mixed<T: Element<Compute = f32>>(
    x: &[T],
    normalized_len: usize,
    affine: Affine<'_, f32>,
    eps: f64,
    par: Parallelism,
) -> Result<(Vec<T>, Stats<f32>)>
where
    f32: ParamOf<T>,
{
    let shape = RowsCols::from_len(x.len(), normalized_len)?;
    let mut y = arch::filled_vec(x.len());
    let mut stats = Stats {
        mean: vec![0.0; shape.rows],
        rstd: vec![0.0; shape.rows],
    };
    forward_mixed_into(
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

/// [`forward_into`](super::forward_into) with f32 γ/β for f16 or bf16 (or f32) data.
///
/// # Errors
/// As [`forward_into`](super::forward_into).
pub fn forward_mixed_into<T: Element<Compute = f32>>(
    x: &[T],
    normalized_len: usize,
    affine: Affine<'_, f32>,
    eps: f64,
    y: &mut [T],
    stats: Option<StatsMut<'_, f32>>,
    par: Parallelism,
) -> Result<()>
where
    f32: ParamOf<T>,
{
    let (mean, rstd) = match stats {
        Some(s) => (Some(s.mean), Some(s.rstd)),
        None => (None, None),
    };
    let job = ForwardJob {
        norm: Norm::Layer,
        x,
        residual: None,
        normalized_len,
        affine,
        eps,
        y,
        mean,
        rstd,
    };
    rows::forward(job, par)
}

/// [`backward`](super::backward) with f32 γ for f16 or bf16 (or f32) data; dγ and dβ come
/// back in f32.
///
/// # Errors
/// As [`backward`](super::backward).
pub fn backward_mixed<T: Element<Compute = f32>>(
    dy: &[T],
    x: &[T],
    normalized_len: usize,
    stats: StatsRef<'_, f32>,
    weight: Option<&[f32]>,
    mask: GradMask,
    par: Parallelism,
) -> Result<Gradients<T, f32>>
where
    f32: ParamOf<T>,
{
    let shape = RowsCols::from_len(x.len(), normalized_len)?;
    let mut grads = Gradients {
        dx: mask.input.then(|| arch::filled_vec(x.len())),
        dweight: mask.weight.then(|| vec![0.0f32; shape.cols]),
        dbias: mask.bias.then(|| vec![0.0f32; shape.cols]),
    };
    let job = BackwardJob {
        norm: Norm::Layer,
        dy,
        x,
        normalized_len,
        mean: Some(stats.mean),
        rstd: stats.rstd,
        weight,
        dsum: None,
        grads: GradsMut::from_gradients(&mut grads),
    };
    rows::backward(job, par)?;
    Ok(grads)
}
