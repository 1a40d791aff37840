//! Layer Normalization over the trailing dimensions of a tensor.
//!
//! A contiguous input is seen as `rows × cols`, `cols` being the product of the normalized
//! dims. Each row is normalized on its own:
//!
//! ```text
//! μ = mean(x)    σ² = mean((x − μ)²)    rstd = 1/√(σ² + ε)    x̂ = (x − μ)·rstd
//! y = x̂·γ + β
//! ```
//!
//! and the backward pass, from the saved `mean` and `rstd`, with `g = dy·γ`:
//!
//! ```text
//! dx = rstd·(g − mean(g) − x̂·mean(g·x̂))    dγ = Σ_rows dy·x̂    dβ = Σ_rows dy
//! ```
//!
//! Guarantees, on every input:
//! - **Exact statistics.** The mean and variance are accumulated in f64 by a corrected
//!   two-pass algorithm (never `E[x²] − E[x]²`), and `x − μ` keeps the part of μ that f32
//!   cannot hold. For f32 input `x = c + N(0, 1)`, the normwise error of y against an f64
//!   reference is below 1e-6 for any offset c.
//! - **Determinism.** Every output — y, the statistics, dx, dγ and dβ — is bitwise identical
//!   whatever the number of threads, and a row's outputs do not depend on the other rows of
//!   the batch (batch invariance).
//! - **Containment.** Finite rows give finite outputs (a constant row gives exactly β); a NaN
//!   or ±Inf in a row makes that row's outputs NaN and touches no other row (dγ and dβ, which
//!   sum over rows, do pick it up).
//!
//! These functions take flat slices and the row length (`normalized_len`); the [`LayerNorm`]
//! layer takes shapes and owns γ and β.
//!
//! [`LayerNorm`]: crate::LayerNorm

mod backward;
mod forward;
mod layer;

pub use backward::{backward, backward_into};
pub use forward::{forward, forward_into};
pub use layer::{LayerNorm, LayerNormConfig};

/// ε used when none is given, as in PyTorch's `nn.LayerNorm` (Keras uses 1e-3).
pub const DEFAULT_EPS: f64 = 1e-5;
