//! The public API: one module per normalization, plus the argument types they share.

pub mod batch_norm;
pub(crate) mod channels;
pub mod group_norm;
pub mod layer_norm;
mod params;
pub(crate) mod residual;
pub mod rms_norm;
mod rows;

pub use params::{Affine, GradMask, Gradients, GradsMut, Stats, StatsMut, StatsRef};

use crate::dtype::Float;
use crate::error::{Error, Operand, Result};

/// ε must be finite and at least the smallest normal number of the compute type `K`: below
/// it (1e-300 on an f32 tensor, say) ε is not representable there, and a saved rstd of a
/// constant row would overflow to infinity.
pub(crate) fn check_eps<K: Float>(eps: f64) -> Result<()> {
    if eps.is_finite() && eps >= K::MIN_POSITIVE {
        Ok(())
    } else {
        Err(Error::InvalidEpsilon {
            eps,
            min: K::MIN_POSITIVE,
        })
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
