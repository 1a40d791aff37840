//! `layernorm`: normalize `.npy` files from the command line, or (with no arguments) watch
//! Layer Normalization work on the seed's example.
//!
//! Arguments are parsed by clap, then validated into a plan before anything is computed or
//! written; every failure prints one line on stderr and exits with status 2.

#![forbid(unsafe_code)]

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
    /// Normalize an .npy tensor over its trailing dims (ONNX LayerNormalization semantics).
    Normalize(NormalizeArgs),
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
    /// Force an instruction set (scalar, avx2, avx512, neon) instead of the detected one.
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
#[derive(Debug, clap::Args)]
pub struct NormalizeArgs {
    /// Input tensor (.npy, float32 or float64, C or Fortran order).
    pub input: PathBuf,
    /// Output tensor (.npy): same dtype and shape as the input.
    #[arg(short, long)]
    pub output: PathBuf,
    /// First normalized axis: dims AXIS..rank−1 are normalized; negative counts from the end.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub axis: isize,
    /// ε, added to the variance under the square root.
    #[arg(long, default_value_t = 1e-5, allow_negative_numbers = true)]
    pub eps: f64,
    /// Scale γ (.npy) of shape `input.shape[AXIS:]`.
    #[arg(long)]
    pub weight: Option<PathBuf>,
    /// Shift β (.npy) of shape `input.shape[AXIS:]`.
    #[arg(long)]
    pub bias: Option<PathBuf>,
    /// Also write the saved statistics: an .npz with float32 arrays `mean` (LayerNorm only)
    /// and `rstd` of shape `input.shape[:AXIS] + [1]·(rank − AXIS)`.
    #[arg(long)]
    pub stats: Option<PathBuf>,
    /// Which normalization: LayerNorm, or RMSNorm (no centring, no β).
    #[arg(long, value_enum, default_value_t = NormKind::Layer)]
    pub kind: NormKind,
    /// Fused residual add: normalize INPUT + RESIDUAL (same shape), writing the sum to
    /// --sum-output.
    #[arg(long)]
    pub residual: Option<PathBuf>,
    /// Where the fused residual add writes INPUT + RESIDUAL (.npy).
    #[arg(long)]
    pub sum_output: Option<PathBuf>,
}

/// The normalizations `normalize` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NormKind {
    /// Layer Normalization.
    Layer,
    /// RMS Normalization.
    Rms,
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
            outln!("LAYERNORM_ISA:   (not set; scalar, avx2, avx512 or neon force a lower one)")
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
