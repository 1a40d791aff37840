//! Batch Normalization, training-mode forward over channels-last data: the minimal path that
//! lets the learners' tools (`layernorm explain`, `layernorm compare`) put BatchNorm beside
//! LayerNorm. Running statistics, eval mode, the channel axis of PyTorch's `(N, C, *)` and the
//! backward pass belong to the normalization-family work that builds on this.
//!
//! For `x` viewed as `rows × channels` (every leading dim is batch: Keras' default `axis=-1`),
//! each channel c is normalized with the statistics of its column — across the whole batch:
//!
//! ```text
//! μ_c = mean_rows(x[:, c])    σ²_c = mean_rows((x[:, c] − μ_c)²)    (biased, as in training)
//! y[:, c] = (x[:, c] − μ_c) / √(σ²_c + ε) · γ_c + β_c
//! ```
//!
//! so, unlike LayerNorm, one sample's output depends on the other samples of the batch.

use crate::dtype::{to_f64, Element, Float};
use crate::error::Result;
use crate::layout::RowsCols;
use crate::norm::{check_eps, Affine, Stats};
use crate::reference::compensated_sum;

/// Normalizes each channel (last dim) of `x` with its batch statistics; returns `y` and the
/// per-channel statistics (mean and rstd, one per channel).
///
/// Statistics are exact two-pass compensated f64 sums over the column, taken in row order:
/// deterministic, and as accurate as LayerNorm's. This minimal path runs on one thread.
///
/// ```
/// use layernorm::{batch_norm, Affine};
///
/// // Two tokens with two features: each feature is normalized across the two tokens.
/// let x = [1.0f64, 10.0, 3.0, 30.0];
/// let (y, stats) = batch_norm::forward_channels_last(&x, 2, Affine::none(), 1e-5)?;
/// assert_eq!(stats.mean, vec![2.0, 20.0]);
/// assert!((y[0] + 1.0).abs() < 1e-5 && (y[3] - 1.0).abs() < 1e-5);
/// # Ok::<(), layernorm::Error>(())
/// ```
///
/// # Errors
/// As [`layer_norm::forward`](crate::layer_norm::forward), with `channels` in the role of
/// the normalized length (γ and β have one value per channel).
pub fn forward_channels_last<T: Element>(
    x: &[T],
    channels: usize,
    affine: Affine<'_, T>,
    eps: f64,
) -> Result<(Vec<T>, Stats<T::Compute>)> {
    let shape = RowsCols::from_len(x.len(), channels)?;
    check_eps::<T::Compute>(eps)?;
    affine.check(channels)?;
    let column = |c: usize| x.iter().skip(c).step_by(channels).map(|&v| to_f64(v));
    let n = shape.rows as f64;
    let stats: Vec<(f64, f64)> = (0..channels)
        .map(|c| {
            let mean = compensated_sum(column(c)) / n;
            let var = compensated_sum(column(c).map(|v| (v - mean) * (v - mean))) / n;
            (mean, 1.0 / (var + eps).sqrt())
        })
        .collect();
    let y = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = i % channels;
            let (mean, rstd) = stats[c];
            let gamma = affine.weight.map_or(1.0, |w| to_f64(w[c]));
            let beta = affine.bias.map_or(0.0, |b| to_f64(b[c]));
            T::narrow(T::Compute::from_f64(
                (to_f64(v) - mean) * rstd * gamma + beta,
            ))
        })
        .collect();
    Ok((
        y,
        Stats {
            mean: stats.iter().map(|s| T::Compute::from_f64(s.0)).collect(),
            rstd: stats.iter().map(|s| T::Compute::from_f64(s.1)).collect(),
        },
    ))
}
