//! The one error type of the crate.
//!
//! Every public entry point validates its arguments before any kernel runs, so kernels cannot
//! fail: an `Err` always means "this call was given something it cannot compute", never "the
//! computation went wrong half way".

use std::fmt;

/// Which argument of a call an [`Error`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operand {
    /// The input `x`.
    Input,
    /// The output `y` (or `dx` in backward).
    Output,
    /// The scale γ.
    Weight,
    /// The shift β.
    Bias,
    /// The saved per-row means.
    Mean,
    /// The saved per-row reciprocal standard deviations.
    Rstd,
    /// The upstream gradient `dy`.
    GradOutput,
    /// The input gradient `dx`.
    GradInput,
    /// The scale gradient `dγ`.
    GradWeight,
    /// The shift gradient `dβ`.
    GradBias,
    /// The normalized shape of a layer.
    NormalizedShape,
    /// The residual added to the input (fused residual add).
    Residual,
    /// The sum output `x + residual` (fused residual add).
    Sum,
    /// The upstream gradient of the sum (fused residual add).
    GradSum,
    /// BatchNorm's running mean.
    RunningMean,
    /// BatchNorm's running variance.
    RunningVar,
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operand::Input => "input",
            Operand::Output => "output",
            Operand::Weight => "weight (gamma)",
            Operand::Bias => "bias (beta)",
            Operand::Mean => "saved mean",
            Operand::Rstd => "saved rstd",
            Operand::GradOutput => "output gradient",
            Operand::GradInput => "input gradient",
            Operand::GradWeight => "weight gradient",
            Operand::GradBias => "bias gradient",
            Operand::NormalizedShape => "normalized shape",
            Operand::Residual => "residual",
            Operand::Sum => "sum output",
            Operand::GradSum => "sum gradient",
            Operand::RunningMean => "running mean",
            Operand::RunningVar => "running variance",
        })
    }
}

/// Everything that can be wrong with the arguments of a call.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A buffer does not have the number of elements the call needs.
    #[error("{operand} has {actual} elements, expected {expected}")]
    LengthMismatch {
        /// The buffer at fault.
        operand: Operand,
        /// The length the call needs.
        expected: usize,
        /// The length it was given.
        actual: usize,
    },
    /// The input length is not a whole number of rows.
    #[error("input of {len} elements is not a whole number of rows of {normalized_len}")]
    RaggedInput {
        /// Elements in the input.
        len: usize,
        /// Elements per normalized row.
        normalized_len: usize,
    },
    /// A tensor has the wrong shape (γ/β against the normalized shape, say).
    #[error("{operand} has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The tensor at fault.
        operand: Operand,
        /// The shape the call needs.
        expected: Vec<usize>,
        /// The shape it was given.
        actual: Vec<usize>,
    },
    /// The input's trailing dimensions are not the normalized shape.
    #[error(
        "input of shape {shape:?} does not end with the normalized shape {normalized_shape:?}"
    )]
    NormalizedShapeMismatch {
        /// The input's shape.
        shape: Vec<usize>,
        /// The normalized shape it should end with.
        normalized_shape: Vec<usize>,
    },
    /// ε must be finite and at least the smallest normal number of the compute type.
    #[error("epsilon must be finite and at least {min:e}, got {eps:e}")]
    InvalidEpsilon {
        /// The rejected value.
        eps: f64,
        /// The smallest accepted value (`f32::MIN_POSITIVE` for f32 tensors).
        min: f64,
    },
    /// The normalized shape has no dimensions.
    #[error("the normalized shape is empty: nothing to normalize over")]
    EmptyNormalizedShape,
    /// A tensor has a dimension of size zero (or a buffer is empty).
    #[error("{operand} of shape {shape:?} has a zero-size dimension")]
    ZeroSizeDim {
        /// The tensor at fault.
        operand: Operand,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// An axis lies outside `-rank..rank`.
    #[error("axis {axis} is out of range for a tensor of rank {rank}")]
    AxisOutOfRange {
        /// The axis as given (negative counts from the end).
        axis: isize,
        /// The rank of the tensor.
        rank: usize,
    },
    /// An axis is listed twice in a set of normalized axes.
    #[error("axis {axis} is listed twice")]
    DuplicateAxis {
        /// The repeated axis, resolved to `0..rank`.
        axis: usize,
    },
    /// The channel axis leaves no batch axis in front of it (GroupNorm, InstanceNorm: the
    /// input is `(N, …, C, …)` with the batch first).
    #[error("channel axis {axis} of a rank-{rank} input leaves no batch axis before it")]
    NoBatchAxis {
        /// The channel axis as given.
        axis: isize,
        /// The rank of the input.
        rank: usize,
    },
    /// The number of groups does not divide the channels (or is zero).
    #[error("{groups} groups do not divide {channels} channels")]
    InvalidGroups {
        /// The requested number of groups.
        groups: usize,
        /// The number of channels.
        channels: usize,
    },
    /// BatchNorm's momentum must lie in `[0, 1]`.
    #[error("momentum must lie in [0, 1], got {momentum}")]
    InvalidMomentum {
        /// The rejected value.
        momentum: f64,
    },
    /// A running variance is negative or NaN.
    #[error("running variance of channel {channel} is {value}: it must be a number >= 0")]
    InvalidRunningVar {
        /// The channel at fault.
        channel: usize,
        /// Its value.
        value: f64,
    },
    /// Training-mode BatchNorm needs more than one value per channel (the unbiased running
    /// variance divides by `count − 1`).
    #[error("batch statistics need more than one value per channel, got {count}")]
    TooFewValues {
        /// Values per channel in the batch.
        count: usize,
    },
    /// The number of elements of a shape does not fit in `usize`.
    #[error("the element count of shape {shape:?} overflows")]
    SizeOverflow {
        /// The shape at fault.
        shape: Vec<usize>,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
