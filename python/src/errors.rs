//! Each core error variant becomes its own Python exception class, all subclasses of
//! `LayerNormError` (itself a `ValueError`), so callers can catch precisely or broadly.

use pyo3::create_exception;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

create_exception!(
    layernorm,
    LayerNormError,
    PyValueError,
    "Base class of layernorm's value errors."
);
create_exception!(
    layernorm,
    ShapeError,
    LayerNormError,
    "An array has the wrong shape or length."
);
create_exception!(
    layernorm,
    EpsilonError,
    LayerNormError,
    "eps is not finite or too small."
);
create_exception!(
    layernorm,
    EmptyError,
    LayerNormError,
    "An array or the normalized shape is empty."
);
create_exception!(
    layernorm,
    AxisError,
    LayerNormError,
    "An axis is out of range."
);
create_exception!(
    layernorm,
    SizeOverflowError,
    LayerNormError,
    "A shape's element count overflows."
);
create_exception!(
    layernorm,
    DTypeError,
    PyTypeError,
    "An array has an unsupported dtype."
);

create_exception!(
    layernorm,
    MomentumError,
    LayerNormError,
    "BatchNorm's momentum is not in [0, 1]."
);
create_exception!(
    layernorm,
    RunningStatsError,
    LayerNormError,
    "A running statistic is invalid (BatchNorm's running variance is negative or NaN)."
);

create_exception!(
    layernorm,
    OutputError,
    LayerNormError,
    "out= cannot be written (read-only, or overlapping an input or a concurrent call's buffer)."
);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("LayerNormError", py.get_type::<LayerNormError>())?;
    m.add("ShapeError", py.get_type::<ShapeError>())?;
    m.add("EpsilonError", py.get_type::<EpsilonError>())?;
    m.add("EmptyError", py.get_type::<EmptyError>())?;
    m.add("AxisError", py.get_type::<AxisError>())?;
    m.add("SizeOverflowError", py.get_type::<SizeOverflowError>())?;
    m.add("DTypeError", py.get_type::<DTypeError>())?;
    m.add("OutputError", py.get_type::<OutputError>())?;
    m.add("MomentumError", py.get_type::<MomentumError>())?;
    m.add("RunningStatsError", py.get_type::<RunningStatsError>())?;
    Ok(())
}

/// The exception for a core error.
pub fn to_py(err: layernorm::Error) -> PyErr {
    use layernorm::Error as E;
    let msg = err.to_string();
    match err {
        E::LengthMismatch { .. }
        | E::RaggedInput { .. }
        | E::ShapeMismatch { .. }
        | E::NormalizedShapeMismatch { .. }
        // Groups that do not divide x's channels; a batch with a single value per channel in
        // training (PyTorch: "Expected more than 1 value per channel when training").
        | E::InvalidGroups { .. }
        | E::TooFewValues { .. } => ShapeError::new_err(msg),
        E::InvalidEpsilon { .. } => EpsilonError::new_err(msg),
        E::InvalidMomentum { .. } => MomentumError::new_err(msg),
        E::InvalidRunningVar { .. } => RunningStatsError::new_err(msg),
        E::EmptyNormalizedShape | E::ZeroSizeDim { .. } => EmptyError::new_err(msg),
        E::AxisOutOfRange { .. } | E::DuplicateAxis { .. } | E::NoBatchAxis { .. } => {
            AxisError::new_err(msg)
        }
        E::SizeOverflow { .. } => SizeOverflowError::new_err(msg),
        _ => LayerNormError::new_err(msg),
    }
}
