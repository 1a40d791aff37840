//! Group Normalization and Instance Normalization over `(N, C, *)` (channel axis 1, PyTorch
//! and ONNX) or channels-last `(N, *, C)`.
//!
//! The channels are cut into `groups` groups of consecutive channels; each sample's group is
//! normalized with its own statistics (over the group's channels and every spatial position),
//! then scaled and shifted per channel:
//!
//! ```text
//! μ_{n,g}, σ²_{n,g} over x[n, channels of g, …]      y = (x − μ)/√(σ² + ε) · γ_c + β_c
//! ```
//!
//! This is LayerNorm over channel groups: a sample's output never depends on the rest of the
//! batch (bitwise). InstanceNorm is GroupNorm with one channel per group (PyTorch's
//! `InstanceNorm*d` with `track_running_stats=False`, its default). Saved statistics have one
//! value per (sample, group), sample-major — the shape `(N, groups)` of PyTorch's
//! `native_group_norm`. Default ε = 1e-5, as PyTorch.

use crate::dtype::Element;
use crate::error::Result;
use crate::kernels::ParamOf;
use crate::norm::channels::{self, ChannelView, Sharing};
use crate::norm::{Affine, GradMask, Gradients, Stats, StatsRef};
use crate::par::Parallelism;

/// PyTorch's default ε for GroupNorm and InstanceNorm.
pub const DEFAULT_EPS: f64 = 1e-5;

/// The hyper-parameters of a GroupNorm layer.
///
/// ```
/// use layernorm::group_norm::GroupNorm;
/// use layernorm::{Affine, Parallelism};
///
/// // One sample, 4 channels in 2 groups, 2 positions each: group 0 = channels 0 and 1.
/// let x = [1.0f32, 3.0, 5.0, 7.0, 100.0, 100.0, 200.0, 200.0];
/// let gn = GroupNorm::new(2);
/// let (y, stats) = gn.forward(&x, &[1, 4, 2], Affine::<f32>::none(), Parallelism::Rayon)?;
/// assert_eq!(stats.mean, [4.0, 150.0]);
/// assert!((y[0] + 1.3416).abs() < 1e-4); // (1 − 4)/√5
/// # Ok::<(), layernorm::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupNorm {
    /// Number of groups; must divide the channels.
    pub groups: usize,
    /// The channel axis (1 for `(N, C, *)`, −1 for channels-last); the batch axis is 0.
    pub channel_axis: isize,
    /// Added to the variance under the square root.
    pub eps: f64,
}

impl GroupNorm {
    /// `groups` groups, channel axis 1, ε = 1e-5.
    pub fn new(groups: usize) -> Self {
        GroupNorm {
            groups,
            channel_axis: 1,
            eps: DEFAULT_EPS,
        }
    }

    fn view(&self, shape: &[usize]) -> Result<ChannelView> {
        ChannelView::new(shape, self.channel_axis, Sharing::Groups(Some(self.groups)))
    }

    /// Normalizes each (sample, group); returns `y` and the statistics (mean, rstd) per
    /// (sample, group). γ/β have one value per channel.
    ///
    /// # Errors
    /// [`Error::AxisOutOfRange`](crate::Error::AxisOutOfRange),
    /// [`Error::NoBatchAxis`](crate::Error::NoBatchAxis) (channel axis 0),
    /// [`Error::InvalidGroups`](crate::Error::InvalidGroups),
    /// [`Error::ZeroSizeDim`](crate::Error::ZeroSizeDim),
    /// [`Error::SizeOverflow`](crate::Error::SizeOverflow),
    /// [`Error::LengthMismatch`](crate::Error::LengthMismatch) (x against `shape`, γ/β
    /// against the channels), [`Error::InvalidEpsilon`](crate::Error::InvalidEpsilon).
    pub fn forward<T: Element, P: ParamOf<T>>(
        &self,
        x: &[T],
        shape: &[usize],
        affine: Affine<'_, P>,
        par: Parallelism,
    ) -> Result<(Vec<T>, Stats<T::Compute>)> {
        grouped_forward(&self.view(shape)?, x, affine, self.eps, par)
    }

    /// Backward from the saved statistics of [`forward`](Self::forward).
    ///
    /// # Errors
    /// As [`forward`](Self::forward), and
    /// [`Error::LengthMismatch`](crate::Error::LengthMismatch) for dy or the statistics.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Element, P: ParamOf<T>>(
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
}

/// The hyper-parameters of an InstanceNorm layer: every channel of every sample is
/// normalized on its own (GroupNorm with one channel per group).
///
/// ```
/// use layernorm::group_norm::InstanceNorm;
/// use layernorm::{Affine, Parallelism};
///
/// // (N, C, L) = (1, 2, 2).
/// let x = [1.0f64, 3.0, 10.0, 30.0];
/// let (y, stats) = InstanceNorm::default().forward(&x, &[1, 2, 2], Affine::<f64>::none(), Parallelism::Rayon)?;
/// assert_eq!(stats.mean, [2.0, 20.0]);
/// assert!((y[3] - 1.0).abs() < 1e-6);
/// # Ok::<(), layernorm::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InstanceNorm {
    /// The channel axis (1 for `(N, C, *)`, −1 for channels-last); the batch axis is 0.
    pub channel_axis: isize,
    /// Added to the variance under the square root.
    pub eps: f64,
}

impl Default for InstanceNorm {
    fn default() -> Self {
        InstanceNorm {
            channel_axis: 1,
            eps: DEFAULT_EPS,
        }
    }
}

impl InstanceNorm {
    fn view(&self, shape: &[usize]) -> Result<ChannelView> {
        ChannelView::new(shape, self.channel_axis, Sharing::Groups(None))
    }

    /// Normalizes each (sample, channel); statistics per (sample, channel).
    ///
    /// # Errors
    /// As [`GroupNorm::forward`].
    pub fn forward<T: Element, P: ParamOf<T>>(
        &self,
        x: &[T],
        shape: &[usize],
        affine: Affine<'_, P>,
        par: Parallelism,
    ) -> Result<(Vec<T>, Stats<T::Compute>)> {
        grouped_forward(&self.view(shape)?, x, affine, self.eps, par)
    }

    /// Backward from the saved statistics of [`forward`](Self::forward).
    ///
    /// # Errors
    /// As [`GroupNorm::backward`].
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Element, P: ParamOf<T>>(
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
}

fn grouped_forward<T: Element, P: ParamOf<T>>(
    v: &ChannelView,
    x: &[T],
    affine: Affine<'_, P>,
    eps: f64,
    par: Parallelism,
) -> Result<(Vec<T>, Stats<T::Compute>)> {
    channels::check_forward(v, x, &affine, eps)?;
    let (y, stats) = channels::forward_own_stats(v, x, affine, eps, par);
    Ok((y, stats.saved()))
}
