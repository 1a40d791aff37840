//! `layernorm._layernorm`: the native half of the Python package.
//!
//! Thin by design: it checks dtypes, borrows numpy buffers as slices, releases the GIL, calls
//! the core crate on the package's own thread pool, and wraps the results. No math lives here;
//! the Python half (`layernorm/__init__.py`) handles shapes, layouts and the friendly API.

#![forbid(unsafe_code)]

mod axes;
mod channel_norm;
mod errors;
mod layer_norm;
mod pool;

use pyo3::prelude::*;

// The GIL is kept (the default): the pool's fork safety relies on a fork never finding its
// lock taken, which the GIL guarantees.
#[pymodule]
fn _layernorm(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_function(wrap_pyfunction!(layer_norm::layer_norm_forward, m)?)?;
    m.add_function(wrap_pyfunction!(layer_norm::layer_norm_backward, m)?)?;
    m.add_function(wrap_pyfunction!(layer_norm::rms_norm_forward, m)?)?;
    m.add_function(wrap_pyfunction!(layer_norm::rms_norm_backward, m)?)?;
    m.add_function(wrap_pyfunction!(layer_norm::add_norm_forward, m)?)?;
    m.add_function(wrap_pyfunction!(axes::layer_norm_axes_forward, m)?)?;
    m.add_function(wrap_pyfunction!(axes::layer_norm_axes_backward, m)?)?;
    m.add_function(wrap_pyfunction!(channel_norm::batch_norm_forward, m)?)?;
    m.add_function(wrap_pyfunction!(channel_norm::batch_norm_backward, m)?)?;
    m.add_function(wrap_pyfunction!(channel_norm::group_norm_forward, m)?)?;
    m.add_function(wrap_pyfunction!(channel_norm::group_norm_backward, m)?)?;
    m.add_function(wrap_pyfunction!(pool::after_fork_in_child, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_info, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

/// The instruction set the kernels use, and every one the CPU has.
#[pyfunction]
fn cpu_info() -> (String, Vec<String>) {
    let info = layernorm::cpu_info();
    let available = info
        .available
        .iter()
        .map(|k| k.name().to_string())
        .collect();
    (info.selected.name().to_string(), available)
}
