//! aarch64: the NEON token.

mod neon;

pub(crate) use neon::Neon;
