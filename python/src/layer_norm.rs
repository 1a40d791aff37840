//! `layer_norm_forward` and `layer_norm_backward`: dtype dispatch around the core's
//! `layer_norm` and `rms_norm` (forward, forward_into, backward).

use layernorm::layout::RowsCols;
use layernorm::{
    bf16, f16, layer_norm, rms_norm, Affine, Element, GradMask, StatsMut, StatsRef, Upstream,
};
use numpy::{
    PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyAny;

use crate::errors::{to_py, DTypeError, LayerNormError, OutputError, ShapeError};
use crate::pool;

type Arrays<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>);
type MaybeArray<'py> = Option<Bound<'py, PyAny>>;
type MaybeArrays<'py> = (
    Option<Bound<'py, PyAny>>,
    Option<Bound<'py, PyAny>>,
    Option<Bound<'py, PyAny>>,
);

/// numpy's name of an array's dtype ("float32", "bfloat16", …).
pub(crate) fn dtype_name(a: &Bound<'_, PyUntypedArray>) -> PyResult<String> {
    a.dtype().getattr("name")?.extract()
}

pub(crate) fn unsupported(name: &str) -> PyErr {
    DTypeError::new_err(format!(
        "unsupported dtype {name}: expected float32, float64, float16 or bfloat16 (ml_dtypes)"
    ))
}

/// A C-contiguous array of element type T, borrowed read-only.
pub(crate) fn typed<'py, T: numpy::Element>(
    a: &Bound<'py, PyUntypedArray>,
    what: &str,
    expected: &str,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    let array = a.cast::<PyArrayDyn<T>>().map_err(|_| {
        let name = dtype_name(a).unwrap_or_default();
        DTypeError::new_err(format!("{what} has dtype {name}, expected {expected}"))
    })?;
    c_contiguous(a, what)?;
    Ok(array.readonly())
}

/// Kernels read and write in memory order, so arrays must be C-ordered (numpy's "contiguous"
/// also admits Fortran order, which would silently transpose the data).
pub(crate) fn c_contiguous(a: &Bound<'_, PyUntypedArray>, what: &str) -> PyResult<()> {
    if a.is_c_contiguous() {
        Ok(())
    } else {
        Err(ShapeError::new_err(format!("{what} must be C-contiguous")))
    }
}

/// γ or β: absent, or an array of the normalized shape and x's dtype.
pub(crate) fn param<'py, T: Element + numpy::Element>(
    p: Option<&Bound<'py, PyUntypedArray>>,
    what: &str,
    normalized_shape: &[usize],
) -> PyResult<Option<PyReadonlyArrayDyn<'py, T>>> {
    let Some(p) = p else { return Ok(None) };
    if p.shape() != normalized_shape {
        return Err(ShapeError::new_err(format!(
            "{what} has shape {:?}, expected the normalized shape {normalized_shape:?}",
            p.shape()
        )));
    }
    typed::<T>(p, what, T::NAME).map(Some)
}

pub(crate) fn slice<'a, T: numpy::Element>(
    a: &'a PyReadonlyArrayDyn<'_, T>,
    what: &str,
) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| ShapeError::new_err(format!("{what} must be C-contiguous")))
}

/// LayerNorm (centred) or RMSNorm (not).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Layer,
    Rms,
}

/// Normalizes `x` over its trailing `normalized_shape`; returns flat `(y, mean, rstd)` (or
/// `out` as y when given).
#[pyfunction]
#[pyo3(signature = (x, normalized_shape, weight=None, bias=None, eps=1e-5, out=None))]
pub fn layer_norm_forward<'py>(
    x: &Bound<'py, PyUntypedArray>,
    normalized_shape: Vec<usize>,
    weight: Option<&Bound<'py, PyUntypedArray>>,
    bias: Option<&Bound<'py, PyUntypedArray>>,
    eps: f64,
    out: Option<&Bound<'py, PyUntypedArray>>,
) -> PyResult<Arrays<'py>> {
    dispatch_forward(Kind::Layer, x, &normalized_shape, weight, bias, eps, out)
}

/// RMS-normalizes `x` over its trailing `normalized_shape`; returns flat `(y, rstd)` (or
/// `out` as y when given).
#[pyfunction]
#[pyo3(signature = (x, normalized_shape, weight=None, eps=1e-5, out=None))]
pub fn rms_norm_forward<'py>(
    x: &Bound<'py, PyUntypedArray>,
    normalized_shape: Vec<usize>,
    weight: Option<&Bound<'py, PyUntypedArray>>,
    eps: f64,
    out: Option<&Bound<'py, PyUntypedArray>>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let (y, _, rstd) = dispatch_forward(Kind::Rms, x, &normalized_shape, weight, None, eps, out)?;
    Ok((y, rstd))
}

fn dispatch_forward<'py>(
    kind: Kind,
    x: &Bound<'py, PyUntypedArray>,
    normalized_shape: &[usize],
    weight: Option<&Bound<'py, PyUntypedArray>>,
    bias: Option<&Bound<'py, PyUntypedArray>>,
    eps: f64,
    out: Option<&Bound<'py, PyUntypedArray>>,
) -> PyResult<Arrays<'py>> {
    let name = dtype_name(x)?;
    match name.as_str() {
        "float32" => forward::<f32>(kind, x, normalized_shape, weight, bias, eps, out),
        "float64" => forward::<f64>(kind, x, normalized_shape, weight, bias, eps, out),
        "float16" => forward::<f16>(kind, x, normalized_shape, weight, bias, eps, out),
        "bfloat16" => forward::<bf16>(kind, x, normalized_shape, weight, bias, eps, out),
        other => Err(unsupported(other)),
    }
}

fn forward<'py, T>(
    kind: Kind,
    x: &Bound<'py, PyUntypedArray>,
    normalized_shape: &[usize],
    weight: Option<&Bound<'py, PyUntypedArray>>,
    bias: Option<&Bound<'py, PyUntypedArray>>,
    eps: f64,
    out: Option<&Bound<'py, PyUntypedArray>>,
) -> PyResult<Arrays<'py>>
where
    T: Element + numpy::Element,
    T::Compute: numpy::Element,
{
    let py = x.py();
    let shape = x.shape().to_vec();
    let rows_cols = RowsCols::with_normalized_shape(&shape, normalized_shape).map_err(to_py)?;
    let x = typed::<T>(x, "x", T::NAME)?;
    let w = param::<T>(weight, "weight", normalized_shape)?;
    let b = param::<T>(bias, "bias", normalized_shape)?;
    let xs = slice(&x, "x")?;
    let ws = w.as_ref().map(|w| slice(w, "weight")).transpose()?;
    let bs = b.as_ref().map(|b| slice(b, "bias")).transpose()?;
    let affine = Affine {
        weight: ws,
        bias: bs,
    };
    let (cols, elems) = (rows_cols.cols, xs.len());
    match out {
        None => {
            let (y, stats) = pool::run(py, elems, |par| match kind {
                Kind::Layer => layer_norm::forward(xs, cols, affine, eps, par),
                Kind::Rms => rms_norm::forward(xs, cols, affine.weight, eps, par)
                    .map(|(y, rstd)| (y, layernorm::Stats { mean: vec![], rstd })),
            })
            .map_err(to_py)?;
            let y = PyArray1::from_vec(py, y).reshape(shape)?;
            let mean = PyArray1::from_vec(py, stats.mean);
            let rstd = PyArray1::from_vec(py, stats.rstd);
            Ok((y.into_any(), mean.into_any(), rstd.into_any()))
        }
        Some(out) => {
            if out.shape() != shape.as_slice() {
                return Err(ShapeError::new_err(format!(
                    "out has shape {:?}, expected {shape:?} like x",
                    out.shape()
                )));
            }
            let out_typed = out.cast::<PyArrayDyn<T>>().map_err(|_| {
                let name = dtype_name(out).unwrap_or_default();
                DTypeError::new_err(format!("out has dtype {name}, expected {} like x", T::NAME))
            })?;
            c_contiguous(out, "out")?;
            let mut y = out_typed
                .try_readwrite()
                .map_err(|e| OutputError::new_err(format!("out cannot be written: {e}")))?;
            let ys = y
                .as_slice_mut()
                .map_err(|_| ShapeError::new_err("out must be C-contiguous"))?;
            let zero = <T::Compute as layernorm::Float>::ZERO;
            let (mut mean, mut rstd) = (vec![zero; rows_cols.rows], vec![zero; rows_cols.rows]);
            pool::run(py, elems, |par| match kind {
                Kind::Layer => {
                    let stats = StatsMut {
                        mean: &mut mean,
                        rstd: &mut rstd,
                    };
                    layer_norm::forward_into(xs, cols, affine, eps, ys, Some(stats), par)
                }
                Kind::Rms => {
                    rms_norm::forward_into(xs, cols, affine.weight, eps, ys, Some(&mut rstd), par)
                }
            })
            .map_err(to_py)?;
            drop(y);
            let mean = PyArray1::from_vec(py, mean);
            let rstd = PyArray1::from_vec(py, rstd);
            Ok((out.clone().into_any(), mean.into_any(), rstd.into_any()))
        }
    }
}

/// Gradients `(dx, dweight, dbias)` (flat, `None` where not requested) of LayerNorm.
#[pyfunction]
#[pyo3(signature = (grad_out, x, mean, rstd, normalized_shape, weight=None, output_mask=(true, true, true), grad_sum=None))]
#[allow(clippy::too_many_arguments)] // mirrors the Python signature
pub fn layer_norm_backward<'py>(
    grad_out: &Bound<'py, PyUntypedArray>,
    x: &Bound<'py, PyUntypedArray>,
    mean: &Bound<'py, PyUntypedArray>,
    rstd: &Bound<'py, PyUntypedArray>,
    normalized_shape: Vec<usize>,
    weight: Option<&Bound<'py, PyUntypedArray>>,
    output_mask: (bool, bool, bool),
    grad_sum: Option<&Bound<'py, PyUntypedArray>>,
) -> PyResult<MaybeArrays<'py>> {
    let args = (
        (grad_out, grad_sum),
        x,
        Some(mean),
        rstd,
        normalized_shape.as_slice(),
        weight,
        output_mask,
    );
    dispatch_backward(args)
}

/// Gradients `(dx, dweight)` (flat, `None` where not requested) of RMSNorm.
#[pyfunction]
#[pyo3(signature = (grad_out, x, rstd, normalized_shape, weight=None, output_mask=(true, true), grad_sum=None))]
pub fn rms_norm_backward<'py>(
    grad_out: &Bound<'py, PyUntypedArray>,
    x: &Bound<'py, PyUntypedArray>,
    rstd: &Bound<'py, PyUntypedArray>,
    normalized_shape: Vec<usize>,
    weight: Option<&Bound<'py, PyUntypedArray>>,
    output_mask: (bool, bool),
    grad_sum: Option<&Bound<'py, PyUntypedArray>>,
) -> PyResult<(MaybeArray<'py>, MaybeArray<'py>)> {
    let mask = (output_mask.0, output_mask.1, false);
    let args = (
        (grad_out, grad_sum),
        x,
        None,
        rstd,
        normalized_shape.as_slice(),
        weight,
        mask,
    );
    let (dx, dw, _) = dispatch_backward(args)?;
    Ok((dx, dw))
}

fn dispatch_backward<'py>(args: BackwardArgs<'_, 'py>) -> PyResult<MaybeArrays<'py>> {
    let name = dtype_name(args.1)?;
    match name.as_str() {
        "float32" => backward::<f32>(args),
        "float64" => backward::<f64>(args),
        "float16" => backward::<f16>(args),
        "bfloat16" => backward::<bf16>(args),
        other => Err(unsupported(other)),
    }
}

/// grad_out (and the fused sum's gradient), x, mean (None: RMSNorm), rstd, normalized shape,
/// weight, output mask.
type BackwardArgs<'a, 'py> = (
    (
        &'a Bound<'py, PyUntypedArray>,
        Option<&'a Bound<'py, PyUntypedArray>>,
    ),
    &'a Bound<'py, PyUntypedArray>,
    Option<&'a Bound<'py, PyUntypedArray>>,
    &'a Bound<'py, PyUntypedArray>,
    &'a [usize],
    Option<&'a Bound<'py, PyUntypedArray>>,
    (bool, bool, bool),
);

fn backward<'py, T>(
    ((grad_out, grad_sum), x, mean, rstd, normalized_shape, weight, mask): BackwardArgs<'_, 'py>,
) -> PyResult<MaybeArrays<'py>>
where
    T: Element + numpy::Element,
    T::Compute: numpy::Element,
{
    let py = x.py();
    let shape = x.shape().to_vec();
    let rows_cols = RowsCols::with_normalized_shape(&shape, normalized_shape).map_err(to_py)?;
    if grad_out.shape() != shape.as_slice() {
        return Err(ShapeError::new_err(format!(
            "grad_out has shape {:?}, expected {shape:?} like x",
            grad_out.shape()
        )));
    }
    let (x, dy) = (
        typed::<T>(x, "x", T::NAME)?,
        typed::<T>(grad_out, "grad_out", T::NAME)?,
    );
    if let Some(gs) = grad_sum {
        if gs.shape() != shape.as_slice() {
            return Err(ShapeError::new_err(format!(
                "grad_sum has shape {:?}, expected {shape:?} like x",
                gs.shape()
            )));
        }
    }
    let ds = grad_sum
        .map(|g| typed::<T>(g, "grad_sum", T::NAME))
        .transpose()?;
    let dss = ds.as_ref().map(|d| slice(d, "grad_sum")).transpose()?;
    let stats_dtype = <T::Compute as layernorm::Float>::NAME;
    let mean = mean
        .map(|m| typed::<T::Compute>(m, "mean", stats_dtype))
        .transpose()?;
    let rstd = typed::<T::Compute>(rstd, "rstd", stats_dtype)?;
    let w = param::<T>(weight, "weight", normalized_shape)?;
    let (xs, dys) = (slice(&x, "x")?, slice(&dy, "grad_out")?);
    let means = mean.as_ref().map(|m| slice(m, "mean")).transpose()?;
    let rstds = slice(&rstd, "rstd")?;
    let ws = w.as_ref().map(|w| slice(w, "weight")).transpose()?;
    let mask = GradMask {
        input: mask.0,
        weight: mask.1,
        bias: mask.2,
    };
    let cols = rows_cols.cols;
    let grads = pool::run(py, xs.len(), |par| match (means, dss) {
        (Some(mean), None) => {
            let stats = StatsRef { mean, rstd: rstds };
            layer_norm::backward(dys, xs, cols, stats, ws, mask, par)
        }
        (None, None) => rms_norm::backward(dys, xs, cols, rstds, ws, mask, par),
        (Some(mean), Some(dsum)) => {
            let up = Upstream {
                dy: dys,
                dsum: Some(dsum),
            };
            let stats = StatsRef { mean, rstd: rstds };
            layer_norm::backward_residual(up, xs, cols, stats, ws, mask, par)
        }
        (None, Some(dsum)) => {
            let up = Upstream {
                dy: dys,
                dsum: Some(dsum),
            };
            rms_norm::backward_residual(up, xs, cols, rstds, ws, mask, par)
        }
    })
    .map_err(to_py)?;
    let wrap = |v: Option<Vec<T>>| v.map(|v| PyArray1::from_vec(py, v).into_any());
    let dx = match grads.dx {
        Some(dx) => Some(PyArray1::from_vec(py, dx).reshape(shape)?.into_any()),
        None => None,
    };
    Ok((dx, wrap(grads.dweight), wrap(grads.dbias)))
}

/// Fused residual add: `sum = x + residual`, `y = norm(sum)` (RMSNorm when `rms`); returns
/// flat-shaped `(sum, y, mean, rstd)` (`mean` empty for RMSNorm).
#[pyfunction]
#[pyo3(signature = (x, residual, normalized_shape, weight=None, bias=None, eps=1e-5, rms=false))]
#[allow(clippy::too_many_arguments)] // mirrors the Python signature
pub fn add_norm_forward<'py>(
    x: &Bound<'py, PyUntypedArray>,
    residual: &Bound<'py, PyUntypedArray>,
    normalized_shape: Vec<usize>,
    weight: Option<&Bound<'py, PyUntypedArray>>,
    bias: Option<&Bound<'py, PyUntypedArray>>,
    eps: f64,
    rms: bool,
) -> PyResult<AddNormArrays<'py>> {
    let args = (
        x,
        residual,
        normalized_shape.as_slice(),
        weight,
        bias,
        eps,
        rms,
    );
    match dtype_name(x)?.as_str() {
        "float32" => add_norm::<f32>(args),
        "float64" => add_norm::<f64>(args),
        "float16" => add_norm::<f16>(args),
        "bfloat16" => add_norm::<bf16>(args),
        other => Err(unsupported(other)),
    }
}

/// sum, y, mean, rstd.
type AddNormArrays<'py> = (
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
);

type AddNormArgs<'a, 'py> = (
    &'a Bound<'py, PyUntypedArray>,
    &'a Bound<'py, PyUntypedArray>,
    &'a [usize],
    Option<&'a Bound<'py, PyUntypedArray>>,
    Option<&'a Bound<'py, PyUntypedArray>>,
    f64,
    bool,
);

fn add_norm<'py, T>(
    (x, residual, normalized_shape, weight, bias, eps, rms): AddNormArgs<'_, 'py>,
) -> PyResult<AddNormArrays<'py>>
where
    T: Element + numpy::Element,
    T::Compute: numpy::Element,
{
    let py = x.py();
    if rms && bias.is_some() {
        return Err(LayerNormError::new_err("RMSNorm has no bias (shift β)"));
    }
    let shape = x.shape().to_vec();
    let rows_cols = RowsCols::with_normalized_shape(&shape, normalized_shape).map_err(to_py)?;
    if residual.shape() != shape.as_slice() {
        return Err(ShapeError::new_err(format!(
            "residual has shape {:?}, expected {shape:?} like x",
            residual.shape()
        )));
    }
    let (x, r) = (
        typed::<T>(x, "x", T::NAME)?,
        typed::<T>(residual, "residual", T::NAME)?,
    );
    let w = param::<T>(weight, "weight", normalized_shape)?;
    let b = param::<T>(bias, "bias", normalized_shape)?;
    let (xs, rs) = (slice(&x, "x")?, slice(&r, "residual")?);
    let ws = w.as_ref().map(|w| slice(w, "weight")).transpose()?;
    let bs = b.as_ref().map(|b| slice(b, "bias")).transpose()?;
    let cols = rows_cols.cols;
    let out = pool::run(py, xs.len(), |par| {
        if rms {
            rms_norm::forward_residual(xs, rs, cols, ws, eps, par)
        } else {
            layer_norm::forward_residual(
                xs,
                rs,
                cols,
                Affine {
                    weight: ws,
                    bias: bs,
                },
                eps,
                par,
            )
        }
    })
    .map_err(to_py)?;
    let sum = PyArray1::from_vec(py, out.sum).reshape(shape.clone())?;
    let y = PyArray1::from_vec(py, out.y).reshape(shape)?;
    let mean = PyArray1::from_vec(py, out.stats.mean);
    let rstd = PyArray1::from_vec(py, out.stats.rstd);
    Ok((
        sum.into_any(),
        y.into_any(),
        mean.into_any(),
        rstd.into_any(),
    ))
}
