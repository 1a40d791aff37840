//! `layernorm`: normalize `.npy` files from the command line, or (with no arguments) watch
//! Layer Normalization work on the seed's example.
//!
//! Arguments are parsed by clap, then validated into a plan before anything is computed or
//! written; every failure prints one line on stderr and exits with status 2.

#![forbid(unsafe_code)]
// The doc comments of the arguments are clap help texts: "[layer, rms]" there tags the kinds
// a flag applies to, not an intra-doc link.
#![allow(rustdoc::broken_intra_doc_links)]

/// `println!` that returns an error (instead of panicking) when stdout is closed, as when the
/// output is piped into `head`.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?;
    }};
}

mod bench;
mod data;
mod demo;
mod learn;
mod normalize;
mod npy;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Layer Normalization: exact, deterministic, with gradients.
#[derive(Debug, Parser)]
#[command(name = "layernorm", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the demo on embedded example data (the default with no arguments).
    Demo,
    /// Normalize an .npy tensor: LayerNorm (ONNX or Keras axes), RMSNorm, BatchNorm,
    /// GroupNorm or InstanceNorm.
    #[command(long_about = NORMALIZE_ABOUT)]
    Normalize(Box<NormalizeArgs>),
    /// Measure forward and backward throughput against a memory copy of the same bytes.
    Bench(BenchArgs),
    /// Show the CPU features found and the instruction set the kernels use.
    Info,
    /// Walk through LayerNorm step by step (the seed's example by default), beside BatchNorm,
    /// and draw diagrams.
    Explain {
        /// A (batch, seq, emb) tensor (.npy) to explain instead of the seed's example.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Folder for the diagrams (SVG and PNG); default: the current folder.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Measure how a sentence's output depends on its batch and on padding, for LayerNorm and
    /// BatchNorm; print a table and draw a plot.
    Compare {
        /// One JSON object per row on stdout instead of the table.
        #[arg(long)]
        json: bool,
        /// Folder for the plot (SVG and PNG); default: the current folder.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `layernorm normalize --help`: the kinds and which flags each takes.
const NORMALIZE_ABOUT: &str = "\
Normalize an .npy tensor (float16, float32 or float64, either byte order, C or Fortran
order); the output has the input's dtype and shape.

Kinds (--kind, default layer) and the flags each takes (besides --eps, --weight, --stats):
  layer     LayerNorm. --axis A: dims A..rank-1 (ONNX LayerNormalization, default -1), or
            --axes A,B,...: any axes (Keras). --bias; --residual R.npy --sum-output S.npy.
  rms       RMSNorm over dims A..rank-1 (--axis). No centring, no --bias; --residual.
  batch     BatchNorm per channel (--channel-axis, default 1). Eval mode (default) normalizes
            with --running-mean M.npy --running-var V.npy; --training uses the batch
            statistics and, with --running-output STATS.npz (which needs the running inputs),
            writes the updated running statistics (--momentum, default 0.1). --bias.
  group     GroupNorm: --groups G (required) groups of channels per sample
            (--channel-axis, default 1). --bias.
  instance  InstanceNorm: each channel of each sample (--channel-axis, default 1). --bias.

γ/β of batch, group and instance have shape (C,). γ, β, the residual and the running
statistics may have any of the three dtypes: each is rounded to the input's dtype (so a
float32 γ with a float16 input acts as γ rounded to float16), which is also the dtype of
every output but --stats (always float32). ε defaults to 1e-5 for every kind (as PyTorch's
and ONNX's defaults). A flag that the chosen kind does not use is an error. Outputs are
written atomically; any error prints one line on stderr, exits with status 2 and leaves no
output file.";

/// Arguments of `layernorm bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A ROWSxCOLS shape to measure (repeatable). Default: 1600x128, 8192x768, 4096x4096,
    /// 1024x65536.
    #[arg(long)]
    pub shape: Vec<String>,
    /// Element type.
    #[arg(long, value_enum, default_value_t = BenchDtype::F32)]
    pub dtype: BenchDtype,
    /// Threads (default: all the CPU has).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Force an instruction set (scalar, avx2, avx512, avx512bf16, neon) instead of the detected one.
    #[arg(long)]
    pub isa: Option<String>,
    /// One JSON object per measurement on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Element types `bench` can measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchDtype {
    /// 32-bit float.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl BenchDtype {
    fn name(self) -> &'static str {
        match self {
            BenchDtype::F32 => "f32",
            BenchDtype::F16 => "f16",
            BenchDtype::Bf16 => "bf16",
        }
    }

    fn size(self) -> usize {
        match self {
            BenchDtype::F32 => 4,
            BenchDtype::F16 | BenchDtype::Bf16 => 2,
        }
    }
}

/// Arguments of `layernorm normalize`.
///
/// Every flag is checked against `--kind`: one that the chosen normalization does not use is
/// an error, never silently ignored.
#[derive(Debug, clap::Args)]
pub struct NormalizeArgs {
    /// Input tensor (.npy, float16, float32 or float64, C or Fortran order).
    pub input: PathBuf,
    /// Output tensor (.npy): same dtype and shape as the input.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Which normalization (`--help` describes each and the flags it takes).
    #[arg(long, value_enum, default_value_t = NormKind::Layer)]
    pub kind: NormKind,
    /// [layer, rms] First normalized axis: dims AXIS..rank−1 are normalized (ONNX); negative
    /// counts from the end. Default: -1.
    #[arg(long, allow_negative_numbers = true, value_name = "AXIS")]
    pub axis: Option<isize>,
    /// [layer] Normalize over exactly these axes, in any order, trailing or not (Keras
    /// `LayerNormalization(axis=[…])`); negative counts from the end. Conflicts with --axis.
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        value_name = "A,B,...",
        conflicts_with = "axis"
    )]
    pub axes: Option<Vec<isize>>,
    /// [group] Number of channel groups; must divide the channels. Required for --kind group.
    #[arg(long, value_name = "G")]
    pub groups: Option<usize>,
    /// [batch, group, instance] The channel axis C; negative counts from the end (-1 for
    /// channels-last). Default: 1, as PyTorch and ONNX: (N, C, …). Group and instance need
    /// the batch axis 0 before it.
    #[arg(long, allow_negative_numbers = true, value_name = "C")]
    pub channel_axis: Option<isize>,
    /// [all kinds] ε, added to the variance (for rms: the mean square) under the square root.
    #[arg(long, default_value_t = 1e-5, allow_negative_numbers = true)]
    pub eps: f64,
    /// [all kinds] Scale γ (.npy). Shape: input.shape[AXIS:] (layer, rms); the --axes dims
    /// in axis order (layer --axes); (C,) (batch, group, instance).
    #[arg(long, value_name = "W.npy")]
    pub weight: Option<PathBuf>,
    /// [layer, batch, group, instance] Shift β (.npy), shaped as --weight. RMSNorm has no β.
    #[arg(long, value_name = "B.npy")]
    pub bias: Option<PathBuf>,
    /// [batch] Training mode: normalize with the batch statistics (each channel needs more
    /// than one value). Without it, eval mode: normalize with --running-mean/--running-var.
    #[arg(long)]
    pub training: bool,
    /// [batch] Running mean (.npy, shape (C,)). Eval mode: required. Training: the running
    /// statistics to update into --running-output (then required).
    #[arg(long, value_name = "M.npy")]
    pub running_mean: Option<PathBuf>,
    /// [batch] Running (unbiased) variance (.npy, shape (C,)); goes with --running-mean.
    #[arg(long, value_name = "V.npy")]
    pub running_var: Option<PathBuf>,
    /// [batch --training] Write the updated running statistics: an .npz with arrays
    /// `running_mean` and `running_var` of shape (C,) in the input's dtype, updated as in
    /// PyTorch: new = (1 − momentum)·old + momentum·batch, the variance from the unbiased
    /// batch variance. Needs --running-mean and --running-var.
    #[arg(long, value_name = "STATS.npz")]
    pub running_output: Option<PathBuf>,
    /// [batch --training --running-output] Weight of the batch statistics in the running
    /// update, in [0, 1]. Default: 0.1.
    #[arg(long, allow_negative_numbers = true)]
    pub momentum: Option<f64>,
    /// [layer, rms, batch --training, group, instance] Also write the statistics: an .npz of
    /// float32 arrays `mean` (not for rms) and `rstd` = 1/√(var + ε) (rms: 1/√(mean(x²) + ε),
    /// var is the biased variance). Shapes:
    /// input.shape[:AXIS] + [1]·(rank − AXIS) (layer, rms); the input's shape with 1 on the
    /// --axes dims (layer --axes); (C,) (batch); (N, G) (group); (N, C) (instance). Eval-mode
    /// batch has no batch statistics and rejects it.
    #[arg(long, value_name = "STATS.npz")]
    pub stats: Option<PathBuf>,
    /// [layer, rms] Fused residual add: normalize INPUT + RESIDUAL (same shape), writing the
    /// sum to --sum-output.
    #[arg(long, value_name = "R.npy")]
    pub residual: Option<PathBuf>,
    /// [layer, rms] Where the fused residual add writes INPUT + RESIDUAL (.npy).
    #[arg(long, value_name = "S.npy")]
    pub sum_output: Option<PathBuf>,
}

/// The normalizations `normalize` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NormKind {
    /// LayerNorm over the trailing dims from --axis (ONNX) or over --axes (Keras).
    Layer,
    /// RMSNorm over the trailing dims from --axis: no centring, no β.
    Rms,
    /// BatchNorm per channel over the batch and spatial dims (eval mode, or --training).
    Batch,
    /// GroupNorm: per sample and group of --groups channels.
    Group,
    /// InstanceNorm: per sample and channel.
    Instance,
}

impl NormKind {
    /// The name `--kind` takes.
    pub fn name(self) -> &'static str {
        match self {
            NormKind::Layer => "layer",
            NormKind::Rms => "rms",
            NormKind::Batch => "batch",
            NormKind::Group => "group",
            NormKind::Instance => "instance",
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help and --version: print as clap formats them, on stdout.
            err.print().ok();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            // Usage errors in one line (clap's own rendering adds a usage block and tips).
            // Keep the message paragraph (it may continue on indented lines), drop the rest.
            let rendered = err.to_string();
            let message = rendered.split("\n\n").next().unwrap_or("invalid arguments");
            let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
            let message = message.trim_start_matches("error: ");
            eprintln!("layernorm: error: {message} (see layernorm --help)");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        None | Some(Command::Demo) => demo::run(),
        Some(Command::Normalize(args)) => normalize::run(&args),
        Some(Command::Bench(args)) => bench::run(&args),
        Some(Command::Info) => info(),
        Some(Command::Explain { input, out }) => {
            learn::explain::run(input.as_deref(), &learn::explain::out_dir(out.as_deref()))
        }
        Some(Command::Compare { json, out }) => {
            learn::compare::run(json, &learn::explain::out_dir(out.as_deref()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, whatever the underlying messages hold.
            let mut message = format!("{err:#}").replace('\n', " ");
            // A malformed header can be echoed whole by the parser: keep the line readable.
            if message.chars().count() > 400 {
                message = message.chars().take(400).collect::<String>() + " …";
            }
            eprintln!("layernorm: error: {message}");
            ExitCode::from(2)
        }
    }
}

/// Whether the error is stdout having been closed by the reader (`layernorm info | head`).
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// `layernorm info`: what detection found and what the kernels use.
fn info() -> anyhow::Result<()> {
    let cpu = layernorm::cpu_info();
    outln!("layernorm {}", env!("CARGO_PKG_VERSION"));
    outln!("instruction set: {}", cpu.selected);
    let available: Vec<&str> = cpu.available.iter().map(|k| k.name()).collect();
    outln!("available:       {}", available.join(", "));
    match &cpu.requested {
        Some(r) => outln!("LAYERNORM_ISA:   {r}"),
        None => {
            outln!("LAYERNORM_ISA:   (not set; scalar, avx2, avx512, avx512bf16 or neon force a lower one)")
        }
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    outln!("threads:         {threads} (rayon's global pool; RAYON_NUM_THREADS overrides)");
    let features: Vec<String> = cpu
        .features
        .iter()
        .map(|(name, on)| format!("{name}{}", if *on { "+" } else { "-" }))
        .collect();
    outln!("cpu features:    {}", features.join(" "));
    Ok(())
}
