//! # layernorm
//!
//! Layer Normalization for Rust — exact on every input, deterministic across threads, with
//! the backward pass (dx, dγ, dβ) that training needs.
//!
//! For an input viewed as `rows × cols` (`cols` = the product of the normalized trailing
//! dims), each row is normalized on its own:
//!
//! ```text
//! μ = mean(x)    σ² = mean((x − μ)²)    y = (x − μ)/√(σ² + ε) · γ + β
//! ```
//!
//! Two levels of API:
//! - the [`LayerNorm`] layer (built from a [`LayerNormConfig`]), which takes shapes and owns
//!   γ and β;
//! - plain functions on slices in [`layer_norm`] — [`forward`](layer_norm::forward),
//!   allocation-free [`forward_into`](layer_norm::forward_into),
//!   [`backward`](layer_norm::backward) and [`backward_into`](layer_norm::backward_into) —
//!   for engine authors who manage their own buffers.
//!
//! ```
//! use layernorm::LayerNorm;
//!
//! let layer = LayerNorm::<f32>::new(&[4])?;
//! let x = [1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0];
//! let (y, _stats) = layer.forward(&x, &[2, 4])?;
//! assert!(y[..4].iter().sum::<f32>().abs() < 1e-6);
//! assert_eq!(&y[4..], &[0.0; 4]); // a constant row normalizes to exactly β
//! # Ok::<(), layernorm::Error>(())
//! ```
//!
//! The rest of the family shares the statistics, the partition into blocks and the error
//! type: [`rms_norm`], the fused residual add ([`layer_norm::forward_residual`]), LayerNorm over
//! any axes ([`layer_norm::forward_axes`], Keras' `axis=[1, 3]`), and the channel
//! normalizations [`BatchNorm`] (training and eval, PyTorch's running statistics), [`GroupNorm`]
//! and [`InstanceNorm`], over `(N, C, *)` or channels-last data.
//!
//! Numerics, determinism and error handling are described in [`layer_norm`]; every function of
//! the normalization API validates its arguments and returns an [`Error`] rather than
//! panicking (the [`reference`](mod@reference) oracle, for tests, does not).

#![deny(unsafe_code)]

mod arch;
mod dtype;
mod error;
mod kernels;
pub mod layout;
mod memory;
mod norm;
mod par;
pub mod reference;

pub use arch::{cpu_info, with_isa, CpuInfo, IsaKind};
pub use dtype::{Element, Float};
pub use error::{Error, Operand, Result};
pub use half::{bf16, f16};
pub use kernels::ParamOf;
pub use memory::copy_streaming;
pub use norm::batch_norm::BatchNorm;
pub use norm::group_norm::{GroupNorm, InstanceNorm};
pub use norm::layer_norm::{LayerNorm, LayerNormConfig};
pub use norm::residual::{ResidualOut, ResidualOutput, Upstream};
pub use norm::{batch_norm, group_norm, layer_norm, rms_norm};
pub use norm::{Affine, GradMask, Gradients, GradsMut, Stats, StatsMut, StatsRef};
pub use par::Parallelism;

#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
