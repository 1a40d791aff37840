//! Argument and result types shared by the normalizations.

use crate::error::{Operand, Result};
use crate::norm::check_len;

/// The optional learnable parameters: scale γ (`weight`) and shift β (`bias`), each with one
/// value per element of a normalized row. `None` means γ = 1 or β = 0.
#[derive(Clone, Copy, Debug)]
pub struct Affine<'a, T> {
    /// γ, or `None` for no scaling.
    pub weight: Option<&'a [T]>,
    /// β, or `None` for no shift.
    pub bias: Option<&'a [T]>,
}

impl<T> Default for Affine<'_, T> {
    fn default() -> Self {
        Self::none()
    }
}

impl<'a, T> Affine<'a, T> {
    /// No γ, no β: `y = x̂`.
    pub fn none() -> Self {
        Affine {
            weight: None,
            bias: None,
        }
    }

    /// Scale only: `y = x̂·γ`.
    pub fn scale(weight: &'a [T]) -> Self {
        Affine {
            weight: Some(weight),
            bias: None,
        }
    }

    /// Scale and shift: `y = x̂·γ + β`.
    pub fn scale_shift(weight: &'a [T], bias: &'a [T]) -> Self {
        Affine {
            weight: Some(weight),
            bias: Some(bias),
        }
    }

    pub(crate) fn check(&self, cols: usize) -> Result<()> {
        if let Some(w) = self.weight {
            check_len(Operand::Weight, cols, w.len())?;
        }
        if let Some(b) = self.bias {
            check_len(Operand::Bias, cols, b.len())?;
        }
        Ok(())
    }
}

/// Saved per-row statistics, owned: `mean` and `rstd = 1/√(σ² + ε)`, one value per row, in
/// the compute type (f32 for f32 input, f64 for f64 input).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats<S> {
    /// Per-row mean.
    pub mean: Vec<S>,
    /// Per-row reciprocal standard deviation.
    pub rstd: Vec<S>,
}

impl<S> Stats<S> {
    /// Borrows the statistics, for a backward call.
    pub fn as_ref(&self) -> StatsRef<'_, S> {
        StatsRef {
            mean: &self.mean,
            rstd: &self.rstd,
        }
    }

    /// Borrows the statistics mutably, for a `forward_into` call.
    pub fn as_mut(&mut self) -> StatsMut<'_, S> {
        StatsMut {
            mean: &mut self.mean,
            rstd: &mut self.rstd,
        }
    }
}

/// Saved statistics, borrowed (input to backward).
#[derive(Clone, Copy, Debug)]
pub struct StatsRef<'a, S> {
    /// Per-row mean.
    pub mean: &'a [S],
    /// Per-row reciprocal standard deviation.
    pub rstd: &'a [S],
}

/// Buffers a forward call fills with the saved statistics.
#[derive(Debug)]
pub struct StatsMut<'a, S> {
    /// Per-row mean.
    pub mean: &'a mut [S],
    /// Per-row reciprocal standard deviation.
    pub rstd: &'a mut [S],
}

/// Which gradients a backward call computes (PyTorch's `output_mask`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GradMask {
    /// Compute dx.
    pub input: bool,
    /// Compute dγ.
    pub weight: bool,
    /// Compute dβ.
    pub bias: bool,
}

impl GradMask {
    /// dx, dγ and dβ.
    pub const ALL: GradMask = GradMask {
        input: true,
        weight: true,
        bias: true,
    };
    /// dx only (no learnable parameters, or frozen ones).
    pub const INPUT: GradMask = GradMask {
        input: true,
        weight: false,
        bias: false,
    };
}

/// Gradients returned by a backward call; `None` where not requested. `P` is the parameters'
/// type: `T`, or f32 beside f16/bf16 data (mixed precision).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gradients<T, P = T> {
    /// ∂L/∂x, shaped like x.
    pub dx: Option<Vec<T>>,
    /// ∂L/∂γ, one value per element of a normalized row.
    pub dweight: Option<Vec<P>>,
    /// ∂L/∂β, one value per element of a normalized row.
    pub dbias: Option<Vec<P>>,
}

/// Buffers a `backward_into` call fills; `None` skips that gradient. `P` as in [`Gradients`].
#[derive(Debug, Default)]
pub struct GradsMut<'a, T, P = T> {
    /// ∂L/∂x, shaped like x.
    pub dx: Option<&'a mut [T]>,
    /// ∂L/∂γ.
    pub dweight: Option<&'a mut [P]>,
    /// ∂L/∂β.
    pub dbias: Option<&'a mut [P]>,
}

impl<'a, T, P> GradsMut<'a, T, P> {
    /// Borrows every requested buffer of an owned [`Gradients`].
    pub fn from_gradients(g: &'a mut Gradients<T, P>) -> Self {
        GradsMut {
            dx: g.dx.as_deref_mut(),
            dweight: g.dweight.as_deref_mut(),
            dbias: g.dbias.as_deref_mut(),
        }
    }
}
