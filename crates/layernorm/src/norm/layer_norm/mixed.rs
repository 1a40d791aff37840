//! Mixed precision: 16-bit activations (f16, bf16) with f32 γ and β — the f32 master weights
//! that mixed-precision training keeps. The same kernels run; γ/β are read as f32 and dγ/dβ
//! are returned in f32 (their f64 partials are rounded once, to f32 rather than to 16 bits).

use crate::dtype::Element;
use crate::error::Result;
use crate::kernels::{Norm, ParamOf};
use crate::norm::rows;
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
    rows::forward_alloc(Norm::Layer, x, normalized_len, affine, eps, par)
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
    rows::forward_stats(Norm::Layer, x, normalized_len, affine, eps, y, stats, par)
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
