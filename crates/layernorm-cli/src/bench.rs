//! `layernorm bench`: forward and backward throughput against a memory copy of the same bytes,
//! measured side by side in the same run.
//!
//! Byte model: forward moves 2·rows·cols·size (read x, write y), backward 3·rows·cols·size
//! (read x and dy, write dx); γ/β, the statistics and dγ/dβ are O(rows + cols) and ignored.
//! The copy ceiling uses the same threads (a parallel `copy_from_slice` over as many bytes).
//! A second ceiling, the same copy with non-temporal stores (`layernorm::copy_streaming`), is
//! the real memory limit where `memcpy` pays a read-for-ownership per destination line: the
//! kernels stream outputs too large for the cache, so they can beat `memcpy` there, and the
//! second ratio says how close they come to what the memory allows.
//! Kernel and copy runs alternate, and each figure is the median of its runs, so slow phases
//! of a shared machine hit every side of the ratios alike.
//!
//! For the `into` variants a third figure says whether memory is what limits the kernel: the
//! same kernel on a slice of the shape's rows small enough to stay in each core's cache, run
//! over and over by every thread at once, each on its own slice and on one thread
//! ([`Parallelism::Sequential`], so no thread start-up), in the same byte model
//! (`cache_gbps`). `cache_ratio` (its ratio to the same copy) is the most the kernel's own
//! arithmetic allows: where it is at or below `ratio`, no better use of memory could help.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use layernorm::{
    bf16, f16, layer_norm, Affine, Element, GradMask, GradsMut, IsaKind, Parallelism, StatsMut,
};
use rayon::prelude::*;

use crate::{BenchArgs, BenchDtype};

/// The shapes measured when none are given.
const DEFAULT_SHAPES: [(usize, usize); 4] = [(1600, 128), (8192, 768), (4096, 4096), (1024, 65536)];

/// Bytes (in the byte model) each thread's in-cache slice may span: within the L2 of the
/// cores this runs on (1–2 MiB on recent x86 server cores), leaving room for the dγ/dβ
/// partials. The slice has at least `CACHE_MIN_ROWS` rows (or all of a shorter shape's), so
/// that the work done once per call on the columns (γ/β widened for f16/bf16, the dγ/dβ
/// partials zeroed, combined and rounded) stays small beside the rows' own, and backward
/// takes the code path it takes on the whole shape (rows of 2048 columns and more go through
/// pass 2 in pairs). Rows too long for that many to fit get no in-cache figure.
const CACHE_BYTES: usize = 1 << 20;
const CACHE_MIN_ROWS: usize = 16;

/// Each measurement runs at least this long and at least `MIN_RUNS` times.
const MIN_TIME: Duration = Duration::from_millis(300);
const MIN_RUNS: usize = 5;

/// One line of the report.
struct Row {
    op: &'static str,
    variant: &'static str,
    rows: usize,
    cols: usize,
    bytes: f64,
    seconds: f64,
    copy_seconds: f64,
    stream_copy_seconds: f64,
    /// The in-cache run (`into` only): bytes per thread and per run, and GB/s over all threads.
    cache: Option<(f64, f64)>,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let shapes = if args.shape.is_empty() {
        DEFAULT_SHAPES.to_vec()
    } else {
        args.shape
            .iter()
            .map(|s| parse_shape(s))
            .collect::<Result<_>>()?
    };
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads == 0 || threads > 64 * cores {
        bail!(
            "--threads must be between 1 and {} (64 per core)",
            64 * cores
        );
    }
    let isa = match args.isa.as_deref() {
        None => layernorm::cpu_info().selected,
        Some(name) => layernorm::cpu_info()
            .available
            .into_iter()
            .find(|k| k.name() == name)
            .with_context(|| {
                format!(
                    "instruction set {name:?} is not available on this CPU (see `layernorm info`)"
                )
            })?,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("cannot start the thread pool")?;

    let progress = ProgressBar::new((shapes.len() * 4) as u64);
    progress.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed}] {bar:30} {pos}/{len} {msg}")
            .expect("a valid template"),
    );
    let dtype = args.dtype.name();
    if !args.json {
        outln!(
            "layernorm bench: {dtype}, {threads} thread(s), isa {isa}; byte model: forward 2·rows·cols·{size}, backward 3·rows·cols·{size}",
            size = args.dtype.size()
        );
        outln!(
            "in cache: the kernel on a slice of rows in each core's cache, all threads at once (its ratio: the most its arithmetic allows)"
        );
        outln!(
            "\n{:>12} {:>9} {:>6} {:>9} {:>10} {:>10} {:>7} {:>10} {:>7} {:>9} {:>7}",
            "shape",
            "op",
            "variant",
            "MiB",
            "GB/s",
            "copy GB/s",
            "ratio",
            "NT GB/s",
            "ratio",
            "in cache",
            "ratio"
        );
    }
    for &(rows, cols) in &shapes {
        progress.set_message(format!("{rows}×{cols}"));
        let report = pool.install(|| {
            layernorm::with_isa(isa, || match args.dtype {
                BenchDtype::F32 => measure::<f32>(rows, cols, &progress),
                BenchDtype::F16 => measure::<f16>(rows, cols, &progress),
                BenchDtype::Bf16 => measure::<bf16>(rows, cols, &progress),
            })
            .expect("an available ISA")
        })?;
        for row in report {
            print_row(&row, dtype, threads, isa, args.json)?;
        }
    }
    progress.finish_and_clear();
    Ok(())
}

fn print_row(row: &Row, dtype: &str, threads: usize, isa: IsaKind, json: bool) -> Result<()> {
    let gbps = row.bytes / row.seconds / 1e9;
    let copy_gbps = row.bytes / row.copy_seconds / 1e9;
    let ratio = gbps / copy_gbps;
    let nt_gbps = row.bytes / row.stream_copy_seconds / 1e9;
    let nt_ratio = gbps / nt_gbps;
    if json {
        let mut object = serde_json::json!({
            "op": row.op, "variant": row.variant, "dtype": dtype, "rows": row.rows, "cols": row.cols,
            "threads": threads, "isa": isa.name(), "bytes": row.bytes, "seconds": row.seconds,
            "gbps": gbps, "copy_gbps": copy_gbps, "ratio": ratio,
            "stream_copy_gbps": nt_gbps, "stream_ratio": nt_ratio,
        });
        if let Some((bytes, cache_gbps)) = row.cache {
            object["cache_bytes"] = bytes.into();
            object["cache_gbps"] = cache_gbps.into();
            object["cache_ratio"] = (cache_gbps / copy_gbps).into();
        }
        outln!("{object}");
    } else {
        let shape = format!("{}×{}", row.rows, row.cols);
        let mib = row.bytes / (1024.0 * 1024.0);
        let cache = match row.cache {
            Some((_, g)) => format!("{g:>9.1} {:>7.2}", g / copy_gbps),
            None => format!("{:>9} {:>7}", "", ""),
        };
        outln!(
            "{shape:>12} {:>9} {:>6} {mib:>9.1} {gbps:>10.1} {copy_gbps:>10.1} {ratio:>7.2} {nt_gbps:>10.1} {nt_ratio:>7.2} {cache}",
            row.op,
            row.variant
        );
    }
    Ok(())
}

fn parse_shape(s: &str) -> Result<(usize, usize)> {
    let parsed = s
        .split_once(['x', 'X', '×'])
        .and_then(|(r, c)| Some((r.trim().parse().ok()?, c.trim().parse().ok()?)));
    match parsed {
        Some((r, c)) if r > 0 && c > 0 => Ok((r, c)),
        _ => bail!("--shape {s:?}: expected ROWSxCOLS with both at least 1, like 8192x768"),
    }
}

/// Median times of `f`, `copy(false)` (memcpy) and `copy(true)` (streaming), run in turn at
/// least `MIN_RUNS` times and for at least `MIN_TIME`.
fn side_by_side(mut f: impl FnMut(), mut copy: impl FnMut(bool)) -> [f64; 3] {
    // One untimed round of each: page faults and first-touch belong to none.
    f();
    copy(false);
    copy(true);
    let mut times: [Vec<f64>; 3] = Default::default();
    let start = Instant::now();
    while times[0].len() < MIN_RUNS || start.elapsed() < MIN_TIME {
        for (k, times) in times.iter_mut().enumerate() {
            let t = Instant::now();
            match k {
                0 => f(),
                _ => copy(k == 2),
            }
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.map(median)
}

/// Rows of the in-cache slice of a `rows`×`cols` shape whose kernel moves `bytes_per_elem`
/// bytes per element: as many as fit in [`CACHE_BYTES`], at least [`CACHE_MIN_ROWS`] (or all
/// of a shorter shape), or `None` where that many do not fit.
fn cache_rows(rows: usize, cols: usize, bytes_per_elem: usize) -> Option<usize> {
    let fit = CACHE_BYTES / cols.saturating_mul(bytes_per_elem).max(1);
    (fit >= CACHE_MIN_ROWS.min(rows)).then_some(fit.min(rows))
}

/// GB/s of `kernel` run over and over by every thread of the current pool at once, each on
/// its slice (`slices[thread]`, `slice_bytes` in the byte model), timed side by side with
/// `copy` as [`side_by_side`] does; the slices stay in each core's cache.
fn in_cache<St: Send>(
    slices: &[Mutex<St>],
    slice_bytes: f64,
    kernel: impl Fn(&mut St) + Sync,
    copy: impl FnMut(bool),
) -> f64 {
    // Enough runs per timing that the broadcast's start-up is noise.
    let reps = ((CACHE_BYTES * 8) as f64 / slice_bytes).ceil().max(1.0) as usize;
    let [seconds, ..] = side_by_side(
        || {
            rayon::broadcast(|ctx| {
                let mut slice = slices[ctx.index()].lock().expect("no thread panicked");
                for _ in 0..reps {
                    kernel(&mut slice);
                }
            });
        },
        copy,
    );
    slices.len() as f64 * reps as f64 * slice_bytes / seconds / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A parallel copy over the current pool, in chunks as the kernels split rows; with
/// non-temporal stores if `stream`.
fn parallel_copy<T: Element>(src: &[T], dst: &mut [T], stream: bool) {
    const CHUNK: usize = 1 << 16;
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| {
            if stream {
                layernorm::copy_streaming(s, d)
            } else {
                d.copy_from_slice(s)
            }
        });
}

fn measure<T: Element>(rows: usize, cols: usize, progress: &ProgressBar) -> Result<Vec<Row>> {
    let n = rows
        .checked_mul(cols)
        .filter(|n| n.checked_mul(8).is_some())
        .context("shape too large")?;
    let size = std::mem::size_of::<T>() as f64;
    // x, dy, y, dx and the copy buffers: about 8 arrays of the shape.
    let needed = 8.0 * n as f64 * size;
    if let Some(total) = total_memory_bytes() {
        if needed > 0.8 * total {
            bail!(
                "--shape {rows}x{cols} needs about {:.1} GiB, more than this machine has ({:.1} GiB)",
                needed / (1u64 << 30) as f64,
                total / (1u64 << 30) as f64
            );
        }
    }
    let par = Parallelism::Rayon;
    let eps = 1e-5;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f64 / (1u64 << 24) as f64 * 4.0 - 2.0
    };
    let to_t = |v: f64| T::narrow(<T::Compute as layernorm::Float>::from_f64(v));
    let x: Vec<T> = (0..n).map(|_| to_t(1.0 + next())).collect();
    let dy: Vec<T> = (0..n).map(|_| to_t(next())).collect();
    let w: Vec<T> = (0..cols).map(|_| to_t(1.0 + 0.1 * next())).collect();
    let b: Vec<T> = (0..cols).map(|_| to_t(0.1 * next())).collect();
    let affine = Affine::scale_shift(&w, &b);
    let zero = <T::Compute as layernorm::Float>::ZERO;
    let (mut y, mut mean, mut rstd) = (vec![T::default(); n], vec![zero; rows], vec![zero; rows]);
    let (mut dx, mut dw, mut db) = (
        vec![T::default(); n],
        vec![T::default(); cols],
        vec![T::default(); cols],
    );
    let fwd_bytes = 2.0 * n as f64 * size;
    let bwd_bytes = 3.0 * n as f64 * size;
    let mut copy_dst = vec![T::default(); n + n / 2];
    let copy_src: Vec<T> = x.iter().chain(&dy[..n / 2]).copied().collect();

    let mut out = vec![];
    let mut record =
        |op, variant, bytes, [seconds, copy_seconds, stream_copy_seconds]: [f64; 3], cache| {
            out.push(Row {
                op,
                variant,
                rows,
                cols,
                bytes,
                seconds,
                copy_seconds,
                stream_copy_seconds,
                cache,
            });
            progress.inc(1);
        };
    // The in-cache slices: the first rows of x and dy, shared (read only), and outputs of each
    // thread's own.
    let threads = rayon::current_num_threads();
    let elem = std::mem::size_of::<T>();
    let (fwd_rows, bwd_rows) = (
        cache_rows(rows, cols, 2 * elem),
        cache_rows(rows, cols, 3 * elem),
    );
    let per_thread = |arrays: usize, r: usize| (arrays * r * cols) as f64 * size;

    let mut copy_f = vec![T::default(); n];
    let fwd_copy = |dst: &mut [T], stream| parallel_copy(&x, dst, stream);
    let t = side_by_side(
        || {
            let stats = StatsMut {
                mean: &mut mean,
                rstd: &mut rstd,
            };
            layer_norm::forward_into(&x, cols, affine, eps, &mut y, Some(stats), par)
                .expect("valid");
        },
        |stream| fwd_copy(&mut copy_f, stream),
    );
    let cache = match fwd_rows {
        Some(r) => {
            let slices: Vec<_> = (0..threads)
                .map(|_| Mutex::new((vec![T::default(); r * cols], vec![zero; r], vec![zero; r])))
                .collect();
            let slice_bytes = per_thread(2, r);
            let cache = in_cache(
                &slices,
                slice_bytes,
                |(y, mean, rstd)| {
                    let stats = StatsMut { mean, rstd };
                    let x = &x[..r * cols];
                    layer_norm::forward_into(
                        x,
                        cols,
                        affine,
                        eps,
                        y,
                        Some(stats),
                        Parallelism::Sequential,
                    )
                    .expect("valid");
                },
                |stream| fwd_copy(&mut copy_f, stream),
            );
            Some((slice_bytes, cache))
        }
        None => None,
    };
    record("forward", "into", fwd_bytes, t, cache);
    let t = side_by_side(
        || {
            let out = layer_norm::forward(&x, cols, affine, eps, par).expect("valid");
            std::hint::black_box(out);
        },
        |stream| fwd_copy(&mut copy_f, stream),
    );
    record("forward", "alloc", fwd_bytes, t, None);

    let stats = layernorm::StatsRef {
        mean: &mean,
        rstd: &rstd,
    };
    let t = side_by_side(
        || {
            let grads = GradsMut {
                dx: Some(&mut dx),
                dweight: Some(&mut dw),
                dbias: Some(&mut db),
            };
            layer_norm::backward_into(&dy, &x, cols, stats, Some(&w), grads, par).expect("valid");
        },
        |stream| parallel_copy(&copy_src, &mut copy_dst, stream),
    );
    let cache = match bwd_rows {
        Some(r) => {
            let slices: Vec<_> = (0..threads)
                .map(|_| {
                    Mutex::new([
                        vec![T::default(); r * cols],
                        vec![T::default(); cols],
                        vec![T::default(); cols],
                    ])
                })
                .collect();
            let slice_bytes = per_thread(3, r);
            let cache = in_cache(
                &slices,
                slice_bytes,
                |[dx, dw, db]| {
                    let grads = GradsMut {
                        dx: Some(dx),
                        dweight: Some(dw),
                        dbias: Some(db),
                    };
                    let span = ..r * cols;
                    let stats = layernorm::StatsRef {
                        mean: &mean[..r],
                        rstd: &rstd[..r],
                    };
                    let seq = Parallelism::Sequential;
                    layer_norm::backward_into(
                        &dy[span],
                        &x[span],
                        cols,
                        stats,
                        Some(&w),
                        grads,
                        seq,
                    )
                    .expect("valid");
                },
                |stream| parallel_copy(&copy_src, &mut copy_dst, stream),
            );
            Some((slice_bytes, cache))
        }
        None => None,
    };
    record("backward", "into", bwd_bytes, t, cache);
    let t = side_by_side(
        || {
            let g = layer_norm::backward(&dy, &x, cols, stats, Some(&w), GradMask::ALL, par)
                .expect("valid");
            std::hint::black_box(g);
        },
        |stream| parallel_copy(&copy_src, &mut copy_dst, stream),
    );
    record("backward", "alloc", bwd_bytes, t, None);
    Ok(out)
}

/// Physical memory, from /proc/meminfo (Linux); None elsewhere.
fn total_memory_bytes() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_cache_slices() {
        // f32 backward (12 bytes per element): 1 MiB holds 21 rows of 4096.
        assert_eq!(cache_rows(4096, 4096, 12), Some(21));
        // A short shape is its own slice.
        assert_eq!(cache_rows(4, 16, 6), Some(4));
        assert_eq!(cache_rows(8, 65536, 1), Some(8));
        // 16 rows of 65536 f32 (12 MiB in backward) do not fit: no figure.
        assert_eq!(cache_rows(1024, 65536, 12), None);
        assert_eq!(cache_rows(1, 1 << 20, 12), None);
    }
}
