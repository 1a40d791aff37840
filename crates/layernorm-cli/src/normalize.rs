//! `layernorm normalize`: read, validate, normalize, then write every output atomically.

use std::path::Path;

use anyhow::{bail, Context, Result};
use layernorm::layout::{resolve_axis, stats_shape, RowsCols};
use layernorm::{layer_norm, rms_norm, Affine, Element, Float, Parallelism};

use crate::npy::{self, Staged, Tensor};
use crate::{NormKind, NormalizeArgs};

const PAR: Parallelism = Parallelism::Rayon;

/// What one run computes, whatever the element type.
struct Outputs {
    y: Tensor,
    sum: Option<Tensor>,
    /// Per-row statistics as f32 (ONNX's Mean/InvStdDev outputs are float); `mean` is empty
    /// for RMSNorm.
    mean: Vec<f32>,
    rstd: Vec<f32>,
}

/// Element types the CLI reads and writes.
trait NpyFloat: Element {
    fn from_tensor(t: &Tensor) -> Vec<Self>;
    fn tensor(shape: Vec<usize>, data: Vec<Self>) -> Tensor;
}

impl NpyFloat for f32 {
    fn from_tensor(t: &Tensor) -> Vec<Self> {
        t.to_f32()
    }
    fn tensor(shape: Vec<usize>, data: Vec<Self>) -> Tensor {
        Tensor::F32 { shape, data }
    }
}

impl NpyFloat for f64 {
    fn from_tensor(t: &Tensor) -> Vec<Self> {
        t.to_f64()
    }
    fn tensor(shape: Vec<usize>, data: Vec<Self>) -> Tensor {
        Tensor::F64 { shape, data }
    }
}

pub fn run(args: &NormalizeArgs) -> Result<()> {
    if args.residual.is_some() != args.sum_output.is_some() {
        bail!("--residual and --sum-output go together: the fused add writes the sum");
    }
    if args.kind == NormKind::Rms && args.bias.is_some() {
        bail!("--bias: RMSNorm has no shift β (only --weight)");
    }
    check_destinations(args)?;
    let input = npy::read(&args.input)?;
    let shape = input.shape().to_vec();
    let rows_cols = RowsCols::split_at_axis(&shape, args.axis)?;
    let start = resolve_axis(args.axis, shape.len())?;
    let param_shape = &shape[start..];
    let weight = read_shaped(args.weight.as_deref(), "weight", param_shape)?;
    let bias = read_shaped(args.bias.as_deref(), "bias", param_shape)?;
    let residual = read_shaped(args.residual.as_deref(), "residual", &shape)?;
    let params = Params {
        weight,
        bias,
        residual,
    };

    let outputs = match &input {
        Tensor::F32 { data, .. } => compute::<f32>(args, data, &shape, rows_cols.cols, &params)?,
        Tensor::F64 { data, .. } => compute::<f64>(args, data, &shape, rows_cols.cols, &params)?,
    };

    // Write everything to temporary files first; rename only when all are complete.
    let mut staged = vec![Staged::new(&args.output, |w| {
        npy::write_tensor(w, &outputs.y)
    })?];
    if let (Some(path), Some(sum)) = (&args.sum_output, &outputs.sum) {
        staged.push(Staged::new(path, |w| npy::write_tensor(w, sum))?);
    }
    if let Some(path) = &args.stats {
        let st_shape = stats_shape(&shape, shape.len() - start);
        let mut arrays: Vec<(&str, &[usize], &[f32])> = vec![];
        if !outputs.mean.is_empty() {
            arrays.push(("mean", &st_shape, &outputs.mean));
        }
        arrays.push(("rstd", &st_shape, &outputs.rstd));
        staged.push(Staged::new(path, |w| npy::write_npz(w, &arrays))?);
    }
    for file in staged {
        file.commit()?;
    }
    Ok(())
}

/// Every output must go to its own path, and none may be an existing folder: otherwise one
/// output could be renamed into place and the next fail, leaving a partial result.
fn check_destinations(args: &NormalizeArgs) -> Result<()> {
    let outputs: Vec<&Path> = [
        Some(args.output.as_path()),
        args.stats.as_deref(),
        args.sum_output.as_deref(),
    ]
    .into_iter()
    .flatten()
    .collect();
    for (i, path) in outputs.iter().enumerate() {
        if path.is_dir() {
            bail!("{} is a folder: outputs are files", path.display());
        }
        if outputs[..i].contains(path) {
            bail!("{} is given for two outputs", path.display());
        }
    }
    Ok(())
}

/// The optional tensors, already checked against their expected shapes.
struct Params {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    residual: Option<Tensor>,
}

fn compute<T: NpyFloat>(
    args: &NormalizeArgs,
    x: &[T],
    shape: &[usize],
    cols: usize,
    params: &Params,
) -> Result<Outputs> {
    let convert = |t: &Option<Tensor>| t.as_ref().map(T::from_tensor);
    let (w, b, r) = (
        convert(&params.weight),
        convert(&params.bias),
        convert(&params.residual),
    );
    let affine = Affine {
        weight: w.as_deref(),
        bias: b.as_deref(),
    };
    let narrow = |v: Vec<T::Compute>| v.into_iter().map(|s| s.to_f64() as f32).collect();
    let (y, sum, mean, rstd) = match (args.kind, r) {
        (NormKind::Layer, None) => {
            let (y, stats) = layer_norm::forward(x, cols, affine, args.eps, PAR)?;
            (y, None, stats.mean, stats.rstd)
        }
        (NormKind::Rms, None) => {
            let (y, rstd) = rms_norm::forward(x, cols, affine.weight, args.eps, PAR)?;
            (y, None, vec![], rstd)
        }
        (NormKind::Layer, Some(r)) => {
            let out = layer_norm::forward_residual(x, &r, cols, affine, args.eps, PAR)?;
            (out.y, Some(out.sum), out.stats.mean, out.stats.rstd)
        }
        (NormKind::Rms, Some(r)) => {
            let out = rms_norm::forward_residual(x, &r, cols, affine.weight, args.eps, PAR)?;
            (out.y, Some(out.sum), vec![], out.stats.rstd)
        }
    };
    Ok(Outputs {
        y: T::tensor(shape.to_vec(), y),
        sum: sum.map(|s| T::tensor(shape.to_vec(), s)),
        mean: narrow(mean),
        rstd: narrow(rstd),
    })
}

/// Reads γ, β or the residual and checks its shape.
fn read_shaped(path: Option<&Path>, what: &str, expected: &[usize]) -> Result<Option<Tensor>> {
    let Some(path) = path else { return Ok(None) };
    let tensor = npy::read(path).with_context(|| format!("reading the {what}"))?;
    if tensor.shape() != expected {
        let whose = if what == "residual" {
            "the input's shape"
        } else {
            "the normalized dims of the input"
        };
        bail!(
            "{what} {} has shape {:?}, expected {:?} ({whose})",
            path.display(),
            tensor.shape(),
            expected
        );
    }
    Ok(Some(tensor))
}
