//! `layernorm normalize`: read, validate, normalize, then write every output atomically.

use std::path::Path;

use anyhow::{bail, Context, Result};
use layernorm::layout::{resolve_axis, stats_shape, RowsCols};
use layernorm::{layer_norm, Affine, Parallelism, Stats};

use crate::npy::{self, Staged, Tensor};
use crate::NormalizeArgs;

const PAR: Parallelism = Parallelism::Rayon;

pub fn run(args: &NormalizeArgs) -> Result<()> {
    let input = npy::read(&args.input)?;
    let shape = input.shape().to_vec();
    let rows_cols = RowsCols::split_at_axis(&shape, args.axis)?;
    let start = resolve_axis(args.axis, shape.len())?;
    let param_shape = &shape[start..];
    let weight = read_param(args.weight.as_deref(), "weight", param_shape)?;
    let bias = read_param(args.bias.as_deref(), "bias", param_shape)?;

    let (output, stats) = match &input {
        Tensor::F32 { data, .. } => {
            let (w, b) = (
                weight.as_ref().map(Tensor::to_f32),
                bias.as_ref().map(Tensor::to_f32),
            );
            let affine = Affine {
                weight: w.as_deref(),
                bias: b.as_deref(),
            };
            let (y, stats) = layer_norm::forward(data, rows_cols.cols, affine, args.eps, PAR)?;
            (
                Tensor::F32 {
                    shape: shape.clone(),
                    data: y,
                },
                stats,
            )
        }
        Tensor::F64 { data, .. } => {
            let (w, b) = (
                weight.as_ref().map(Tensor::to_f64),
                bias.as_ref().map(Tensor::to_f64),
            );
            let affine = Affine {
                weight: w.as_deref(),
                bias: b.as_deref(),
            };
            let (y, stats) = layer_norm::forward(data, rows_cols.cols, affine, args.eps, PAR)?;
            // The statistics file holds float32, as ONNX's Mean/InvStdDev outputs do.
            let narrow = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
            (
                Tensor::F64 {
                    shape: shape.clone(),
                    data: y,
                },
                Stats {
                    mean: narrow(stats.mean),
                    rstd: narrow(stats.rstd),
                },
            )
        }
    };

    // Write everything to temporary files first; rename only when all are complete.
    let out_file = Staged::new(&args.output, |w| npy::write_tensor(w, &output))?;
    let stats_file = match &args.stats {
        Some(path) => {
            let st_shape = stats_shape(&shape, shape.len() - start);
            Some(Staged::new(path, |w| {
                npy::write_npz(
                    w,
                    &[
                        ("mean", &st_shape, &stats.mean),
                        ("rstd", &st_shape, &stats.rstd),
                    ],
                )
            })?)
        }
        None => None,
    };
    out_file.commit()?;
    if let Some(f) = stats_file {
        f.commit()?;
    }
    Ok(())
}

/// Reads γ or β and checks that its shape is the normalized shape.
fn read_param(path: Option<&Path>, what: &str, expected: &[usize]) -> Result<Option<Tensor>> {
    let Some(path) = path else { return Ok(None) };
    let tensor = npy::read(path).with_context(|| format!("reading the {what}"))?;
    if tensor.shape() != expected {
        bail!(
            "{what} {} has shape {:?}, expected {:?} (the normalized dims of the input)",
            path.display(),
            tensor.shape(),
            expected
        );
    }
    Ok(Some(tensor))
}
