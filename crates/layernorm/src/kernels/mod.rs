//! The algorithms, written once, generic over the element type.
//!
//! Kernels take rows that the public API has already validated; they cannot fail. Per-row
//! results depend only on the row's own data and length (never on its address or on the rows
//! around it), which is what makes outputs batch-invariant.

pub(crate) mod layer_norm;
pub(crate) mod reduce;
