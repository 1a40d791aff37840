//! `layernorm`: normalize `.npy` files from the command line, or (with no arguments) watch
//! Layer Normalization work on the seed's example.
//!
//! Arguments are parsed by clap, then validated into a plan before anything is computed or
//! written; every failure prints one line on stderr and exits with status 2.

#![forbid(unsafe_code)]

mod demo;
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
    /// Also write the saved statistics: an .npz with float32 arrays `mean` and `rstd` of shape
    /// `input.shape[:AXIS] + [1]·(rank − AXIS)`.
    #[arg(long)]
    pub stats: Option<PathBuf>,
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, whatever the underlying messages hold.
            let message = format!("{err:#}").replace('\n', " ");
            eprintln!("layernorm: error: {message}");
            ExitCode::from(2)
        }
    }
}
