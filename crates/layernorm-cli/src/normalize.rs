//! `layernorm normalize`: check the flags against the kind, read, validate, normalize, then
//! write every output atomically.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use layernorm::batch_norm::{self, BatchNorm, RunningStats, RunningStatsMut};
use layernorm::group_norm::{GroupNorm, InstanceNorm};
use layernorm::layout::{resolve_axis, stats_shape, AxesLayout, RowsCols};
use layernorm::{f16, layer_norm, rms_norm, Affine, Element, Float, Parallelism};

use crate::npy::{self, Staged, Tensor};
use crate::{NormKind, NormalizeArgs};

const PAR: Parallelism = Parallelism::Rayon;

/// The default channel axis of batch, group and instance: (N, C, …) as PyTorch and ONNX.
const DEFAULT_CHANNEL_AXIS: isize = 1;
/// The default first normalized axis of layer and rms.
const DEFAULT_AXIS: isize = -1;

/// What one run computes, whatever the element type.
struct Outputs {
    y: Tensor,
    sum: Option<Tensor>,
    /// The statistics as f32 (ONNX's Mean/InvStdDev outputs are float); `mean` is empty for
    /// RMSNorm, both are empty for eval-mode BatchNorm.
    mean: Vec<f32>,
    rstd: Vec<f32>,
    /// The updated running mean and variance (training BatchNorm with running statistics).
    running: Option<(Tensor, Tensor)>,
}

/// Element types the CLI reads and writes.
trait NpyFloat: Element {
    /// The tensor's values in this type: its own values when the dtypes match, otherwise
    /// each value rounded once (to nearest even) from its exact f64 value. γ, β, the
    /// residual and the running statistics take the input's dtype this way.
    fn from_tensor(t: &Tensor) -> Vec<Self> {
        t.to_f64().into_iter().map(Self::round_from_f64).collect()
    }
    fn tensor(shape: Vec<usize>, data: Vec<Self>) -> Tensor;
}

impl NpyFloat for f16 {
    fn from_tensor(t: &Tensor) -> Vec<Self> {
        match t {
            Tensor::F16 { data, .. } => data.clone(),
            _ => t.to_f64().into_iter().map(Self::round_from_f64).collect(),
        }
    }
    fn tensor(shape: Vec<usize>, data: Vec<Self>) -> Tensor {
        Tensor::F16 { shape, data }
    }
}

impl NpyFloat for f32 {
    fn from_tensor(t: &Tensor) -> Vec<Self> {
        match t {
            Tensor::F32 { data, .. } => data.clone(),
            _ => t.to_f64().into_iter().map(Self::round_from_f64).collect(),
        }
    }
    fn tensor(shape: Vec<usize>, data: Vec<Self>) -> Tensor {
        Tensor::F32 { shape, data }
    }
}

impl NpyFloat for f64 {
    fn tensor(shape: Vec<usize>, data: Vec<Self>) -> Tensor {
        Tensor::F64 { shape, data }
    }
}

use NormKind::{Batch, Group, Instance, Layer, Rms};

/// Rejects every flag that `--kind` does not use, and every incomplete combination, before
/// anything is read.
fn check_flags(args: &NormalizeArgs) -> Result<()> {
    let kind = args.kind;
    let given = |p: &Option<PathBuf>| p.is_some();
    let uses: [(&str, bool, &[NormKind]); 12] = [
        ("--axis", args.axis.is_some(), &[Layer, Rms]),
        ("--axes", args.axes.is_some(), &[Layer]),
        ("--groups", args.groups.is_some(), &[Group]),
        (
            "--channel-axis",
            args.channel_axis.is_some(),
            &[Batch, Group, Instance],
        ),
        ("--training", args.training, &[Batch]),
        ("--running-mean", given(&args.running_mean), &[Batch]),
        ("--running-var", given(&args.running_var), &[Batch]),
        ("--running-output", given(&args.running_output), &[Batch]),
        ("--momentum", args.momentum.is_some(), &[Batch]),
        ("--residual", given(&args.residual), &[Layer, Rms]),
        ("--sum-output", given(&args.sum_output), &[Layer, Rms]),
        (
            "--bias",
            given(&args.bias),
            &[Layer, Batch, Group, Instance],
        ),
    ];
    for (flag, is_given, kinds) in uses {
        if !is_given || kinds.contains(&kind) {
            continue;
        }
        if flag == "--bias" {
            bail!("--bias: RMSNorm has no shift β (only --weight)");
        }
        let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
        bail!(
            "{flag} applies to --kind {} only, not --kind {}",
            names.join(" or "),
            kind.name()
        );
    }
    if args.residual.is_some() != args.sum_output.is_some() {
        bail!("--residual and --sum-output go together: the fused add writes the sum");
    }
    if kind == Group && args.groups.is_none() {
        bail!("--kind group needs --groups G (the number of channel groups)");
    }
    if kind == Batch {
        if args.running_mean.is_some() != args.running_var.is_some() {
            bail!("--running-mean and --running-var go together");
        }
        let running = args.running_mean.is_some();
        if !args.training {
            if !running {
                bail!(
                    "eval-mode BatchNorm needs --running-mean and --running-var \
                     (or --training to use the batch statistics)"
                );
            }
            if args.running_output.is_some() {
                bail!("--running-output needs --training: eval mode does not update the running statistics");
            }
            if args.momentum.is_some() {
                bail!("--momentum needs --training and --running-output: it weights the running-statistics update");
            }
            if args.stats.is_some() {
                bail!(
                    "--stats: eval-mode BatchNorm has no batch statistics \
                     (it uses --running-mean/--running-var); add --training or drop --stats"
                );
            }
        } else if args.running_output.is_some() {
            if !running {
                bail!("--running-output needs --running-mean and --running-var: the statistics to update");
            }
        } else {
            if running {
                bail!(
                    "--running-mean/--running-var with --training are only read to write \
                     --running-output: give it, or drop them"
                );
            }
            if args.momentum.is_some() {
                bail!(
                    "--momentum needs --running-output: it weights the running-statistics update"
                );
            }
        }
    }
    Ok(())
}

/// How the input is cut into the groups that get their own statistics.
enum Geometry {
    /// layer, rms over the trailing dims from `start`: rows of `cols`.
    Rows { start: usize, cols: usize },
    /// layer over any axes.
    Axes {
        axes: Vec<isize>,
        layout: AxesLayout,
    },
    /// batch, group, instance: `channels` along `axis`.
    Channels { axis: isize, channels: usize },
}

impl Geometry {
    fn new(args: &NormalizeArgs, shape: &[usize]) -> Result<Self> {
        match args.kind {
            Layer | Rms => match &args.axes {
                Some(axes) => {
                    let layout = AxesLayout::new(shape, axes).context("--axes")?;
                    Ok(Geometry::Axes {
                        axes: axes.clone(),
                        layout,
                    })
                }
                None => {
                    let axis = args.axis.unwrap_or(DEFAULT_AXIS);
                    let rows_cols = RowsCols::split_at_axis(shape, axis)?;
                    let start = resolve_axis(axis, shape.len())?;
                    Ok(Geometry::Rows {
                        start,
                        cols: rows_cols.cols,
                    })
                }
            },
            Batch | Group | Instance => {
                let axis = args.channel_axis.unwrap_or(DEFAULT_CHANNEL_AXIS);
                let resolved = resolve_axis(axis, shape.len()).context("--channel-axis")?;
                Ok(Geometry::Channels {
                    axis,
                    channels: shape[resolved],
                })
            }
        }
    }

    /// The shape γ and β must have, and what it is, for error messages.
    fn param_shape(&self, shape: &[usize]) -> (Vec<usize>, &'static str) {
        match self {
            Geometry::Rows { start, .. } => {
                (shape[*start..].to_vec(), "the normalized dims of the input")
            }
            Geometry::Axes { layout, .. } => (layout.param_shape(), "the --axes dims"),
            Geometry::Channels { channels, .. } => (vec![*channels], "one value per channel"),
        }
    }

    /// The shape of the `mean` and `rstd` arrays that --stats writes.
    fn stats_shape(&self, kind: NormKind, shape: &[usize], groups: Option<usize>) -> Vec<usize> {
        match self {
            Geometry::Rows { start, .. } => stats_shape(shape, shape.len() - start),
            Geometry::Axes { layout, .. } => {
                let mut keep = shape.to_vec();
                for &a in &layout.axes {
                    keep[a] = 1;
                }
                keep
            }
            Geometry::Channels { channels, .. } => match kind {
                Group => vec![shape[0], groups.unwrap_or(1)],
                Instance => vec![shape[0], *channels],
                _ => vec![*channels],
            },
        }
    }
}

pub fn run(args: &NormalizeArgs) -> Result<()> {
    check_flags(args)?;
    check_destinations(args)?;
    let input = npy::read(&args.input)?;
    let shape = input.shape().to_vec();
    let geometry = Geometry::new(args, &shape)?;
    let (param_shape, whose) = geometry.param_shape(&shape);
    let read = |path: &Option<PathBuf>, what: &str, expected: &[usize], whose: &str| {
        read_shaped(path.as_deref(), what, expected, whose)
    };
    let params = Params {
        weight: read(&args.weight, "weight", &param_shape, whose)?,
        bias: read(&args.bias, "bias", &param_shape, whose)?,
        residual: read(&args.residual, "residual", &shape, "the input's shape")?,
        running_mean: read(&args.running_mean, "running mean", &param_shape, whose)?,
        running_var: read(&args.running_var, "running variance", &param_shape, whose)?,
    };

    let outputs = match &input {
        Tensor::F16 { data, .. } => compute::<f16>(args, data, &shape, &geometry, &params)?,
        Tensor::F32 { data, .. } => compute::<f32>(args, data, &shape, &geometry, &params)?,
        Tensor::F64 { data, .. } => compute::<f64>(args, data, &shape, &geometry, &params)?,
    };

    // Write everything to temporary files first; rename only when all are complete.
    let mut staged = vec![Staged::new(&args.output, |w| {
        npy::write_tensor(w, &outputs.y)
    })?];
    if let (Some(path), Some(sum)) = (&args.sum_output, &outputs.sum) {
        staged.push(Staged::new(path, |w| npy::write_tensor(w, sum))?);
    }
    if let Some(path) = &args.stats {
        let st_shape = geometry.stats_shape(args.kind, &shape, args.groups);
        let mut arrays: Vec<(&str, &[usize], &[f32])> = vec![];
        if !outputs.mean.is_empty() {
            arrays.push(("mean", &st_shape, &outputs.mean));
        }
        arrays.push(("rstd", &st_shape, &outputs.rstd));
        staged.push(Staged::new(path, |w| npy::write_npz(w, &arrays))?);
    }
    if let (Some(path), Some((mean, var))) = (&args.running_output, &outputs.running) {
        let arrays = [("running_mean", mean), ("running_var", var)];
        staged.push(Staged::new(path, |w| npy::write_npz_tensors(w, &arrays))?);
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
        args.running_output.as_deref(),
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
    running_mean: Option<Tensor>,
    running_var: Option<Tensor>,
}

fn compute<T: NpyFloat>(
    args: &NormalizeArgs,
    x: &[T],
    shape: &[usize],
    geometry: &Geometry,
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
    let eps = args.eps;
    let mut running = None;
    let (y, sum, stats_mean, stats_rstd) = match (geometry, args.kind) {
        (Geometry::Rows { cols, .. }, Layer) => match r {
            None => {
                let (y, stats) = layer_norm::forward(x, *cols, affine, eps, PAR)?;
                (y, None, stats.mean, stats.rstd)
            }
            Some(r) => {
                let out = layer_norm::forward_residual(x, &r, *cols, affine, eps, PAR)?;
                (out.y, Some(out.sum), out.stats.mean, out.stats.rstd)
            }
        },
        (Geometry::Rows { cols, .. }, _) => match r {
            None => {
                let (y, rstd) = rms_norm::forward(x, *cols, affine.weight, eps, PAR)?;
                (y, None, vec![], rstd)
            }
            Some(r) => {
                let out = rms_norm::forward_residual(x, &r, *cols, affine.weight, eps, PAR)?;
                (out.y, Some(out.sum), vec![], out.stats.rstd)
            }
        },
        (Geometry::Axes { axes, .. }, _) => {
            // The residual add first (rounded to T, as the fused kernels do), then the
            // normalization of the sum: the same result as a fused pass would give.
            let sum = r.map(|r| {
                x.iter()
                    .zip(&r)
                    .map(|(&a, &b)| T::narrow(a.widen() + b.widen()))
                    .collect::<Vec<T>>()
            });
            let source = sum.as_deref().unwrap_or(x);
            let (y, stats) = layer_norm::forward_axes(source, shape, axes, affine, eps, PAR)?;
            (y, sum, stats.mean, stats.rstd)
        }
        (Geometry::Channels { axis, .. }, Batch) => {
            let bn = BatchNorm {
                channel_axis: *axis,
                eps,
                momentum: args.momentum.unwrap_or(batch_norm::DEFAULT_MOMENTUM),
            };
            let (mut rm, mut rv) = (convert(&params.running_mean), convert(&params.running_var));
            if args.training {
                let update = match (rm.as_deref_mut(), rv.as_deref_mut()) {
                    (Some(mean), Some(var)) => Some(RunningStatsMut { mean, var }),
                    _ => None,
                };
                let (y, stats) = bn.forward_train(x, shape, affine, update, PAR)?;
                if let (Some(mean), Some(var)) = (rm, rv) {
                    let c = vec![mean.len()];
                    running = Some((T::tensor(c.clone(), mean), T::tensor(c, var)));
                }
                (y, None, stats.mean, stats.rstd)
            } else {
                let (Some(mean), Some(var)) = (rm.as_deref(), rv.as_deref()) else {
                    bail!("eval-mode BatchNorm needs --running-mean and --running-var");
                };
                let y = bn.forward_eval(x, shape, affine, RunningStats { mean, var }, PAR)?;
                (y, None, vec![], vec![])
            }
        }
        (Geometry::Channels { axis, .. }, Group) => {
            let gn = GroupNorm {
                groups: args.groups.unwrap_or(0),
                channel_axis: *axis,
                eps,
            };
            let (y, stats) = gn.forward(x, shape, affine, PAR)?;
            (y, None, stats.mean, stats.rstd)
        }
        (Geometry::Channels { axis, .. }, _) => {
            let inorm = InstanceNorm {
                channel_axis: *axis,
                eps,
            };
            let (y, stats) = inorm.forward(x, shape, affine, PAR)?;
            (y, None, stats.mean, stats.rstd)
        }
    };
    let narrow = |v: Vec<T::Compute>| v.into_iter().map(|s| s.to_f64() as f32).collect();
    Ok(Outputs {
        y: T::tensor(shape.to_vec(), y),
        sum: sum.map(|s| T::tensor(shape.to_vec(), s)),
        mean: narrow(stats_mean),
        rstd: narrow(stats_rstd),
        running,
    })
}

/// Reads γ, β, the residual or a running statistic and checks its shape.
fn read_shaped(
    path: Option<&Path>,
    what: &str,
    expected: &[usize],
    whose: &str,
) -> Result<Option<Tensor>> {
    let Some(path) = path else { return Ok(None) };
    let tensor = npy::read(path).with_context(|| format!("reading the {what}"))?;
    if tensor.shape() != expected {
        bail!(
            "{what} {} has shape {:?}, expected {:?} ({whose})",
            path.display(),
            tensor.shape(),
            expected
        );
    }
    Ok(Some(tensor))
}
