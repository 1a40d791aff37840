//! Batch Normalization over `(N, C, *)` (channel axis 1, PyTorch and ONNX) or channels-last
//! `(N, *, C)` (Keras' default `axis=-1`), in training and eval mode, forward and backward.
//!
//! Each channel c is normalized with statistics of its values across the whole batch (and
//! the spatial dims):
//!
//! ```text
//! μ_c = mean(x[…, c, …])    σ²_c = mean((x[…, c, …] − μ_c)²)   (biased, as in training)
//! y = (x − μ_c)/√(σ²_c + ε) · γ_c + β_c
//! ```
//!
//! so, unlike LayerNorm, one sample's output depends on the other samples of the batch.
//!
//! - **Training** ([`BatchNorm::forward_train`]): batch statistics; the running statistics, if
//!   given, are updated in PyTorch's convention — `new = (1 − momentum)·old + momentum·batch`,
//!   the running variance from the *unbiased* batch variance `σ²·n/(n − 1)`.
//! - **Eval** ([`BatchNorm::forward_eval`]): the running statistics instead.
//! - **Backward** in both modes: in training the statistics depend on x (the full LayerNorm
//!   formula per channel), in eval they are constants (`dx = dy·γ/√(var + ε)`).
//!
//! The statistics are exact two-pass f64 sums taken in a fixed order, so every output is
//! bitwise the same whatever the thread count (see the engine in `channels.rs`). Defaults, as
//! PyTorch's `nn.BatchNorm*d`: ε = 1e-5, momentum 0.1, channel axis 1.

use crate::dtype::{to_f64, Element};
use crate::error::{Error, Operand, Result};
use crate::kernels::ParamOf;
use crate::layout::RowsCols;
use crate::norm::channels::{self, BackwardArgs, ChannelView, Sharing, Statistics};
use crate::norm::{check_len, Affine, GradMask, Gradients, Stats, StatsRef};
use crate::par::Parallelism;

/// PyTorch's default ε for BatchNorm.
pub const DEFAULT_EPS: f64 = 1e-5;
/// PyTorch's default momentum: the weight of the new batch statistic in the running average.
pub const DEFAULT_MOMENTUM: f64 = 0.1;

/// The hyper-parameters of a BatchNorm layer.
///
/// ```
/// use layernorm::batch_norm::{BatchNorm, RunningStatsMut};
/// use layernorm::{Affine, Parallelism};
///
/// // (N, C) = (3, 2): channel 0 holds 1, 2, 3; channel 1 holds 10, 20, 30.
/// let x = [1.0f32, 10.0, 2.0, 20.0, 3.0, 30.0];
/// let (mut mean, mut var) = (vec![0.0f32; 2], vec![1.0f32; 2]);
/// let bn = BatchNorm::default();
/// let running = RunningStatsMut { mean: &mut mean, var: &mut var };
/// let (y, stats) = bn.forward_train(&x, &[3, 2], Affine::none(), Some(running), Parallelism::Rayon)?;
/// assert_eq!(stats.mean, [2.0, 20.0]);
/// assert!((y[0] + 1.2247).abs() < 1e-4); // (1 − 2)/√(2/3)
/// assert_eq!(mean, [0.2, 2.0]);          // 0.9·0 + 0.1·μ
/// assert!((var[1] - 10.9).abs() < 1e-5); // 0.9·1 + 0.1·100 (unbiased: Σd²/(n − 1))
/// # Ok::<(), layernorm::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNorm {
    /// The channel axis: 1 for `(N, C, *)`, −1 for channels-last. Negative counts from the end.
    pub channel_axis: isize,
    /// Added to the variance under the square root.
    pub eps: f64,
    /// Weight of the batch statistics when updating the running ones, in `[0, 1]`.
    pub momentum: f64,
}

impl Default for BatchNorm {
    fn default() -> Self {
        BatchNorm {
            channel_axis: 1,
            eps: DEFAULT_EPS,
            momentum: DEFAULT_MOMENTUM,
        }
    }
}

/// Running statistics, read (eval mode), one value per channel.
#[derive(Clone, Copy, Debug)]
pub struct RunningStats<'a, P> {
    /// Running mean.
    pub mean: &'a [P],
    /// Running (unbiased) variance.
    pub var: &'a [P],
}

/// Running statistics to update (training mode), one value per channel.
#[derive(Debug)]
pub struct RunningStatsMut<'a, P> {
    /// Running mean.
    pub mean: &'a mut [P],
    /// Running (unbiased) variance.
    pub var: &'a mut [P],
}

impl BatchNorm {
    fn view(&self, shape: &[usize]) -> Result<ChannelView> {
        ChannelView::new(shape, self.channel_axis, Sharing::Batch)
    }

    /// Training-mode forward: normalizes with the batch statistics, returns `y` and the saved
    /// statistics (mean and rstd per channel, for [`backward_train`](Self::backward_train)),
    /// and updates `running` if given. `shape` is x's shape; γ/β have one value per channel.
    ///
    /// # Errors
    /// [`Error::AxisOutOfRange`], [`Error::ZeroSizeDim`], [`Error::SizeOverflow`],
    /// [`Error::LengthMismatch`] (x against `shape`; γ, β or a running statistic against the
    /// channels), [`Error::InvalidEpsilon`], [`Error::InvalidMomentum`], and
    /// [`Error::TooFewValues`] when a channel has a single value.
    pub fn forward_train<T: Element, P: ParamOf<T>>(
        &self,
        x: &[T],
        shape: &[usize],
        affine: Affine<'_, P>,
        running: Option<RunningStatsMut<'_, P>>,
        par: Parallelism,
    ) -> Result<(Vec<T>, Stats<T::Compute>)> {
        let v = self.view(shape)?;
        channels::check_forward(&v, x, &affine, self.eps)?;
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(Error::InvalidMomentum {
                momentum: self.momentum,
            });
        }
        if let Some(r) = &running {
            check_len(Operand::RunningMean, v.channels, r.mean.len())?;
            check_len(Operand::RunningVar, v.channels, r.var.len())?;
        }
        let count = v.count();
        if count < 2 {
            return Err(Error::TooFewValues { count });
        }
        let (y, stats) = channels::forward_own_stats(&v, x, affine, self.eps, par);
        if let Some(r) = running {
            let m = self.momentum;
            let unbias = count as f64 / (count - 1) as f64;
            for c in 0..v.channels {
                let old = (to_f64(r.mean[c]), to_f64(r.var[c]));
                r.mean[c] = P::round_from_f64((1.0 - m) * old.0 + m * stats.mean[c]);
                r.var[c] = P::round_from_f64((1.0 - m) * old.1 + m * stats.var[c] * unbias);
            }
        }
        Ok((y, stats.saved()))
    }

    /// Eval-mode forward: normalizes with the running statistics.
    ///
    /// # Errors
    /// As [`forward_train`](Self::forward_train) (but one value per channel is fine), and
    /// [`Error::InvalidRunningVar`] for a negative or NaN running variance.
    pub fn forward_eval<T: Element, P: ParamOf<T>>(
        &self,
        x: &[T],
        shape: &[usize],
        affine: Affine<'_, P>,
        running: RunningStats<'_, P>,
        par: Parallelism,
    ) -> Result<Vec<T>> {
        let v = self.view(shape)?;
        channels::check_forward(&v, x, &affine, self.eps)?;
        let (mean, rstd) = self.running_f64(&v, running)?;
        let mut y = vec![T::default(); x.len()];
        channels::normalize(&v, x, &mean, &rstd, affine, &mut y, par);
        Ok(y)
    }

    /// Backward of [`forward_train`](Self::forward_train), from its saved statistics.
    /// Returns the gradients `mask` asks for (dγ only when a weight is given).
    ///
    /// # Errors
    /// As [`forward_train`](Self::forward_train), and [`Error::LengthMismatch`] for dy or the
    /// saved statistics.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_train<T: Element, P: ParamOf<T>>(
        &self,
        dy: &[T],
        x: &[T],
        shape: &[usize],
        stats: StatsRef<'_, T::Compute>,
        weight: Option<&[P]>,
        mask: GradMask,
        par: Parallelism,
    ) -> Result<Gradients<T, P>> {
        channels::backward_saved(&self.view(shape)?, dy, x, stats, weight, mask, par)
    }

    /// Backward of [`forward_eval`](Self::forward_eval): the running statistics are constants.
    ///
    /// # Errors
    /// As [`forward_eval`](Self::forward_eval), and [`Error::LengthMismatch`] for dy.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_eval<T: Element, P: ParamOf<T>>(
        &self,
        dy: &[T],
        x: &[T],
        shape: &[usize],
        running: RunningStats<'_, P>,
        weight: Option<&[P]>,
        mask: GradMask,
        par: Parallelism,
    ) -> Result<Gradients<T, P>> {
        let v = self.view(shape)?;
        crate::norm::check_eps::<T::Compute>(self.eps)?;
        check_len(Operand::Input, v.len(), x.len())?;
        check_len(Operand::GradOutput, v.len(), dy.len())?;
        if let Some(w) = weight {
            check_len(Operand::Weight, v.channels, w.len())?;
        }
        let (mean, rstd) = self.running_f64(&v, running)?;
        let args = BackwardArgs {
            dy,
            x,
            mean: &mean,
            rstd: &rstd,
            weight,
            statistics: Statistics::Frozen,
            mask,
        };
        Ok(channels::backward(&v, args, par))
    }

    /// The running statistics as f64 mean and rstd, checked.
    fn running_f64<P: Element>(
        &self,
        v: &ChannelView,
        running: RunningStats<'_, P>,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        check_len(Operand::RunningMean, v.channels, running.mean.len())?;
        check_len(Operand::RunningVar, v.channels, running.var.len())?;
        let mean = running.mean.iter().map(|&m| to_f64(m)).collect();
        let mut rstd = Vec::with_capacity(v.channels);
        for (channel, &var) in running.var.iter().enumerate() {
            let value = to_f64(var);
            if value.is_nan() || value < 0.0 {
                return Err(Error::InvalidRunningVar { channel, value });
            }
            rstd.push(channels::rstd_of(value, self.eps));
        }
        Ok((mean, rstd))
    }
}

/// Training-mode BatchNorm over channels-last data viewed as `rows × channels` (every leading
/// dim is batch: Keras' default `axis=-1`), without running statistics: the learners' tools
/// (`layernorm explain`, `layernorm compare`) put it beside LayerNorm.
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
/// As [`BatchNorm::forward_train`], with `channels` in the role of the normalized length.
pub fn forward_channels_last<T: Element>(
    x: &[T],
    channels: usize,
    affine: Affine<'_, T>,
    eps: f64,
) -> Result<(Vec<T>, Stats<T::Compute>)> {
    let shape = RowsCols::from_len(x.len(), channels)?;
    let bn = BatchNorm {
        channel_axis: -1,
        eps,
        ..BatchNorm::default()
    };
    bn.forward_train(
        x,
        &[shape.rows, shape.cols],
        affine,
        None,
        Parallelism::Sequential,
    )
}
