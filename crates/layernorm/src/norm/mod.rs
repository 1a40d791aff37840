//! The public API: one module per normalization, plus the argument types they share.

pub mod layer_norm;
mod params;

pub use params::{Affine, GradMask, Gradients, GradsMut, Stats, StatsMut, StatsRef};

use crate::error::{Error, Operand, Result};

/// ε must be finite and strictly positive.
pub(crate) fn check_eps(eps: f64) -> Result<()> {
    if eps.is_finite() && eps > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidEpsilon { eps })
    }
}

/// A buffer must have exactly `expected` elements.
pub(crate) fn check_len(operand: Operand, expected: usize, actual: usize) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::LengthMismatch {
            operand,
            expected,
            actual,
        })
    }
}
