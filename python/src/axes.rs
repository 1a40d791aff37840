//! `layer_norm_axes_forward` and `layer_norm_axes_backward`: LayerNorm over any set of axes
//! (Keras' `LayerNormalization(axis=[1, 3])`), dtype dispatch around the core's
//! `layer_norm::forward_axes` and `backward_axes`.

use layernorm::layer_norm::{backward_axes, forward_axes};
use layernorm::layout::AxesLayout;
use layernorm::{bf16, f16, Affine, Element, StatsRef};
use numpy::{PyArray1, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyAny;

use crate::channel_norm::{dispatch, grad_mask, grad_out_of, wrap_grads};
use crate::errors::to_py;
use crate::layer_norm::{dtype_name, param, slice, typed, unsupported};
use crate::pool;

type Array<'py> = Bound<'py, PyAny>;
type Untyped<'py> = Bound<'py, PyUntypedArray>;
type Arrays<'py> = (Array<'py>, Array<'py>, Array<'py>);
type MaybeArrays<'py> = (Option<Array<'py>>, Option<Array<'py>>, Option<Array<'py>>);

/// x, axes, weight, bias, eps.
type ForwardArgs<'a, 'py> = (
    &'a Untyped<'py>,
    &'a [isize],
    Option<&'a Untyped<'py>>,
    Option<&'a Untyped<'py>>,
    f64,
);

/// LayerNorm of `x` over `axes` (any axes, negative counting from the end): returns
/// `(y, mean, rstd)`, y shaped like x, the statistics flat (one per index of the other axes,
/// in their order). γ/β have the normalized axes' sizes, in increasing axis order.
#[pyfunction]
#[pyo3(signature = (x, axes, weight=None, bias=None, eps=1e-5))]
pub fn layer_norm_axes_forward<'py>(
    x: &Untyped<'py>,
    axes: Vec<isize>,
    weight: Option<&Untyped<'py>>,
    bias: Option<&Untyped<'py>>,
    eps: f64,
) -> PyResult<Arrays<'py>> {
    let args = (x, axes.as_slice(), weight, bias, eps);
    dispatch!(x, forward(args))
}

fn forward<'py, T>((x, axes, weight, bias, eps): ForwardArgs<'_, 'py>) -> PyResult<Arrays<'py>>
where
    T: Element + numpy::Element,
    T::Compute: numpy::Element,
{
    let py = x.py();
    let shape = x.shape().to_vec();
    let param_shape = AxesLayout::new(&shape, axes).map_err(to_py)?.param_shape();
    let x = typed::<T>(x, "x", T::NAME)?;
    let w = param::<T>(weight, "weight", &param_shape)?;
    let b = param::<T>(bias, "bias", &param_shape)?;
    let xs = slice(&x, "x")?;
    let affine = Affine {
        weight: w.as_ref().map(|w| slice(w, "weight")).transpose()?,
        bias: b.as_ref().map(|b| slice(b, "bias")).transpose()?,
    };
    let (y, stats) = pool::run(py, xs.len(), |par| {
        forward_axes(xs, &shape, axes, affine, eps, par)
    })
    .map_err(to_py)?;
    let y = PyArray1::from_vec(py, y).reshape(shape)?;
    let mean = PyArray1::from_vec(py, stats.mean);
    let rstd = PyArray1::from_vec(py, stats.rstd);
    Ok((y.into_any(), mean.into_any(), rstd.into_any()))
}

/// grad_out, x, mean, rstd, axes, weight, output mask.
type BackwardArgs<'a, 'py> = (
    &'a Untyped<'py>,
    &'a Untyped<'py>,
    &'a Untyped<'py>,
    &'a Untyped<'py>,
    &'a [isize],
    Option<&'a Untyped<'py>>,
    (bool, bool, bool),
);

/// Gradients `(dx, dweight, dbias)` (dx shaped like x, the others flat, `None` where not
/// requested) of [`layer_norm_axes_forward`], from its saved statistics.
#[pyfunction]
#[pyo3(signature = (grad_out, x, mean, rstd, axes, weight=None, output_mask=(true, true, true)))]
pub fn layer_norm_axes_backward<'py>(
    grad_out: &Untyped<'py>,
    x: &Untyped<'py>,
    mean: &Untyped<'py>,
    rstd: &Untyped<'py>,
    axes: Vec<isize>,
    weight: Option<&Untyped<'py>>,
    output_mask: (bool, bool, bool),
) -> PyResult<MaybeArrays<'py>> {
    let args = (
        grad_out,
        x,
        mean,
        rstd,
        axes.as_slice(),
        weight,
        output_mask,
    );
    dispatch!(x, backward(args))
}

fn backward<'py, T>(
    (grad_out, x, mean, rstd, axes, weight, mask): BackwardArgs<'_, 'py>,
) -> PyResult<MaybeArrays<'py>>
where
    T: Element + numpy::Element,
    T::Compute: numpy::Element,
{
    let py = x.py();
    let shape = x.shape().to_vec();
    let param_shape = AxesLayout::new(&shape, axes).map_err(to_py)?.param_shape();
    let dy = grad_out_of::<T>(grad_out, &shape)?;
    let x = typed::<T>(x, "x", T::NAME)?;
    let stats_dtype = <T::Compute as layernorm::Float>::NAME;
    let mean = typed::<T::Compute>(mean, "mean", stats_dtype)?;
    let rstd = typed::<T::Compute>(rstd, "rstd", stats_dtype)?;
    let w = param::<T>(weight, "weight", &param_shape)?;
    let (xs, dys) = (slice(&x, "x")?, slice(&dy, "grad_out")?);
    let ws = w.as_ref().map(|w| slice(w, "weight")).transpose()?;
    let stats = StatsRef {
        mean: slice(&mean, "mean")?,
        rstd: slice(&rstd, "rstd")?,
    };
    let mask = grad_mask(mask);
    let grads = pool::run(py, xs.len(), |par| {
        backward_axes(dys, xs, &shape, axes, stats, ws, mask, par)
    })
    .map_err(to_py)?;
    wrap_grads(py, grads, shape)
}
