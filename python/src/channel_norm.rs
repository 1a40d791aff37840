//! `batch_norm_*` and `group_norm_*`: dtype dispatch around the core's channel
//! normalizations — `BatchNorm` (training and eval), `GroupNorm`, and `InstanceNorm` (passed
//! here as `groups=None`). Parameters and running statistics have x's dtype; the saved
//! statistics are `T::Compute` (float32, or float64 for float64 input), flat.

use layernorm::batch_norm::{BatchNorm, RunningStats, RunningStatsMut};
use layernorm::group_norm::{GroupNorm, InstanceNorm};
use layernorm::layout::resolve_axis;
use layernorm::{bf16, f16, Affine, Element, GradMask, Gradients, StatsRef};
use numpy::{
    PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyReadwriteArrayDyn, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyAny;

use crate::errors::{to_py, DTypeError, LayerNormError, OutputError, ShapeError};
use crate::layer_norm::{c_contiguous, dtype_name, param, slice, typed, unsupported};
use crate::pool;

type Array<'py> = Bound<'py, PyAny>;
type Untyped<'py> = Bound<'py, PyUntypedArray>;
type Arrays<'py> = (Array<'py>, Array<'py>, Array<'py>);
type MaybeArrays<'py> = (Option<Array<'py>>, Option<Array<'py>>, Option<Array<'py>>);

/// Calls `$f::<T>(args…)` for x's element type.
macro_rules! dispatch {
    ($x:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match dtype_name($x)?.as_str() {
            "float32" => $f::<f32>($($arg),*),
            "float64" => $f::<f64>($($arg),*),
            "float16" => $f::<f16>($($arg),*),
            "bfloat16" => $f::<bf16>($($arg),*),
            other => Err(unsupported(other)),
        }
    };
}
pub(crate) use dispatch;

/// The number of channels of `shape` along `channel_axis` (γ, β and running statistics have
/// one value per channel).
fn channels(shape: &[usize], channel_axis: isize) -> PyResult<usize> {
    let axis = resolve_axis(channel_axis, shape.len()).map_err(to_py)?;
    Ok(shape[axis])
}

/// `grad_out`, checked to have x's shape, borrowed as T.
pub(crate) fn grad_out_of<'py, T: Element + numpy::Element>(
    grad_out: &Untyped<'py>,
    shape: &[usize],
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    if grad_out.shape() != shape {
        return Err(ShapeError::new_err(format!(
            "grad_out has shape {:?}, expected {shape:?} like x",
            grad_out.shape()
        )));
    }
    typed::<T>(grad_out, "grad_out", T::NAME)
}

/// A running statistic to update in place: a writable C-contiguous array of shape
/// `(channels,)` and x's dtype, not overlapping any other argument.
fn writable<'py, T: Element + numpy::Element>(
    a: &Untyped<'py>,
    what: &str,
    channels: usize,
) -> PyResult<PyReadwriteArrayDyn<'py, T>> {
    if a.shape() != [channels] {
        return Err(ShapeError::new_err(format!(
            "{what} has shape {:?}, expected ({channels},): one value per channel",
            a.shape()
        )));
    }
    let array = a.cast::<PyArrayDyn<T>>().map_err(|_| {
        let name = dtype_name(a).unwrap_or_default();
        DTypeError::new_err(format!(
            "{what} has dtype {name}, expected {} like x (it is updated in place)",
            T::NAME
        ))
    })?;
    c_contiguous(a, what)?;
    array.try_readwrite().map_err(|e| {
        OutputError::new_err(format!(
            "{what} cannot be updated in place (read-only, or overlapping another argument): {e}"
        ))
    })
}

/// A running statistic that is only read (eval mode): shape `(channels,)`, x's dtype.
fn readable<'py, T: Element + numpy::Element>(
    a: &Untyped<'py>,
    what: &str,
    channels: usize,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    if a.shape() != [channels] {
        return Err(ShapeError::new_err(format!(
            "{what} has shape {:?}, expected ({channels},): one value per channel",
            a.shape()
        )));
    }
    typed::<T>(a, what, T::NAME)
}

/// Both running statistics, or neither.
fn pair<'a, 'py>(
    mean: Option<&'a Untyped<'py>>,
    var: Option<&'a Untyped<'py>>,
) -> PyResult<Option<(&'a Untyped<'py>, &'a Untyped<'py>)>> {
    match (mean, var) {
        (Some(m), Some(v)) => Ok(Some((m, v))),
        (None, None) => Ok(None),
        _ => Err(LayerNormError::new_err(
            "running_mean and running_var must be given together",
        )),
    }
}

fn eval_needs_running_stats() -> PyErr {
    LayerNormError::new_err(
        "running_mean and running_var are required in eval mode (training=False)",
    )
}

/// `(dx, dweight, dbias)` as arrays: dx shaped like x, the others flat.
pub(crate) fn wrap_grads<'py, T: Element + numpy::Element>(
    py: Python<'py>,
    grads: Gradients<T>,
    shape: Vec<usize>,
) -> PyResult<MaybeArrays<'py>> {
    let wrap = |v: Option<Vec<T>>| v.map(|v| PyArray1::from_vec(py, v).into_any());
    let dx = match grads.dx {
        Some(dx) => Some(PyArray1::from_vec(py, dx).reshape(shape)?.into_any()),
        None => None,
    };
    Ok((dx, wrap(grads.dweight), wrap(grads.dbias)))
}

pub(crate) fn grad_mask(mask: (bool, bool, bool)) -> GradMask {
    GradMask {
        input: mask.0,
        weight: mask.1,
        bias: mask.2,
    }
}

// ---------------------------------------------------------------------------------------------
// BatchNorm

/// x, weight, bias, running mean, running var, training, momentum, eps, channel axis.
type BatchForwardArgs<'a, 'py> = (
    &'a Untyped<'py>,
    Option<&'a Untyped<'py>>,
    Option<&'a Untyped<'py>>,
    Option<&'a Untyped<'py>>,
    Option<&'a Untyped<'py>>,
    bool,
    f64,
    f64,
    isize,
);

/// BatchNorm of `x`: returns `(y, mean, rstd)`, y shaped like x, the batch statistics flat
/// `(C,)` in training mode and empty in eval mode (as PyTorch's `native_batch_norm`). In
/// training mode `running_mean`/`running_var`, if given, are updated in place; in eval mode
/// they are required and used.
#[pyfunction]
#[pyo3(signature = (x, weight=None, bias=None, running_mean=None, running_var=None, training=false, momentum=0.1, eps=1e-5, channel_axis=1))]
#[allow(clippy::too_many_arguments)] // mirrors the Python signature
pub fn batch_norm_forward<'py>(
    x: &Untyped<'py>,
    weight: Option<&Untyped<'py>>,
    bias: Option<&Untyped<'py>>,
    running_mean: Option<&Untyped<'py>>,
    running_var: Option<&Untyped<'py>>,
    training: bool,
    momentum: f64,
    eps: f64,
    channel_axis: isize,
) -> PyResult<Arrays<'py>> {
    let args = (
        x,
        weight,
        bias,
        running_mean,
        running_var,
        training,
        momentum,
        eps,
        channel_axis,
    );
    dispatch!(x, batch_forward(args))
}

fn batch_forward<'py, T>(
    (x, weight, bias, running_mean, running_var, training, momentum, eps, channel_axis): BatchForwardArgs<'_, 'py>,
) -> PyResult<Arrays<'py>>
where
    T: Element + numpy::Element,
    T::Compute: numpy::Element,
{
    let py = x.py();
    let shape = x.shape().to_vec();
    let c = channels(&shape, channel_axis)?;
    let bn = BatchNorm {
        channel_axis,
        eps,
        momentum,
    };
    let x = typed::<T>(x, "x", T::NAME)?;
    let w = param::<T>(weight, "weight", &[c])?;
    let b = param::<T>(bias, "bias", &[c])?;
    let xs = slice(&x, "x")?;
    let affine = Affine {
        weight: w.as_ref().map(|w| slice(w, "weight")).transpose()?,
        bias: b.as_ref().map(|b| slice(b, "bias")).transpose()?,
    };
    let running = pair(running_mean, running_var)?;
    let (y, mean, rstd) = if training {
        let mut stats = match running {
            Some((m, v)) => Some((
                writable::<T>(m, "running_mean", c)?,
                writable::<T>(v, "running_var", c)?,
            )),
            None => None,
        };
        let running = match stats.as_mut() {
            Some((m, v)) => Some(RunningStatsMut {
                mean: m
                    .as_slice_mut()
                    .map_err(|_| ShapeError::new_err("running_mean must be C-contiguous"))?,
                var: v
                    .as_slice_mut()
                    .map_err(|_| ShapeError::new_err("running_var must be C-contiguous"))?,
            }),
            None => None,
        };
        let (y, stats) = pool::run(py, xs.len(), |par| {
            bn.forward_train(xs, &shape, affine, running, par)
        })
        .map_err(to_py)?;
        (y, stats.mean, stats.rstd)
    } else {
        let (m, v) = running.ok_or_else(eval_needs_running_stats)?;
        let m = readable::<T>(m, "running_mean", c)?;
        let v = readable::<T>(v, "running_var", c)?;
        let running = RunningStats {
            mean: slice(&m, "running_mean")?,
            var: slice(&v, "running_var")?,
        };
        let y = pool::run(py, xs.len(), |par| {
            bn.forward_eval(xs, &shape, affine, running, par)
        })
        .map_err(to_py)?;
        (y, vec![], vec![])
    };
    let y = PyArray1::from_vec(py, y).reshape(shape)?;
    let mean = PyArray1::from_vec(py, mean);
    let rstd = PyArray1::from_vec(py, rstd);
    Ok((y.into_any(), mean.into_any(), rstd.into_any()))
}

/// grad_out, x, mean, rstd, weight, running mean, running var, training, eps, channel axis,
/// output mask.
type BatchBackwardArgs<'a, 'py> = (
    &'a Untyped<'py>,
    &'a Untyped<'py>,
    Option<&'a Untyped<'py>>,
    Option<&'a Untyped<'py>>,
    Option<&'a Untyped<'py>>,
    Option<&'a Untyped<'py>>,
    Option<&'a Untyped<'py>>,
    bool,
    f64,
    isize,
    (bool, bool, bool),
);

/// Gradients `(dx, dweight, dbias)` (dx shaped like x, the others flat, `None` where not
/// requested) of BatchNorm: from the saved batch statistics `(mean, rstd)` in training mode,
/// from the running statistics (constants) in eval mode.
#[pyfunction]
#[pyo3(signature = (grad_out, x, mean=None, rstd=None, weight=None, running_mean=None, running_var=None, training=true, eps=1e-5, channel_axis=1, output_mask=(true, true, true)))]
#[allow(clippy::too_many_arguments)] // mirrors the Python signature
pub fn batch_norm_backward<'py>(
    grad_out: &Untyped<'py>,
    x: &Untyped<'py>,
    mean: Option<&Untyped<'py>>,
    rstd: Option<&Untyped<'py>>,
    weight: Option<&Untyped<'py>>,
    running_mean: Option<&Untyped<'py>>,
    running_var: Option<&Untyped<'py>>,
    training: bool,
    eps: f64,
    channel_axis: isize,
    output_mask: (bool, bool, bool),
) -> PyResult<MaybeArrays<'py>> {
    let args = (
        grad_out,
        x,
        mean,
        rstd,
        weight,
        running_mean,
        running_var,
        training,
        eps,
        channel_axis,
        output_mask,
    );
    dispatch!(x, batch_backward(args))
}

fn batch_backward<'py, T>(
    (grad_out, x, mean, rstd, weight, running_mean, running_var, training, eps, channel_axis, mask): BatchBackwardArgs<'_, 'py>,
) -> PyResult<MaybeArrays<'py>>
where
    T: Element + numpy::Element,
    T::Compute: numpy::Element,
{
    let py = x.py();
    let shape = x.shape().to_vec();
    let c = channels(&shape, channel_axis)?;
    let bn = BatchNorm {
        channel_axis,
        eps,
        ..BatchNorm::default()
    };
    let dy = grad_out_of::<T>(grad_out, &shape)?;
    let x = typed::<T>(x, "x", T::NAME)?;
    let w = param::<T>(weight, "weight", &[c])?;
    let (xs, dys) = (slice(&x, "x")?, slice(&dy, "grad_out")?);
    let ws = w.as_ref().map(|w| slice(w, "weight")).transpose()?;
    let mask = grad_mask(mask);
    let grads = if training {
        let (Some(mean), Some(rstd)) = (mean, rstd) else {
            return Err(LayerNormError::new_err(
                "the saved mean and rstd are required in training mode",
            ));
        };
        let stats_dtype = <T::Compute as layernorm::Float>::NAME;
        let mean = typed::<T::Compute>(mean, "mean", stats_dtype)?;
        let rstd = typed::<T::Compute>(rstd, "rstd", stats_dtype)?;
        let stats = StatsRef {
            mean: slice(&mean, "mean")?,
            rstd: slice(&rstd, "rstd")?,
        };
        pool::run(py, xs.len(), |par| {
            bn.backward_train(dys, xs, &shape, stats, ws, mask, par)
        })
    } else {
        let (m, v) = pair(running_mean, running_var)?.ok_or_else(eval_needs_running_stats)?;
        let m = readable::<T>(m, "running_mean", c)?;
        let v = readable::<T>(v, "running_var", c)?;
        let running = RunningStats {
            mean: slice(&m, "running_mean")?,
            var: slice(&v, "running_var")?,
        };
        pool::run(py, xs.len(), |par| {
            bn.backward_eval(dys, xs, &shape, running, ws, mask, par)
        })
    }
    .map_err(to_py)?;
    wrap_grads(py, grads, shape)
}

// ---------------------------------------------------------------------------------------------
// GroupNorm and InstanceNorm (groups = None)

/// The GroupNorm (or InstanceNorm, for `groups=None`) of a call.
#[derive(Clone, Copy)]
enum Grouping {
    Group(GroupNorm),
    Instance(InstanceNorm),
}

impl Grouping {
    fn new(groups: Option<usize>, channel_axis: isize, eps: f64) -> Self {
        match groups {
            Some(groups) => Grouping::Group(GroupNorm {
                groups,
                channel_axis,
                eps,
            }),
            None => Grouping::Instance(InstanceNorm { channel_axis, eps }),
        }
    }
}

/// x, groups, weight, bias, eps, channel axis.
type GroupForwardArgs<'a, 'py> = (
    &'a Untyped<'py>,
    Option<usize>,
    Option<&'a Untyped<'py>>,
    Option<&'a Untyped<'py>>,
    f64,
    isize,
);

/// GroupNorm of `x` with `groups` groups (InstanceNorm for `groups=None`): returns
/// `(y, mean, rstd)`, y shaped like x, the statistics flat `(N·G,)`, sample-major.
#[pyfunction]
#[pyo3(signature = (x, groups=None, weight=None, bias=None, eps=1e-5, channel_axis=1))]
pub fn group_norm_forward<'py>(
    x: &Untyped<'py>,
    groups: Option<usize>,
    weight: Option<&Untyped<'py>>,
    bias: Option<&Untyped<'py>>,
    eps: f64,
    channel_axis: isize,
) -> PyResult<Arrays<'py>> {
    let args = (x, groups, weight, bias, eps, channel_axis);
    dispatch!(x, group_forward(args))
}

fn group_forward<'py, T>(
    (x, groups, weight, bias, eps, channel_axis): GroupForwardArgs<'_, 'py>,
) -> PyResult<Arrays<'py>>
where
    T: Element + numpy::Element,
    T::Compute: numpy::Element,
{
    let py = x.py();
    let shape = x.shape().to_vec();
    let c = channels(&shape, channel_axis)?;
    let x = typed::<T>(x, "x", T::NAME)?;
    let w = param::<T>(weight, "weight", &[c])?;
    let b = param::<T>(bias, "bias", &[c])?;
    let xs = slice(&x, "x")?;
    let affine = Affine {
        weight: w.as_ref().map(|w| slice(w, "weight")).transpose()?,
        bias: b.as_ref().map(|b| slice(b, "bias")).transpose()?,
    };
    let norm = Grouping::new(groups, channel_axis, eps);
    let (y, stats) = pool::run(py, xs.len(), |par| match norm {
        Grouping::Group(gn) => gn.forward(xs, &shape, affine, par),
        Grouping::Instance(inn) => inn.forward(xs, &shape, affine, par),
    })
    .map_err(to_py)?;
    let y = PyArray1::from_vec(py, y).reshape(shape)?;
    let mean = PyArray1::from_vec(py, stats.mean);
    let rstd = PyArray1::from_vec(py, stats.rstd);
    Ok((y.into_any(), mean.into_any(), rstd.into_any()))
}

/// grad_out, x, mean, rstd, groups, weight, channel axis, output mask.
type GroupBackwardArgs<'a, 'py> = (
    &'a Untyped<'py>,
    &'a Untyped<'py>,
    &'a Untyped<'py>,
    &'a Untyped<'py>,
    Option<usize>,
    Option<&'a Untyped<'py>>,
    isize,
    (bool, bool, bool),
);

/// Gradients `(dx, dweight, dbias)` (dx shaped like x, the others flat, `None` where not
/// requested) of GroupNorm (InstanceNorm for `groups=None`), from the saved statistics.
#[pyfunction]
#[pyo3(signature = (grad_out, x, mean, rstd, groups=None, weight=None, channel_axis=1, output_mask=(true, true, true)))]
#[allow(clippy::too_many_arguments)] // mirrors the Python signature
pub fn group_norm_backward<'py>(
    grad_out: &Untyped<'py>,
    x: &Untyped<'py>,
    mean: &Untyped<'py>,
    rstd: &Untyped<'py>,
    groups: Option<usize>,
    weight: Option<&Untyped<'py>>,
    channel_axis: isize,
    output_mask: (bool, bool, bool),
) -> PyResult<MaybeArrays<'py>> {
    let args = (
        grad_out,
        x,
        mean,
        rstd,
        groups,
        weight,
        channel_axis,
        output_mask,
    );
    dispatch!(x, group_backward(args))
}

fn group_backward<'py, T>(
    (grad_out, x, mean, rstd, groups, weight, channel_axis, mask): GroupBackwardArgs<'_, 'py>,
) -> PyResult<MaybeArrays<'py>>
where
    T: Element + numpy::Element,
    T::Compute: numpy::Element,
{
    let py = x.py();
    let shape = x.shape().to_vec();
    let c = channels(&shape, channel_axis)?;
    let dy = grad_out_of::<T>(grad_out, &shape)?;
    let x = typed::<T>(x, "x", T::NAME)?;
    let stats_dtype = <T::Compute as layernorm::Float>::NAME;
    let mean = typed::<T::Compute>(mean, "mean", stats_dtype)?;
    let rstd = typed::<T::Compute>(rstd, "rstd", stats_dtype)?;
    let w = param::<T>(weight, "weight", &[c])?;
    let (xs, dys) = (slice(&x, "x")?, slice(&dy, "grad_out")?);
    let ws = w.as_ref().map(|w| slice(w, "weight")).transpose()?;
    let stats = StatsRef {
        mean: slice(&mean, "mean")?,
        rstd: slice(&rstd, "rstd")?,
    };
    let mask = grad_mask(mask);
    let norm = Grouping::new(groups, channel_axis, layernorm::group_norm::DEFAULT_EPS);
    let grads = pool::run(py, xs.len(), |par| match norm {
        Grouping::Group(gn) => gn.backward(dys, xs, &shape, stats, ws, mask, par),
        Grouping::Instance(inn) => inn.backward(dys, xs, &shape, stats, ws, mask, par),
    })
    .map_err(to_py)?;
    wrap_grads(py, grads, shape)
}
