//! The LayerNorm row kernels on vectors, for the types computed in f32 (f32, f16, bf16):
//! the steps of `portable.rs`, written once over [`Simd`] so that every instruction set —
//! scalar, AVX2, AVX-512, NEON — runs the same algorithm.
//!
//! ```text
//! forward, per row:
//!   pass 1  Σd, Σd² with d = x − x₀    f64, exact; x₀ from the row bounds the cancellation
//!           (repeated around the mean found if it still cancelled too much)
//!   pass 2  y = ((x − μ_hi) − μ_lo)·rstd·γ + β     f32, narrowed on store
//! backward, per row (from saved mean, rstd):
//!   pass 1  Σd, Σg, Σg·d            f64, d = x − mean, g = dy·γ (exact products)
//!           (rows under 2048: dβ += dy here, where dy is already in f64)
//!   pass 2  dx = rstd·g − (x̂·rstd·mean_gx + rstd·mean_g);  dγ += dy·x̂;  dβ += dy
//!           (rows of 2048+ in pairs: dγ, dβ summed over the pair in f64 registers,
//!           then added to the block's partials once)
//! ```
//!
//! A row's reduction order depends only on its length: full vectors from the start, then the
//! few remaining elements one by one. Pass 2 reads the row from L1/L2, where pass 1 left it.
//!
//! The rows are software-pipelined: pass 1 of the next row (in backward, of the next group
//! of rows) runs inside the loop of pass 2 of the current one: in forward two vectors per two
//! vectors of pass 2, in backward a chunk of vectors (in a loop of its own) per
//! `PASS2_CHUNK` vectors of pass 2.
//! The next row's reads from memory then overlap this row's stores, where two passes in
//! sequence would leave the read stream idle while a row is written and the write stream idle
//! while it is read (4096×4096 f32 forward, 2 threads: 0.79 → 0.88 of copy). Each row's sums
//! take the same vectors in the same order either way, so no result depends on it.
//! Rows that need the f64 path (see `portable.rs`) are handed to the portable kernel.
//!
//! Outputs larger than the cache are written with non-temporal stores, which need an aligned
//! destination: pass 2 runs the elements before y's (dx's) first vector-aligned address, and
//! the tail, through buffers one vector long with the same vector arithmetic, so a result
//! never depends on where the output starts in memory.

use crate::arch::{prefetch, prefetch_line, prefetch_line_for_write, Simd, Storage, WithSimd};
use crate::dtype::{to_f64, Element};

use super::portable::{self, in_safe_range, RowGrads, RowStats};
use super::{round_into, BackwardBlock, ForwardBlock, Norm};

/// The types γ and β are read as (f32, or the data's 16-bit type), widened as they load.
pub(crate) trait Param: Element<Compute = f32> + Storage {}

impl<P: Element<Compute = f32> + Storage> Param for P {}

/// Largest vector width of any ISA, in f32 lanes (tails are staged in buffers this long).
const MAX_LANES: usize = 16;

/// How far ahead of its reader [`Lookahead`] asks for lines, in bytes of each array. One
/// thread, f32, ns/elem with 0 (none) → 4 KiB: 8192×768 backward 1.39 → 1.18, forward 0.49
/// → 0.43; 4096×4096 backward 1.21 → 1.12, forward 0.68 → 0.59. 3, 6 and 12 KiB measured
/// alike; 12 KiB was slower at 1024×65536 (backward 1.27 against 1.19).
const PREFETCH_AHEAD: usize = 4 << 10;

/// Software prefetch that runs ahead of a reader: the reader of `data[at..]` (each of the
/// `N` arrays, read in step; rows follow each other in them) calls [`Lookahead::touch`] with
/// the range it is about to read, relative to `at`, and the lines [`PREFETCH_AHEAD`] bytes
/// further on are requested (none past the block's end): one request per line and array per
/// vector step, spread through the arithmetic ([`Lookahead::touch_step`], in forward and in
/// backward's single rows), or the lines of one chunk of pass 1 together (backward's groups,
/// see [`PASS2_CHUNK`]). The kernels used to request the whole next row when
/// a row started; 8192×768 backward, one thread, ns/elem: 1.37–1.48 that way, 1.27–1.34
/// with no software prefetch at all, 1.11–1.13 spread. (Our reading, without counters on
/// this VM: a burst of requests larger than the core's line-fill buffers stalls it, and the
/// arithmetic stalls with it.)
#[derive(Clone, Copy)]
struct Lookahead<'a, T, const N: usize>([&'a [T]; N]);

impl<'a, T, const N: usize> Lookahead<'a, T, N> {
    fn new(data: [&'a [T]; N], at: usize) -> Self {
        let skip = at + PREFETCH_AHEAD / std::mem::size_of::<T>();
        Lookahead(data.map(|d| d.get(skip..).unwrap_or(&[])))
    }

    #[inline(always)]
    fn touch(&self, range: std::ops::Range<usize>) {
        for d in self.0 {
            prefetch(d, range.clone());
        }
    }

    /// [`Lookahead::touch`] for a reader that moves `n` elements (at most a few lines) per
    /// step, from `at` on: the line of each 64 bytes of the step, without the general
    /// range's line arithmetic. Where a step is shorter than a line, the line is asked for
    /// again by the next step (a hint, and cheap).
    #[inline(always)]
    fn touch_step(&self, j: usize, n: usize) {
        let size = std::mem::size_of::<T>();
        for d in self.0 {
            for k in (0..n * size).step_by(64) {
                prefetch_line(d, j + k / size);
            }
        }
    }
}

/// A forward block, to run with an ISA.
///
/// γ and β are read as the caller hands them: f32, or the data's own 16-bit type, widened
/// as they are loaded, as x is (`RowKernels::forward` chooses per call: see `FEW_ROWS`).
pub(crate) struct Forward<'a, T: Element, P>(pub ForwardBlock<'a, T, P>);

/// A backward block, to run with an ISA.
pub(crate) struct Backward<'a, T: Element>(pub BackwardBlock<'a, T, f32>);

impl<T: Element<Compute = f32> + Storage, P: Param> WithSimd for Forward<'_, T, P> {
    type Output = ();
    type Elem = T;

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        match self.0.norm {
            Norm::Layer => forward_rows::<S, T, P, true>(s, self.0),
            Norm::Rms => forward_rows::<S, T, P, false>(s, self.0),
        }
    }
}

/// Every row of a forward block; `CENTER`: LayerNorm (true) or RMSNorm (false).
#[inline(always)]
fn forward_rows<S: Simd, T: Element<Compute = f32> + Storage, P: Param, const CENTER: bool>(
    s: S,
    mut block: ForwardBlock<'_, T, P>,
) {
    let cols = block.cols;
    let rows = block.rows();
    if block.residual.is_none() {
        return forward_rows_pipelined::<S, T, P, CENTER>(s, block);
    }
    for r in 0..rows {
        let span = r * cols..(r + 1) * cols;
        let x = match block.residual.as_mut() {
            Some(res) => {
                let lookahead = Lookahead::new([block.x, res.residual], span.start);
                let sum = &mut res.sum[span.clone()];
                add_row(
                    s,
                    &block.x[span.clone()],
                    &res.residual[span.clone()],
                    sum,
                    lookahead,
                );
                &*sum
            }
            None => &block.x[span.clone()],
        };
        let stats = row_stats::<S, T, CENTER>(s, x, block.eps);
        let y = &mut block.y[span];
        let stats = if in_safe_range::<f32>(stats.mean, stats.rstd) {
            let (w, b) = (block.weight, block.bias);
            if block.stream {
                normalize_affine::<S, T, P, true>(s, x, w, b, stats, y, None);
            } else {
                normalize_affine::<S, T, P, false>(s, x, w, b, stats, y, None);
            }
            stats
        } else {
            portable::forward_row(x, block.weight, block.bias, block.eps, y, block.norm)
        };
        block.save_stats(r, stats);
    }
    if block.stream {
        s.fence();
    }
}

/// [`forward_rows`] without a residual, software-pipelined: pass 1 of row r + 1 runs inside
/// pass 2 of row r, in the same loop, so that the next row's reads from memory overlap this
/// row's stores (a row's two passes in sequence would leave the read stream idle while it
/// writes, and the write stream idle while it reads), and the latency of a row's reductions,
/// division and square root overlaps work on the other row. Each row's sums still run
/// through the same vectors in the same order as in [`row_stats`]: the results are
/// identical.
#[inline(always)]
fn forward_rows_pipelined<
    S: Simd,
    T: Element<Compute = f32> + Storage,
    P: Param,
    const CENTER: bool,
>(
    s: S,
    mut block: ForwardBlock<'_, T, P>,
) {
    let (cols, rows, eps) = (block.cols, block.rows(), block.eps);
    let x = block.x;
    let row = |r: usize| &x[r * cols..(r + 1) * cols];
    if rows == 0 {
        return;
    }
    let mut next = row_stats::<S, T, CENTER>(s, row(0), eps);
    for r in 0..rows {
        let stats = next;
        let following = (r + 1 < rows).then(|| Next {
            x: row(r + 1),
            pivot: pivot::<T, CENTER>(row(r + 1)),
            lookahead: Lookahead::new([x], (r + 1) * cols),
        });
        let y = &mut block.y[r * cols..(r + 1) * cols];
        let (w, b) = (block.weight, block.bias);
        let (stats, sums) = if in_safe_range::<f32>(stats.mean, stats.rstd) {
            let sums = if block.stream {
                normalize_affine::<S, T, P, true>(s, row(r), w, b, stats, y, following)
            } else {
                normalize_affine::<S, T, P, false>(s, row(r), w, b, stats, y, following)
            };
            (stats, sums)
        } else {
            let stats = portable::forward_row(row(r), w, b, eps, y, block.norm);
            (stats, None)
        };
        block.save_stats(r, stats);
        if r + 1 < rows {
            next = match sums {
                Some(sums) => stats_from_sums::<T, CENTER>(s, row(r + 1), eps, sums),
                None => row_stats::<S, T, CENTER>(s, row(r + 1), eps),
            };
        }
    }
    if block.stream {
        s.fence();
    }
}

/// `sum = x + residual` (fused residual add), rounded to the storage type as the portable
/// kernel does, so that y is exactly the normalization of the returned sum. The lookahead
/// prefetches x and the residual ahead of the row.
#[inline(always)]
fn add_row<S: Simd, T: Storage + Element<Compute = f32>>(
    s: S,
    x: &[T],
    residual: &[T],
    sum: &mut [T],
    lookahead: Lookahead<'_, T, 2>,
) {
    let (n, l) = (x.len(), S::LANES);
    let mut i = 0;
    while i + l <= n {
        lookahead.touch_step(i, l);
        T::store(
            s,
            &mut sum[i..],
            s.add(T::load(s, &x[i..]), T::load(s, &residual[i..])),
        );
        i += l;
    }
    portable::add_row(&x[i..], &residual[i..], &mut sum[i..]);
}

/// The row whose pass 1 runs inside pass 2 of the one before it, with its pivot and the
/// prefetcher that runs ahead of it.
struct Next<'a, T> {
    x: &'a [T],
    pivot: f64,
    lookahead: Lookahead<'a, T, 1>,
}

/// Pass 2 of a row, with γ/β as given; with `next`, pass 1 of that
/// row in the same loop, whose sums it returns.
#[inline(always)]
fn normalize_affine<S: Simd, T: Storage + Element<Compute = f32>, P: Param, const NT: bool>(
    s: S,
    x: &[T],
    weight: Option<&[P]>,
    bias: Option<&[P]>,
    stats: RowStats,
    y: &mut [T],
    next: Option<Next<'_, T>>,
) -> Option<(f64, f64)> {
    match (weight, bias) {
        (None, None) => normalize::<S, T, P, false, false, NT>(s, x, &[], &[], stats, y, next),
        (Some(w), None) => normalize::<S, T, P, true, false, NT>(s, x, w, &[], stats, y, next),
        (None, Some(b)) => normalize::<S, T, P, false, true, NT>(s, x, &[], b, stats, y, next),
        (Some(w), Some(b)) => normalize::<S, T, P, true, true, NT>(s, x, w, b, stats, y, next),
    }
}

/// Mean and rstd of a row: Σd and Σd² in f64 in one pass, with d = x − pivot and the pivot
/// the row's first element; a second pass, around the mean just found, when the first
/// cancelled too much.
///
/// One shifted pass computes σ² = Σd²/n − (Σd/n)². With a pivot from the row, |μ − x₀| ≤ σ·√n
/// (no single deviation exceeds the total), so the subtraction cancels at most a factor
/// (μ − x₀)²/σ² + 1 ≤ n + 1 — bounded, unlike `E[x²] − E[x]²` — but the rounding of the f64
/// sum Σd² (up to ~n/16·2^-53 relative) is multiplied by that factor. When it exceeds
/// [`max_cancellation`] (an outlier as the first element of a long row, say), the pass is
/// repeated around the mean it found, where nothing cancels. Both passes depend only on the
/// row, so results stay deterministic and batch-invariant.
#[inline(always)]
fn row_stats<S: Simd, T: Storage + Element<Compute = f32>, const CENTER: bool>(
    s: S,
    x: &[T],
    eps: f64,
) -> RowStats {
    let sums = shifted_sums(s, x, pivot::<T, CENTER>(x));
    stats_from_sums::<T, CENTER>(s, x, eps, sums)
}

/// The pivot of a row's first pass: its first element (none for RMSNorm: Σx² directly, no
/// subtraction, nothing cancels).
#[inline(always)]
fn pivot<T: Element<Compute = f32>, const CENTER: bool>(x: &[T]) -> f64 {
    if CENTER {
        to_f64(x[0])
    } else {
        0.0
    }
}

/// [`row_stats`] from the sums of its first pass, `(Σd, Σd²)` around [`pivot`].
#[inline(always)]
fn stats_from_sums<T: Storage + Element<Compute = f32>, const CENTER: bool>(
    s: impl Simd,
    x: &[T],
    eps: f64,
    sums: (f64, f64),
) -> RowStats {
    let pivot = pivot::<T, CENTER>(x);
    stats_from_totals(x.len(), pivot, eps, CENTER, sums, |mean| {
        shifted_sums(s, x, mean)
    })
}

/// The statistics of a row of `n` elements from the sums of its first pass, `(Σd, Σd²)`
/// around `pivot` (LayerNorm: `center`; RMSNorm: `(0, Σx²)`), with `second_pass(mean)` giving
/// the sums around `mean` when the first pass cancelled too much (see [`row_stats`]). Shared
/// by whole rows and by long rows summed in pieces (`long.rs`).
#[inline(always)]
pub(crate) fn stats_from_totals(
    n: usize,
    pivot: f64,
    eps: f64,
    center: bool,
    (sum_d, sum_sq): (f64, f64),
    second_pass: impl FnOnce(f64) -> (f64, f64),
) -> RowStats {
    let nf = n as f64;
    let (mut mean, mut var) = if center {
        let shift = sum_d / nf;
        let var = sum_sq / nf - shift * shift;
        // Second pass when Σd²/n is more than `max_cancellation` times the variance left.
        if sum_sq / nf > max_cancellation(n) * var.abs() && var.is_finite() {
            let mean = pivot + shift;
            let (sum_d, sum_sq) = second_pass(mean);
            let shift = sum_d / nf;
            (mean + shift, sum_sq / nf - shift * shift)
        } else {
            (pivot + shift, var)
        }
    } else {
        (0.0, sum_sq / nf)
    };
    // Rounding can leave a hair below zero; a NaN must stay NaN.
    if var < 0.0 {
        var = 0.0;
    }
    if !center {
        mean = 0.0;
    }
    RowStats {
        mean,
        rstd: 1.0 / (var + eps).sqrt(),
    }
}

/// Above this ratio of Σd²/n to the variance, `row_stats` makes its second pass: the
/// amplified rounding of Σd², ratio·(n/16)·2^-53, then stays below 2^-28 — a sixteenth of one
/// f32 rounding — for any row length (the ratio is 1024 up to 2^17 elements, and shrinks for
/// longer rows down to 4). The second pass has no amplification at all.
#[inline(always)]
pub(crate) fn max_cancellation(n: usize) -> f64 {
    (2f64.powi(27) / n as f64).clamp(4.0, 1024.0)
}

/// Σ(x − pivot) and Σ(x − pivot)² in f64 (differences and squares of f32 values: exact, and
/// exact to f64 rounding for a pivot that is not an f32).
#[inline(always)]
fn shifted_sums<S: Simd, T: Storage + Element<Compute = f32>>(
    s: S,
    x: &[T],
    pivot: f64,
) -> (f64, f64) {
    let mut acc = Sums::new(s, pivot);
    let mut i = 0;
    while i + 2 * S::LANES <= x.len() {
        acc.step(s, x, i);
        i += 2 * S::LANES;
    }
    acc.finish(s, x, i)
}

/// The running sums of [`shifted_sums`]: four accumulators each for Σd and Σd², fed two
/// vectors at a time, then one vector, then the remaining elements one by one. Vectors are
/// loaded with [`Storage::load_wide_unordered`]: which lane adds which value is the ISA's
/// choice, fixed, so a row's sums still depend on the row alone (bf16 on AVX-512, one
/// thread, in L2, forward: 15.0 → 17.0 GB/s).
struct Sums<S: Simd> {
    sum: [S::F64; 4],
    sq: [S::F64; 4],
    pivot: f64,
    shift: Shift<S>,
}

impl<S: Simd> Sums<S> {
    #[inline(always)]
    fn new(s: S, pivot: f64) -> Self {
        let zero = s.splat64(0.0);
        Sums {
            sum: [zero; 4],
            sq: [zero; 4],
            pivot,
            shift: Shift::new(s, pivot),
        }
    }

    /// Adds `x[i..i + 2·LANES]`.
    #[inline(always)]
    fn step<T: Storage + Element<Compute = f32>>(&mut self, s: S, x: &[T], i: usize) {
        let l = S::LANES;
        for k in 0..2 {
            let [lo, hi] = T::load_wide_unordered(s, &x[i + k * l..]);
            let (d0, d1) = (self.shift.apply(s, lo), self.shift.apply(s, hi));
            self.sum[2 * k] = s.add64(self.sum[2 * k], d0);
            self.sum[2 * k + 1] = s.add64(self.sum[2 * k + 1], d1);
            self.sq[2 * k] = s.mul_add64(d0, d0, self.sq[2 * k]);
            self.sq[2 * k + 1] = s.mul_add64(d1, d1, self.sq[2 * k + 1]);
        }
    }

    /// Adds `x[i..]` (less than two vectors) and returns `(Σd, Σd²)`.
    #[inline(always)]
    fn finish<T: Storage + Element<Compute = f32>>(
        mut self,
        s: S,
        x: &[T],
        mut i: usize,
    ) -> (f64, f64) {
        let (n, l, p) = (x.len(), S::LANES, s.splat64(self.pivot));
        while i + l <= n {
            let [lo, hi] = T::load_wide_unordered(s, &x[i..]);
            let (d0, d1) = (s.sub64(lo, p), s.sub64(hi, p));
            self.sum[0] = s.add64(self.sum[0], d0);
            self.sum[1] = s.add64(self.sum[1], d1);
            self.sq[0] = s.mul_add64(d0, d0, self.sq[0]);
            self.sq[1] = s.mul_add64(d1, d1, self.sq[1]);
            i += l;
        }
        let (mut sum_d, mut sum_sq) = (fold4(s, self.sum), fold4(s, self.sq));
        for &v in &x[i..] {
            let d = to_f64(v) - self.pivot;
            sum_d += d;
            sum_sq += d * d;
        }
        (sum_d, sum_sq)
    }
}

/// `v − pivot` in f64, computed as `v·1 − pivot` by the FMA units: the same bits as a
/// subtraction (one rounding of the same exact value), but on the multiply-add pipes, which
/// pass 1 leaves half idle while the conversions and sums crowd the add pipes (Zen 4: two
/// of each). The 1 is hidden from the compiler, which would otherwise turn the FMA back into
/// a subtraction.
#[derive(Clone, Copy)]
struct Shift<S: Simd> {
    one: S::F64,
    neg: S::F64,
}

impl<S: Simd> Shift<S> {
    #[inline(always)]
    fn new(s: S, pivot: f64) -> Self {
        Shift {
            one: s.splat64(std::hint::black_box(1.0)),
            neg: s.splat64(-pivot),
        }
    }

    #[inline(always)]
    fn apply(self, s: S, v: S::F64) -> S::F64 {
        s.mul_add64(v, self.one, self.neg)
    }
}

/// The sum of 4 accumulators' lanes, in a fixed order.
#[inline(always)]
fn fold4<S: Simd>(s: S, a: [S::F64; 4]) -> f64 {
    s.reduce64(s.add64(s.add64(a[0], a[2]), s.add64(a[1], a[3])))
}

/// μ split into an f32 pair: `x − hi` is exact near μ, `lo` keeps what f32 cannot hold.
#[inline(always)]
fn split_mean(mean: f64) -> (f32, f32) {
    let hi = mean as f32;
    (hi, (mean - f64::from(hi)) as f32)
}

/// `src[i..i + t]` in a buffer one vector long (the tail of a row; padding lanes are loaded
/// but never stored).
#[inline(always)]
fn stage<U: Copy + Default>(src: &[U], i: usize, t: usize) -> [U; MAX_LANES] {
    let mut buf = [U::default(); MAX_LANES];
    buf[..t].copy_from_slice(&src[i..i + t]);
    buf
}

/// `((x − hi) − lo)·rstd`, then `·γ + β` (one fused step) with γ/β as given. A plain fn, not
/// a closure: closures do not inherit the ISA's target features, so the intrinsics inside one
/// would not inline.
#[inline(always)]
fn apply<S: Simd>(
    s: S,
    [hi, lo, rstd]: [S::F32; 3],
    xv: S::F32,
    w: Option<S::F32>,
    b: Option<S::F32>,
) -> S::F32 {
    let xhat = s.mul(s.sub(s.sub(xv, hi), lo), rstd);
    match (w, b) {
        (Some(w), Some(b)) => s.mul_add(xhat, w, b),
        (Some(w), None) => s.mul(xhat, w),
        (None, Some(b)) => s.add(xhat, b),
        (None, None) => xhat,
    }
}

/// Pass 2: `y = ((x − hi) − lo)·rstd·γ + β`, with γ/β present as the flags say, and
/// non-temporal stores if `NT`; with `next`, pass 1 of that row runs
/// in the same loop (see [`forward_rows_pipelined`]) and its sums are returned.
#[inline(always)]
fn normalize<
    S: Simd,
    T: Storage + Element<Compute = f32>,
    P: Param,
    const W: bool,
    const B: bool,
    const NT: bool,
>(
    s: S,
    x: &[T],
    weight: &[P],
    bias: &[P],
    stats: RowStats,
    y: &mut [T],
    next: Option<Next<'_, T>>,
) -> Option<(f64, f64)> {
    let (n, l) = (x.len(), S::LANES);
    let (hi, lo) = split_mean(stats.mean);
    let (hi, lo, rstd) = (s.splat(hi), s.splat(lo), s.splat(stats.rstd as f32));
    let c = [hi, lo, rstd];
    // Non-temporal stores need an aligned destination: the first few elements, up to the
    // vector-aligned boundary of y, go through the staged path. Staged or not, every element
    // takes the same vector arithmetic, so where y starts never changes a result.
    let head = if NT { head_len::<S, T>(y) } else { 0 };
    if NT && (n - head) % l != 0 {
        // The row's last line, partly written by plain stores (staged) — and so is the next
        // row's first. A plain store to a line not in cache waits for it to be read from
        // memory, and the non-temporal stores queued behind it wait too (stores leave in
        // program order): asked for now, it arrives while the row's pass 2 runs. f32,
        // 8192×768, 2 threads, y 16 bytes past a cache line (as `malloc` returns large
        // blocks), so that every row stages a head and a tail: 0.30–0.37 → 0.22–0.32 ns/elem
        // (6 rounds, new/old 0.73–0.98, median 0.85), against 0.23–0.27 with y aligned.
        prefetch_line_for_write(y, n - 1);
    }
    if head > 0 {
        normalize_staged::<S, T, P, W, B>(s, c, x, weight, bias, y, 0, head);
    }
    let mut i = head;
    let sums = match next {
        Some(Next {
            x: nx,
            pivot,
            lookahead,
        }) => {
            let mut acc = Sums::new(s, pivot);
            // Two vectors of each pass per step, with every array cut to the columns the
            // steps walk first (fewer bounds checks: the loop was mostly scalar
            // instructions), then what is left of either pass.
            let steps = (nx.len() / (2 * l)).min((n - head) / (2 * l));
            let span = head..head + steps * 2 * l;
            {
                let (xs, ys, nxs) = (&x[span.clone()], &mut y[span.clone()], &nx[..span.len()]);
                let ws = if W { &weight[span.clone()] } else { &[] };
                let bs = if B { &bias[span.clone()] } else { &[] };
                let mut j = 0;
                while j + 2 * l <= nxs.len() {
                    lookahead.touch_step(j, 2 * l);
                    acc.step(s, nxs, j);
                    normalize_pair::<S, T, P, W, B, NT>(s, c, xs, ws, bs, ys, j);
                    j += 2 * l;
                }
            }
            i = span.end;
            let mut j = span.len();
            while j + 2 * l <= nx.len() {
                lookahead.touch_step(j, 2 * l);
                acc.step(s, nx, j);
                j += 2 * l;
            }
            Some(acc.finish(s, nx, j))
        }
        None => None,
    };
    while i + 2 * l <= n {
        normalize_pair::<S, T, P, W, B, NT>(s, c, x, weight, bias, y, i);
        i += 2 * l;
    }
    if i + l <= n {
        normalize_vector::<S, T, P, W, B, NT>(s, c, x, weight, bias, y, i);
        i += l;
    }
    if i < n {
        normalize_staged::<S, T, P, W, B>(s, c, x, weight, bias, y, i, n - i);
    }
    sums
}

/// `y[i..i + LANES]` of pass 2.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn normalize_vector<
    S: Simd,
    T: Storage + Element<Compute = f32>,
    P: Param,
    const W: bool,
    const B: bool,
    const NT: bool,
>(
    s: S,
    c: [S::F32; 3],
    x: &[T],
    weight: &[P],
    bias: &[P],
    y: &mut [T],
    i: usize,
) {
    let v = pass2_value::<S, T, P, W, B>(s, c, x, weight, bias, i);
    if NT {
        T::stream(s, &mut y[i..], v);
    } else {
        T::store(s, &mut y[i..], v);
    }
}

/// `y[i..i + LANES]` of pass 2, before the store.
#[inline(always)]
fn pass2_value<
    S: Simd,
    T: Storage + Element<Compute = f32>,
    P: Param,
    const W: bool,
    const B: bool,
>(
    s: S,
    c: [S::F32; 3],
    x: &[T],
    weight: &[P],
    bias: &[P],
    i: usize,
) -> S::F32 {
    let wv = if W {
        Some(P::load(s, &weight[i..]))
    } else {
        None
    };
    let bv = if B {
        Some(P::load(s, &bias[i..]))
    } else {
        None
    };
    apply(s, c, T::load(s, &x[i..]), wv, bv)
}

/// `y[i..i + 2·LANES]` of pass 2: [`normalize_vector`] twice, stored together (the same bits;
/// some types narrow two vectors more cheaply than one at a time).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn normalize_pair<
    S: Simd,
    T: Storage + Element<Compute = f32>,
    P: Param,
    const W: bool,
    const B: bool,
    const NT: bool,
>(
    s: S,
    c: [S::F32; 3],
    x: &[T],
    weight: &[P],
    bias: &[P],
    y: &mut [T],
    i: usize,
) {
    let v0 = pass2_value::<S, T, P, W, B>(s, c, x, weight, bias, i);
    let v1 = pass2_value::<S, T, P, W, B>(s, c, x, weight, bias, i + S::LANES);
    T::store2::<S, NT>(s, &mut y[i..], [v0, v1]);
}

/// The elements of y before its first vector-aligned address (fewer than one vector; all of
/// them when the row ends sooner): where non-temporal stores can start.
#[inline(always)]
fn head_len<S: Simd, T>(y: &[T]) -> usize {
    // (LANES and the element sizes are powers of two, as `align_offset` requires; were the
    // offset unreachable, usize::MAX, the whole row would be staged: still correct.)
    let align = S::LANES * std::mem::size_of::<T>();
    y.as_ptr().align_offset(align).min(y.len())
}

/// `y[i..i + t]` of pass 2 (t < one vector), staged through buffers one vector long and run
/// through [`normalize_vector`]: the same arithmetic as whole vectors (padding lanes are
/// computed, never stored).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn normalize_staged<
    S: Simd,
    T: Storage + Element<Compute = f32>,
    P: Param,
    const W: bool,
    const B: bool,
>(
    s: S,
    c: [S::F32; 3],
    x: &[T],
    weight: &[P],
    bias: &[P],
    y: &mut [T],
    i: usize,
    t: usize,
) {
    let none = [P::default(); MAX_LANES];
    let wb = if W { stage(weight, i, t) } else { none };
    let bb = if B { stage(bias, i, t) } else { none };
    let mut out = [T::default(); MAX_LANES];
    normalize_vector::<S, T, P, W, B, false>(s, c, &stage(x, i, t), &wb, &bb, &mut out, 0);
    y[i..i + t].copy_from_slice(&out[..t]);
}

impl<T: Element<Compute = f32> + Storage> WithSimd for Backward<'_, T> {
    type Output = ();
    type Elem = T;

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        match (self.0.norm, self.0.weight.is_some()) {
            (Norm::Layer, true) => backward_rows::<S, T, true, true>(s, self.0),
            (Norm::Layer, false) => backward_rows::<S, T, true, false>(s, self.0),
            (Norm::Rms, true) => backward_rows::<S, T, false, true>(s, self.0),
            (Norm::Rms, false) => backward_rows::<S, T, false, false>(s, self.0),
        }
    }
}

/// Every row of a backward block; `CENTER` as in `forward_rows`, `W`: whether there is a γ.
///
/// Software-pipelined like the forward: pass 1 of the next row (or group of rows) runs inside
/// pass 2 of the current one, so that reading x and dy from memory overlaps writing dx.
#[inline(always)]
fn backward_rows<
    S: Simd,
    T: Element<Compute = f32> + Storage,
    const CENTER: bool,
    const W: bool,
>(
    s: S,
    block: BackwardBlock<'_, T, f32>,
) {
    let BackwardBlock {
        cols,
        want_dweight,
        want_dbias,
        weight,
        x,
        dy,
        mean,
        rstd,
        mut dx,
        dsum,
        partials,
        stream,
        ..
    } = block;
    let split = if want_dweight { cols } else { 0 };
    let (dw, db) = partials.split_at_mut(split);
    let (mut dw, mut db) = (want_dweight.then_some(dw), want_dbias.then_some(db));
    let weight = weight.unwrap_or(&[]);
    let rows = rstd.len();
    if rows == 0 {
        return;
    }
    let stats = |r: usize| (mean.map_or(0.0, |m| f64::from(m[r])), f64::from(rstd[r]));
    let row = |r: usize| r * cols..(r + 1) * cols;
    let lookahead = |from: usize| Lookahead::new([x, dy], from * cols);
    if cols < GROUP_MIN_COLS {
        // Rows one at a time: dβ (Σ dy, which needs no statistics) is added in pass 1, where
        // dy is already widened to f64, instead of widening it again in pass 2. The partials
        // see the same additions in the same row order, so the same bits. Groups keep dβ in
        // pass 2, summed over the group in registers: moving it to their pass 1 too (one
        // update of the partials per row, not per group) was faster in cache (one thread,
        // 16×4096, 1.09–1.34 → 1.03–1.04 ns/elem) but not on two threads out of cache (f32,
        // A/B medians of 10: 4096² 0.68 → 0.61 of copy, 8192×2048 0.66 → 0.64), and slower
        // at 64×65536 (one thread, 2.26–2.74 → 2.51–3.04 ns/elem).
        let mut db1 = db.take();
        let mut next = backward_terms::<S, T, CENTER, W>(
            s,
            &x[row(0)],
            &dy[row(0)],
            weight,
            stats(0),
            db1.as_deref_mut(),
        );
        for r in 0..rows {
            let span = row(r);
            let out = RowGrads {
                dsum: dsum.map(|ds| &ds[span.clone()]),
                dx: dx.as_deref_mut().map(|dx| &mut dx[span.clone()]),
                dweight: dw.as_deref_mut(),
                dbias: db.as_deref_mut(),
            };
            let (xr, dyr) = (&x[span.clone()], &dy[span]);
            let following = (r + 1 < rows).then(|| row(r + 1));
            next = match next {
                Some(t) => {
                    // (One call site for both cases: every inlined copy of pass 2 costs
                    // compile time.)
                    let mut ahead = match following {
                        Some(f) => Some(Ahead::new(
                            s,
                            [&x[f.clone()]],
                            [&dy[f]],
                            [stats(r + 1)],
                            CENTER,
                            lookahead(r + 1),
                            db1.as_deref_mut(),
                        )),
                        None => None,
                    };
                    pass2_row::<S, T, W>(s, xr, dyr, weight, t, out, stream, ahead.as_mut());
                    match ahead {
                        Some(ahead) => ahead.finish::<W>(s, weight)[0],
                        None => None,
                    }
                }
                None => {
                    // Outside f32's safe range: the f64 path, pass 1 included.
                    let norm = if CENTER { Norm::Layer } else { Norm::Rms };
                    portable::backward_row(xr, dyr, W.then_some(weight), stats(r), out, norm);
                    // (A match, not `Option::map`: closures do not inherit the ISA's target
                    // features.)
                    match following {
                        Some(f) => backward_terms::<S, T, CENTER, W>(
                            s,
                            &x[f.clone()],
                            &dy[f],
                            weight,
                            stats(r + 1),
                            db1.as_deref_mut(),
                        ),
                        None => None,
                    }
                }
            };
        }
        return;
    }
    // Rows go through pass 2 in groups of GROUP where every row is in f32's safe range (one
    // read-modify-write of the dγ/dβ partials per group instead of per row), one by one
    // otherwise. Groups start at the block's first row: the grouping, and so every bit of the
    // result, depends only on the problem.
    let group_at = |r: usize| if r + GROUP <= rows { GROUP } else { 1 };
    // (Plain loops, not closures, around the vector code: closures do not inherit the ISA's
    // target features.)
    let mut terms: [Option<Pass2>; GROUP] = [None; GROUP];
    let mut terms_ready = false;
    let mut r = 0;
    while r < rows {
        let group = group_at(r);
        let end = r + group;
        let next_group = if end < rows { group_at(end) } else { 0 };
        if !terms_ready {
            for (k, t) in terms.iter_mut().enumerate().take(group) {
                let span = row(r + k);
                *t = backward_terms::<S, T, CENTER, W>(
                    s,
                    &x[span.clone()],
                    &dy[span],
                    weight,
                    stats(r + k),
                    None,
                );
            }
        }
        terms_ready = false;
        let mut block_dx = dx
            .as_deref_mut()
            .map(|dx| &mut dx[row(r).start..row(end - 1).end]);
        let rows_of = |k: usize| row(r + k);
        if group == GROUP && terms.iter().all(Option::is_some) {
            let mut dxs = block_dx.take().map(|d| d.chunks_exact_mut(cols));
            let lanes: [Lane<'_, T>; GROUP] = std::array::from_fn(|k| Lane {
                x: &x[rows_of(k)],
                dy: &dy[rows_of(k)],
                dsum: dsum.map(|ds| &ds[rows_of(k)]),
                dx: dxs.as_mut().and_then(Iterator::next),
                terms: terms[k].unwrap(),
            });
            let (dw, db) = (dw.as_deref_mut(), db.as_deref_mut());
            let next_rows = |k: usize| row(end + k);
            let mut ahead = if next_group == GROUP {
                Some(Ahead::new(
                    s,
                    std::array::from_fn(|k| &x[next_rows(k)]),
                    std::array::from_fn(|k| &dy[next_rows(k)]),
                    std::array::from_fn(|k| stats(end + k)),
                    CENTER,
                    lookahead(end),
                    None,
                ))
            } else {
                None
            };
            pass2::<S, T, W, GROUP>(s, lanes, weight, dw, db, stream, ahead.as_mut());
            if let Some(ahead) = ahead {
                terms = ahead.finish::<W>(s, weight);
                terms_ready = true;
            }
        } else {
            let mut dxs = block_dx.map(|d| d.chunks_exact_mut(cols));
            for (k, t) in terms.iter().take(group).enumerate() {
                let dx_row = dxs.as_mut().and_then(Iterator::next);
                let span = rows_of(k);
                let out = RowGrads {
                    dsum: dsum.map(|ds| &ds[span.clone()]),
                    dx: dx_row,
                    dweight: dw.as_deref_mut(),
                    dbias: db.as_deref_mut(),
                };
                let (xr, dyr) = (&x[span.clone()], &dy[span]);
                match t {
                    Some(t) => pass2_row::<S, T, W>(s, xr, dyr, weight, *t, out, stream, None),
                    // Outside f32's safe range: the f64 path, pass 1 included.
                    None => {
                        let norm = if CENTER { Norm::Layer } else { Norm::Rms };
                        let w = W.then_some(weight);
                        portable::backward_row(xr, dyr, w, stats(r + k), out, norm);
                    }
                }
            }
        }
        r = end;
    }
}

/// Rows whose dγ/dβ contributions are summed in registers before one update of the partials.
///
/// Two, not four (as until `b64eeb9`), measured on a 2-core AMD EPYC (1 MiB of L2 per core,
/// 32 MiB of L3), f32 backward with dx, dγ and dβ, 2 threads, ns/elem, medians of 6 runs
/// alternating builds (`backward_into` alone, against a copy in the same process): with the
/// dense loop of [`pass2_dense`] for pairs, groups of 4 → pairs 4096×4096 0.66 → 0.48,
/// 2048×8192 0.72 → 0.58, 1024×16384 0.62 → 0.61, 1024×65536 0.61 → 0.55; one row at a time
/// (its dγ and dβ partials read and written once per row) gave 0.48, 0.69, 0.62 and 0.63.
/// In cache (one thread, 8×4096) a group of 4 costs 0.72–0.81 ns/elem, a pair 0.63–0.71, a
/// single row 0.57–0.60: four rows' constants (20 vectors) and slices do not fit in
/// registers, and a single row pays for its partials only out of cache.
const GROUP: usize = 2;

/// Rows this long and longer go through pass 2 in groups: their f64 partials (16 bytes per
/// column) no longer fit in L1 beside the rows, and updating them once per group instead of
/// once per row pays (see [`GROUP`]). Shorter rows keep one row at a time: with the partials in L1,
/// grouping measured no clear gain (768 columns: within the machine's noise). The longest
/// rows keep their groups too, though a pair of 65536 f32 columns (1 MiB of x and dy) spills
/// from a 1 MiB L2 before pass 2 reads it again: one row at a time was slower still, its
/// partials updated twice as often.
const GROUP_MIN_COLS: usize = 2048;

/// The per-row constants of backward pass 2 (f32): the split mean, rstd, rstd·mean(g) and
/// rstd·mean(g·x̂).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pass2 {
    hi: f32,
    lo: f32,
    rstd: f32,
    c_g: f32,
    c_x: f32,
}

/// One row of a pass-2 group.
struct Lane<'a, T> {
    x: &'a [T],
    dy: &'a [T],
    dsum: Option<&'a [T]>,
    dx: Option<&'a mut [T]>,
    terms: Pass2,
}

/// Backward pass 1 of a row: Σd, Σg, Σg·d in f64 (d = x − mean and g = dy·γ, both exact),
/// and the constants of pass 2; `None` when the row is outside f32's safe range (judged, as
/// in the portable kernel, on the refined mean) and must take the f64 path.
#[inline(always)]
fn backward_terms<
    S: Simd,
    T: Storage + Element<Compute = f32>,
    const CENTER: bool,
    const W: bool,
>(
    s: S,
    x: &[T],
    dy: &[T],
    weight: &[f32],
    stats: (f64, f64),
    mut dbias: Option<&mut [f64]>,
) -> Option<Pass2> {
    let mut acc = TermSums::new(s);
    let end = x.len() / S::LANES * S::LANES;
    acc.run::<T, W>(s, x, dy, weight, stats.0, 0..end, dbias.as_deref_mut());
    acc.finish::<T, W>(s, x, dy, weight, end, stats, CENTER, dbias)
}

/// The running sums of backward pass 1 (two accumulators each for Σd, Σg, Σg·d), fed whole
/// vectors by [`TermSums::run`], then the remaining elements one by one by
/// [`TermSums::finish`].
///
/// The f64 widening is most of backward's arithmetic, and it is kept on purpose. Measured
/// without it (sums in f32 over blocks of 8 vectors, then f64; dγ/dβ summed in f32 over 4
/// rows, then f64), 2 threads, f32 backward went 0.78 → 0.83 of copy at 4096×4096 and 0.69
/// → 0.77 at 1024×65536 (8192×768 unchanged) — and dβ was no longer correctly rounded (errors
/// up to 4× the suite's elementwise bound), nor dx within its bound. Exactness won.
struct TermSums<S: Simd> {
    sd: [S::F64; 2],
    sg: [S::F64; 2],
    sgd: [S::F64; 2],
}

impl<S: Simd> TermSums<S> {
    #[inline(always)]
    fn new(s: S) -> Self {
        let zero = s.splat64(0.0);
        TermSums {
            sd: [zero; 2],
            sg: [zero; 2],
            sgd: [zero; 2],
        }
    }

    /// Adds the whole vectors of `span` (its length is a multiple of `LANES`), in one tight
    /// loop, and dy to the dβ partials `dbias` (indexed like x) where given.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn run<T: Storage + Element<Compute = f32>, const W: bool>(
        &mut self,
        s: S,
        x: &[T],
        dy: &[T],
        weight: &[f32],
        mean: f64,
        span: std::ops::Range<usize>,
        dbias: Option<&mut [f64]>,
    ) {
        // (A match, not a flag tested per vector: two tight loops.)
        match dbias {
            Some(db) => self.run_with::<T, W, true>(s, x, dy, weight, mean, span, db),
            None => self.run_with::<T, W, false>(s, x, dy, weight, mean, span, &mut []),
        }
    }

    /// [`TermSums::run`], with dβ's wish (`DB`) as a constant.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn run_with<T: Storage + Element<Compute = f32>, const W: bool, const DB: bool>(
        &mut self,
        s: S,
        x: &[T],
        dy: &[T],
        weight: &[f32],
        mean: f64,
        span: std::ops::Range<usize>,
        dbias: &mut [f64],
    ) {
        let pivot = s.splat64(mean);
        // A local copy of the accumulators: through `self` LLVM kept one of them in memory,
        // a store-to-load chain per vector.
        let mut acc = self.copy();
        // Every array cut to the span first: fewer bounds checks in the loop.
        let (x, dy) = (&x[span.clone()], &dy[span.clone()]);
        let weight = if W { &weight[span.clone()] } else { &[] };
        let dbias = if DB { &mut dbias[span] } else { &mut [] };
        let mut i = 0;
        while i + S::LANES <= x.len() {
            acc.step::<T, W, DB>(s, x, dy, weight, pivot, dbias, i);
            i += S::LANES;
        }
        *self = acc;
    }

    /// The accumulators, copied (for a loop to keep in registers).
    #[inline(always)]
    fn copy(&self) -> Self {
        TermSums {
            sd: self.sd,
            sg: self.sg,
            sgd: self.sgd,
        }
    }

    /// Adds the vector at column `i` (the dβ partials `dbias` indexed like x, used if `DB`).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn step<T: Storage + Element<Compute = f32>, const W: bool, const DB: bool>(
        &mut self,
        s: S,
        x: &[T],
        dy: &[T],
        weight: &[f32],
        pivot: S::F64,
        dbias: &mut [f64],
        i: usize,
    ) {
        let xs = T::load_wide(s, &x[i..]);
        let dys = T::load_wide(s, &dy[i..]);
        let gs = if W {
            let w = s.load_f32_wide(&weight[i..]);
            [s.mul64(dys[0], w[0]), s.mul64(dys[1], w[1])]
        } else {
            dys
        };
        for h in 0..2 {
            let d = s.sub64(xs[h], pivot);
            self.sd[h] = s.add64(self.sd[h], d);
            self.sg[h] = s.add64(self.sg[h], gs[h]);
            self.sgd[h] = s.mul_add64(gs[h], d, self.sgd[h]);
        }
        if DB {
            accumulate(s, &mut dbias[i..], dys);
        }
    }

    /// Adds columns `i..` (less than one vector), to the dβ partials too where given, and
    /// returns the constants of pass 2 (see [`backward_terms`]).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn finish<T: Storage + Element<Compute = f32>, const W: bool>(
        self,
        s: S,
        x: &[T],
        dy: &[T],
        weight: &[f32],
        i: usize,
        stats: (f64, f64),
        center: bool,
        dbias: Option<&mut [f64]>,
    ) -> Option<Pass2> {
        let totals = self.totals::<T, W>(s, x, dy, weight, i, stats.0, dbias);
        pass2_terms(totals, x.len(), stats, center)
    }

    /// `[Σd, Σg, Σg·d]`, with columns `i..` (less than one vector) added one by one (to the
    /// dβ partials too where given).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn totals<T: Storage + Element<Compute = f32>, const W: bool>(
        self,
        s: S,
        x: &[T],
        dy: &[T],
        weight: &[f32],
        i: usize,
        mean: f64,
        mut dbias: Option<&mut [f64]>,
    ) -> [f64; 3] {
        let (mut sum_d, mut sum_g, mut sum_gd) = (
            s.reduce64(s.add64(self.sd[0], self.sd[1])),
            s.reduce64(s.add64(self.sg[0], self.sg[1])),
            s.reduce64(s.add64(self.sgd[0], self.sgd[1])),
        );
        for j in i..x.len() {
            let d = to_f64(x[j]) - mean;
            let g = to_f64(dy[j]) * if W { to_f64(weight[j]) } else { 1.0 };
            sum_d += d;
            sum_g += g;
            sum_gd += g * d;
            if let Some(db) = dbias.as_deref_mut() {
                db[j] += to_f64(dy[j]);
            }
        }
        [sum_d, sum_g, sum_gd]
    }
}

/// The constants of backward pass 2 of a row of `n` elements, from its pass-1 sums
/// `[Σd, Σg, Σg·d]` around the saved mean; `None` when the row is outside f32's safe range
/// (judged, as in the portable kernel, on the refined mean) and must take the f64 path.
/// Shared by whole rows and long rows summed in pieces (`long.rs`).
#[inline(always)]
pub(crate) fn pass2_terms(
    [sum_d, sum_g, sum_gd]: [f64; 3],
    n: usize,
    (mean, rstd): (f64, f64),
    center: bool,
) -> Option<Pass2> {
    let nf = n as f64;
    // The saved mean may be rounded: recover the exact one. RMSNorm has neither a mean to
    // recover nor a mean(g) term.
    let delta = if center { sum_d / nf } else { 0.0 };
    let mean_g = if center { sum_g / nf } else { 0.0 };
    let mean_gx = (sum_gd - delta * sum_g) * rstd / nf;
    if !in_safe_range::<f32>(mean + delta, rstd) {
        return None;
    }
    let (hi, lo) = split_mean(mean + delta);
    Some(Pass2 {
        hi,
        lo,
        rstd: rstd as f32,
        c_g: (rstd * mean_g) as f32,
        c_x: (rstd * mean_gx) as f32,
    })
}

/// Backward pass 1 of `R` rows, run a few vectors at a time inside pass 2 of the rows before
/// them (see [`backward_rows`]): row by row, each through [`TermSums`] as in
/// [`backward_terms`], so the results are the same.
struct Ahead<'a, S: Simd, T, const R: usize> {
    x: [&'a [T]; R],
    dy: [&'a [T]; R],
    stats: [(f64, f64); R],
    center: bool,
    /// The row being summed (R when all are done) and its next column.
    row: usize,
    col: usize,
    acc: TermSums<S>,
    terms: [Option<Pass2>; R],
    /// Prefetches for x and dy, from the first row's start on (the rows are consecutive).
    lookahead: Lookahead<'a, T, 2>,
    /// The dβ partials, when pass 1 adds to them (see [`backward_rows`]).
    dbias: Option<&'a mut [f64]>,
}

impl<'a, S: Simd, T: Storage + Element<Compute = f32>, const R: usize> Ahead<'a, S, T, R> {
    #[inline(always)]
    fn new(
        s: S,
        x: [&'a [T]; R],
        dy: [&'a [T]; R],
        stats: [(f64, f64); R],
        center: bool,
        lookahead: Lookahead<'a, T, 2>,
        dbias: Option<&'a mut [f64]>,
    ) -> Self {
        Ahead {
            lookahead,
            dbias,
            x,
            dy,
            stats,
            center,
            row: 0,
            col: 0,
            acc: TermSums::new(s),
            terms: [None; R],
        }
    }

    /// Up to `steps` more vectors of pass 1 (a row's last elements, with its constants, count
    /// as one step). The whole vectors of a row run in one tight loop.
    #[inline(always)]
    fn advance<const W: bool>(&mut self, s: S, weight: &[f32], steps: usize) {
        let mut left = steps;
        while left > 0 && self.row < R {
            let (x, dy, stats) = (self.x[self.row], self.dy[self.row], self.stats[self.row]);
            let whole = (x.len() - self.col) / S::LANES;
            if whole == 0 {
                let acc = std::mem::replace(&mut self.acc, TermSums::new(s));
                self.terms[self.row] = acc.finish::<T, W>(
                    s,
                    x,
                    dy,
                    weight,
                    self.col,
                    stats,
                    self.center,
                    self.dbias.as_deref_mut(),
                );
                self.row += 1;
                self.col = 0;
                left -= 1;
                continue;
            }
            let k = whole.min(left);
            let (at, span) = (
                self.row * x.len() + self.col,
                self.col..self.col + k * S::LANES,
            );
            self.lookahead.touch(at..at + span.len());
            let db = self.dbias.as_deref_mut();
            self.acc.run::<T, W>(s, x, dy, weight, stats.0, span, db);
            self.col += k * S::LANES;
            left -= k;
        }
    }

    /// The rest of pass 1; the constants of pass 2 of each row.
    #[inline(always)]
    fn finish<const W: bool>(mut self, s: S, weight: &[f32]) -> [Option<Pass2>; R] {
        self.advance::<W>(s, weight, usize::MAX);
        self.terms
    }
}

/// Vectors of backward pass 2 between two calls of [`Ahead::advance`], which then runs as
/// many vectors of each next row's pass 1 in one loop (groups of rows; a single row followed
/// by another interleaves the two passes vector by vector, see [`pass2_fused`]). Advancing
/// one vector per vector of pass 2 through `Ahead` spent more instructions on its state and
/// the prefetch ranges than on the arithmetic (seen in a `perf` profile): 2 threads,
/// 4096×4096 f32 backward 0.70 → 0.79 of copy; other shapes unchanged within noise. 8
/// measured no better (one thread, both builds run at once: 48×768 0.65 ns/elem either way,
/// 64×4096 1.02 → 1.08).
const PASS2_CHUNK: usize = 4;

/// Backward pass 2, in f32, for one row: [`pass2`] with a group of one.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pass2_row<S: Simd, T: Storage + Element<Compute = f32>, const W: bool>(
    s: S,
    x: &[T],
    dy: &[T],
    weight: &[f32],
    terms: Pass2,
    out: RowGrads<'_, T>,
    stream: bool,
    ahead: Option<&mut Ahead<'_, S, T, 1>>,
) {
    let lane = Lane {
        x,
        dy,
        dsum: out.dsum,
        dx: out.dx,
        terms,
    };
    pass2::<S, T, W, 1>(s, [lane], weight, out.dweight, out.dbias, stream, ahead);
}

/// Backward pass 2, in f32, for `R` rows at once: `dx = rstd·g − (x̂·c_x + c_g)` per row,
/// and the rows' dγ = Σ dy·x̂ and dβ = Σ dy summed in f64 registers (in row order), then added
/// to the block's partials. With `stream`, dx is written with non-temporal stores from the
/// first vector-aligned address of the first row's dx on; the columns before it and the tail
/// go through [`pass2_staged`], which runs the same vector arithmetic, so no result depends
/// on alignment.
#[inline(always)]
fn pass2<S: Simd, T: Storage + Element<Compute = f32>, const W: bool, const R: usize>(
    s: S,
    mut lanes: [Lane<'_, T>; R],
    weight: &[f32],
    mut dweight: Option<&mut [f64]>,
    mut dbias: Option<&mut [f64]>,
    stream: bool,
    ahead: Option<&mut Ahead<'_, S, T, R>>,
) {
    let (n, l) = (lanes[0].x.len(), S::LANES);
    let head = match lanes[0].dx.as_deref() {
        Some(dx) if stream => head_len::<S, T>(dx),
        _ => 0,
    };
    if stream && (n - head) % l != 0 {
        // Each row's last line, written with plain stores (staged): asked for now, as in
        // `normalize`, so that the streamed stores queued behind them do not wait for memory.
        for dx in lanes.iter().filter_map(|lane| lane.dx.as_deref()) {
            prefetch_line_for_write(dx, n - 1);
        }
    }
    if head > 0 {
        let (dw, db) = (dweight.as_deref_mut(), dbias.as_deref_mut());
        pass2_staged::<S, T, W, R>(s, &mut lanes, weight, dw, db, 0..head);
    }
    let end = head + (n - head) / l * l;
    let (dw, db) = (dweight.as_deref_mut(), dbias.as_deref_mut());
    pass2_span::<S, T, W, R>(s, &mut lanes, weight, dw, db, head..end, stream, ahead);
    if end < n {
        pass2_staged::<S, T, W, R>(s, &mut lanes, weight, dweight, dbias, end..n);
    }
}

/// Pass 2 over `span`, whole vectors (its length is a multiple of `LANES`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pass2_span<S: Simd, T: Storage + Element<Compute = f32>, const W: bool, const R: usize>(
    s: S,
    lanes: &mut [Lane<'_, T>; R],
    weight: &[f32],
    dweight: Option<&mut [f64]>,
    dbias: Option<&mut [f64]>,
    span: std::ops::Range<usize>,
    stream: bool,
    ahead: Option<&mut Ahead<'_, S, T, R>>,
) {
    let consts = pass2_consts(s, lanes);
    // Training's usual case (dx, no fused residual) has a loop of its own (see pass2_dense):
    // single rows, dβ already added in pass 1, with or without dγ; pairs, with dγ and dβ
    // both or neither.
    if lanes.iter().all(|l| l.dx.is_some() && l.dsum.is_none()) {
        match (R, dweight, dbias) {
            (1, Some(dw), None) => {
                let dense = pass2_dense::<S, T, W, R, true, false>;
                return dense(s, lanes, &consts, weight, dw, &mut [], span, stream, ahead);
            }
            (1 | 2, None, None) => {
                let dense = pass2_dense::<S, T, W, R, false, false>;
                return dense(
                    s,
                    lanes,
                    &consts,
                    weight,
                    &mut [],
                    &mut [],
                    span,
                    stream,
                    ahead,
                );
            }
            (2, Some(dw), Some(db)) => {
                let dense = pass2_dense::<S, T, W, R, true, true>;
                return dense(s, lanes, &consts, weight, dw, db, span, stream, ahead);
            }
            (_, dw, db) => {
                return pass2_general::<S, T, W, R>(
                    s, lanes, &consts, weight, dw, db, span, stream, ahead,
                );
            }
        }
    }
    pass2_general::<S, T, W, R>(
        s, lanes, &consts, weight, dweight, dbias, span, stream, ahead,
    );
}

/// The constants of [`Pass2`] of each lane, splatted.
#[inline(always)]
fn pass2_consts<S: Simd, T, const R: usize>(s: S, lanes: &[Lane<'_, T>; R]) -> [[S::F32; 5]; R] {
    let mut consts = [[s.splat(0.0); 5]; R];
    for (c, lane) in consts.iter_mut().zip(lanes.iter()) {
        let t = lane.terms;
        *c = [
            s.splat(t.hi),
            s.splat(t.lo),
            s.splat(t.rstd),
            s.splat(t.c_g),
            s.splat(t.c_x),
        ];
    }
    consts
}

/// [`pass2_span`] for any lanes and partials, the flags tested per vector.
///
/// For groups, a loop over a chunk of 4 vectors at a time, row by row within it (one slice
/// per array instead of one per row, the chunk's dγ/dβ sums in registers, the same sums in
/// the same order) was tried and reverted (`be66684`): faster in cache (one thread, 16×4096
/// 0.95 → 0.88 ns/elem) but slower where it counts, on two threads out of cache (bf16
/// 4096² 0.39 → 0.29 of copy, f32 0.73 → 0.69 with plain stores).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pass2_general<S: Simd, T: Storage + Element<Compute = f32>, const W: bool, const R: usize>(
    s: S,
    lanes: &mut [Lane<'_, T>; R],
    consts: &[[S::F32; 5]; R],
    weight: &[f32],
    mut dweight: Option<&mut [f64]>,
    mut dbias: Option<&mut [f64]>,
    span: std::ops::Range<usize>,
    stream: bool,
    mut ahead: Option<&mut Ahead<'_, S, T, R>>,
) {
    let l = S::LANES;
    let zero = s.splat64(0.0);
    let mut i = span.start;
    while i + l <= span.end {
        // A few vectors of pass 2, then the matching vectors of the next rows' pass 1 (see
        // PASS2_CHUNK).
        let vectors = ((span.end - i) / l).min(PASS2_CHUNK);
        let chunk_end = i + vectors * l;
        while i < chunk_end {
            let wv = if W {
                Some(s.load_f32(&weight[i..]))
            } else {
                None
            };
            let (mut aw, mut ab) = ([zero; 2], [zero; 2]);
            for (k, (lane, &c)) in lanes.iter_mut().zip(consts).enumerate() {
                let (xv, dyv) = (T::load(s, &lane.x[i..]), T::load(s, &lane.dy[i..]));
                let sums = (
                    dweight.is_some().then_some(&mut aw),
                    dbias.is_some().then_some(&mut ab),
                );
                let v = pass2_vector(s, xv, dyv, wv, c, k, sums);
                if let Some(dx) = lane.dx.as_deref_mut() {
                    // Fused residual: the sum's own upstream gradient flows straight through.
                    let v = match lane.dsum {
                        Some(ds) => s.add(v, T::load(s, &ds[i..])),
                        None => v,
                    };
                    if stream {
                        T::stream(s, &mut dx[i..], v);
                    } else {
                        T::store(s, &mut dx[i..], v);
                    }
                }
            }
            if let Some(dw) = dweight.as_deref_mut() {
                accumulate(s, &mut dw[i..], aw);
            }
            if let Some(db) = dbias.as_deref_mut() {
                accumulate(s, &mut db[i..], ab);
            }
            i += l;
        }
        if let Some(ahead) = ahead.as_deref_mut() {
            ahead.advance::<W>(s, weight, vectors * R);
        }
    }
}

/// [`pass2_span`] where every lane has dx and none a fused residual: single rows, whose dβ
/// is added in pass 1 (see [`backward_rows`]), and pairs, which add dγ and dβ here (both or
/// neither), with the wishes (`DW`, `DB`) as constants and every array cut to the span first:
/// the same
/// arithmetic in the same order, in a loop without the general one's per-vector flags and
/// with half its bounds checks (a `perf` profile showed the general loop at ~100
/// instructions per vector, this one at ~50). 2 threads, f32 backward, A/B medians of 6:
/// 8192×768 0.60 → 0.67 of copy; one thread, both binaries run at once on the two cores
/// (swapped each round, medians of 6), 48×768 0.85 → 0.75 ns/elem. For groups of 4 rows (12
/// slices live in the loop) it measured slower, 64×16384 2.9 → 3.4 ns/elem; for pairs
/// faster (in cache, one thread, 8×4096: 0.72–0.82 → 0.63–0.71 ns/elem; see [`GROUP`]).
/// (A row of a grouped block that ends it outside a pair still adds dβ in pass 2, in the
/// general loop.)
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pass2_dense<
    S: Simd,
    T: Storage + Element<Compute = f32>,
    const W: bool,
    const R: usize,
    const DW: bool,
    const DB: bool,
>(
    s: S,
    lanes: &mut [Lane<'_, T>; R],
    consts: &[[S::F32; 5]; R],
    weight: &[f32],
    dweight: &mut [f64],
    dbias: &mut [f64],
    span: std::ops::Range<usize>,
    stream: bool,
    mut ahead: Option<&mut Ahead<'_, S, T, R>>,
) {
    let (n, l) = (span.len(), S::LANES);
    let x: [&[T]; R] = std::array::from_fn(|k| &lanes[k].x[span.clone()]);
    let dy: [&[T]; R] = std::array::from_fn(|k| &lanes[k].dy[span.clone()]);
    let mut dx: [&mut [T]; R] = lanes.each_mut().map(|lane| match lane.dx.as_deref_mut() {
        Some(dx) => &mut dx[span.clone()],
        None => &mut [],
    });
    let w = if W { &weight[span.clone()] } else { &[] };
    let dweight = if DW {
        &mut dweight[span.clone()]
    } else {
        &mut []
    };
    let dbias = if DB { &mut dbias[span] } else { &mut [] };
    let mut j = 0;
    // A single row followed by another: the next row's pass 1 runs vector by vector in this
    // loop (see pass2_fused).
    if let (1, Some(next)) = (R, ahead.as_deref_mut()) {
        j = match next.dbias.take() {
            Some(db) => {
                let j = pass2_fused::<S, T, W, R, DW, true>(
                    s, x, dy, &mut dx, consts, w, dweight, stream, next, weight, db,
                );
                next.dbias = Some(db);
                j
            }
            None => pass2_fused::<S, T, W, R, DW, false>(
                s,
                x,
                dy,
                &mut dx,
                consts,
                w,
                dweight,
                stream,
                next,
                weight,
                &mut [],
            ),
        };
    }
    while j + l <= n {
        let vectors = ((n - j) / l).min(PASS2_CHUNK);
        for _ in 0..vectors {
            let partials = (&mut *dweight, &mut *dbias);
            dense_vector::<S, T, W, R, DW, DB>(s, &x, &dy, &mut dx, consts, w, partials, j, stream);
            j += l;
        }
        if let Some(ahead) = ahead.as_deref_mut() {
            ahead.advance::<W>(s, weight, vectors * R);
        }
    }
}

/// Pass 2 of one row in [`pass2_dense`] with pass 1 of the next row (`next`, not yet begun)
/// in the same loop, one vector of each per step, as far as both rows have whole vectors;
/// returns that many columns. What is left of pass 1 is left in `next`, which carries on from
/// there. Pass 1 adds the same vectors to the same accumulators, in the same order, as
/// [`TermSums::run`]: the same bits. Before, chunks of [`PASS2_CHUNK`] vectors alternated
/// with [`Ahead::advance`]: two loops of four trips per chunk (an exit branch each), `Ahead`'s
/// state and the prefetch range arithmetic, ~89 instructions per vector against ~75 now
/// (`perf annotate`). 2 threads, f32, 8192×768 backward: the kernel alone, builds
/// alternating, 0.87–1.01 → 0.76–0.88 ns/elem (means of runs); `layernorm bench` A/Bs on a
/// very noisy machine, medians of 5 and 8: 0.64 → 0.72 of copy once, 0.78 → 0.76 the
/// other time.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pass2_fused<
    S: Simd,
    T: Storage + Element<Compute = f32>,
    const W: bool,
    const R: usize,
    const DW: bool,
    const DB: bool,
>(
    s: S,
    x: [&[T]; R],
    dy: [&[T]; R],
    dx: &mut [&mut [T]; R],
    consts: &[[S::F32; 5]; R],
    w: &[f32],
    dweight: &mut [f64],
    stream: bool,
    next: &mut Ahead<'_, S, T, R>,
    weight: &[f32],
    dbias: &mut [f64],
) -> usize {
    let l = S::LANES;
    debug_assert!(
        next.row == 0 && next.col == 0,
        "the next row's pass 1 has begun"
    );
    let m = (x[0].len() / l).min(next.x[0].len() / l) * l;
    // Every array cut to the m columns first: fewer bounds checks in the loop.
    let (x, dy) = (x.map(|v| &v[..m]), dy.map(|v| &v[..m]));
    let mut dx = dx.each_mut().map(|v| &mut v[..m]);
    let w = if W { &w[..m] } else { &[] };
    let dweight = if DW { &mut dweight[..m] } else { &mut [] };
    let (nx, ndy) = (&next.x[0][..m], &next.dy[0][..m]);
    let nw = if W { &weight[..m] } else { &[] };
    let dbias = if DB { &mut dbias[..m] } else { &mut [] };
    let pivot = s.splat64(next.stats[0].0);
    let lookahead = next.lookahead;
    let mut acc = next.acc.copy();
    let mut j = 0;
    while j + l <= m {
        lookahead.touch_step(j, l);
        acc.step::<T, W, DB>(s, nx, ndy, nw, pivot, dbias, j);
        let partials = (&mut *dweight, &mut [][..]);
        dense_vector::<S, T, W, R, DW, false>(s, &x, &dy, &mut dx, consts, w, partials, j, stream);
        j += l;
    }
    next.acc = acc;
    next.col = m;
    m
}

/// The vector at column `j` of [`pass2_dense`]'s arrays.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn dense_vector<
    S: Simd,
    T: Storage + Element<Compute = f32>,
    const W: bool,
    const R: usize,
    const DW: bool,
    const DB: bool,
>(
    s: S,
    x: &[&[T]; R],
    dy: &[&[T]; R],
    dx: &mut [&mut [T]; R],
    consts: &[[S::F32; 5]; R],
    w: &[f32],
    (dweight, dbias): (&mut [f64], &mut [f64]),
    j: usize,
    stream: bool,
) {
    let at = j..j + S::LANES;
    let wv = if W {
        Some(s.load_f32(&w[at.clone()]))
    } else {
        None
    };
    let (mut aw, mut ab) = ([s.splat64(0.0); 2], [s.splat64(0.0); 2]);
    for k in 0..R {
        let (xv, dyv) = (
            T::load(s, &x[k][at.clone()]),
            T::load(s, &dy[k][at.clone()]),
        );
        let sums = (DW.then_some(&mut aw), DB.then_some(&mut ab));
        let v = pass2_vector(s, xv, dyv, wv, consts[k], k, sums);
        if stream {
            T::stream(s, &mut dx[k][at.clone()], v);
        } else {
            T::store(s, &mut dx[k][at.clone()], v);
        }
    }
    if DW {
        accumulate(s, &mut dweight[at.clone()], aw);
    }
    if DB {
        accumulate(s, &mut dbias[at], ab);
    }
}

/// A group's running dγ or dβ sum over one vector of columns, when it is wanted.
type GroupSum<'a, S> = Option<&'a mut [<S as Simd>::F64; 2]>;

/// One vector of lane `k` of a group in pass 2: x̂ = ((x − hi) − lo)·rstd, dy·x̂ and dy added
/// to the group's dγ and dβ sums where given, and dx = rstd·g − (x̂·c_x + c_g) (g = dy·γ)
/// returned.
#[inline(always)]
fn pass2_vector<S: Simd>(
    s: S,
    xv: S::F32,
    dyv: S::F32,
    wv: Option<S::F32>,
    [hi, lo, rstd, c_g, c_x]: [S::F32; 5],
    k: usize,
    (aw, ab): (GroupSum<'_, S>, GroupSum<'_, S>),
) -> S::F32 {
    let xhat = s.mul(s.sub(s.sub(xv, hi), lo), rstd);
    if let Some(aw) = aw {
        add_lane(s, aw, k, s.widen(s.mul(dyv, xhat)));
    }
    if let Some(ab) = ab {
        add_lane(s, ab, k, s.widen(dyv));
    }
    let g = match wv {
        Some(w) => s.mul(dyv, w),
        None => dyv,
    };
    s.sub(s.mul(rstd, g), s.mul_add(xhat, c_x, c_g))
}

/// `acc += v` for lane `k` of a group; the first lane's value is taken as it is (one add
/// fewer than starting from zero).
#[inline(always)]
fn add_lane<S: Simd>(s: S, acc: &mut [S::F64; 2], k: usize, v: [S::F64; 2]) {
    *acc = if k == 0 {
        v
    } else {
        [s.add64(acc[0], v[0]), s.add64(acc[1], v[1])]
    };
}

/// Pass 2 over `span` (shorter than one vector), staged through buffers one vector long and
/// run through [`pass2_general`]: the same arithmetic as whole vectors (padding lanes are
/// computed, never stored).
#[inline(always)]
fn pass2_staged<S: Simd, T: Storage + Element<Compute = f32>, const W: bool, const R: usize>(
    s: S,
    lanes: &mut [Lane<'_, T>; R],
    weight: &[f32],
    dweight: Option<&mut [f64]>,
    dbias: Option<&mut [f64]>,
    span: std::ops::Range<usize>,
) {
    let (i, t) = (span.start, span.len());
    let mut xb = [[T::default(); MAX_LANES]; R];
    let mut dyb = [[T::default(); MAX_LANES]; R];
    let mut dsb = [[T::default(); MAX_LANES]; R];
    let mut dxb = [[T::default(); MAX_LANES]; R];
    for (k, lane) in lanes.iter().enumerate() {
        xb[k] = stage(lane.x, i, t);
        dyb[k] = stage(lane.dy, i, t);
        if let Some(ds) = lane.dsum {
            dsb[k] = stage(ds, i, t);
        }
    }
    let wb = if W {
        stage(weight, i, t)
    } else {
        [0.0f32; MAX_LANES]
    };
    let dwb = dweight.as_deref().map(|dw| stage(dw, i, t));
    let dbb = dbias.as_deref().map(|db| stage(db, i, t));
    let (mut dwb, mut dbb) = (dwb.unwrap_or_default(), dbb.unwrap_or_default());
    {
        let mut dxs = dxb.iter_mut();
        let mut staged: [Lane<'_, T>; R] = std::array::from_fn(|k| {
            let dx = dxs.next().expect("one buffer per lane");
            Lane {
                x: &xb[k],
                dy: &dyb[k],
                dsum: lanes[k].dsum.is_some().then_some(&dsb[k][..]),
                dx: lanes[k].dx.is_some().then_some(&mut dx[..]),
                terms: lanes[k].terms,
            }
        });
        let dw = dweight.is_some().then_some(&mut dwb[..]);
        let db = dbias.is_some().then_some(&mut dbb[..]);
        let consts = pass2_consts(s, &staged);
        let span = 0..S::LANES;
        pass2_general::<S, T, W, R>(s, &mut staged, &consts, &wb, dw, db, span, false, None);
    }
    for (lane, out) in lanes.iter_mut().zip(&dxb) {
        if let Some(dx) = lane.dx.as_deref_mut() {
            dx[i..i + t].copy_from_slice(&out[..t]);
        }
    }
    if let Some(dw) = dweight {
        dw[i..i + t].copy_from_slice(&dwb[..t]);
    }
    if let Some(db) = dbias {
        db[i..i + t].copy_from_slice(&dbb[..t]);
    }
}

/// `acc[..LANES] += v` (two f64 vectors).
#[inline(always)]
fn accumulate<S: Simd>(s: S, acc: &mut [f64], [v0, v1]: [S::F64; 2]) {
    let half = S::LANES / 2;
    let a0 = s.add64(s.load_f64(acc), v0);
    let a1 = s.add64(s.load_f64(&acc[half..]), v1);
    s.store_f64(acc, a0);
    s.store_f64(&mut acc[half..], a1);
}

/// `dst = src` widened to f32: 16-bit γ/β, once per call, for the kernels that read them
/// as f32 (backward, and forward from `FEW_ROWS` rows on). A vector loop: the iterator it
/// replaced cost ~0.17 ns per parameter (one bf16 row of 4096, forward, one thread: 0.58
/// ns/elem against 0.25 with f32 parameters, before such calls read γ/β as stored).
pub(crate) struct WidenParams<'a, P> {
    pub src: &'a [P],
    pub dst: &'a mut [f32],
}

impl<P: Param> WithSimd for WidenParams<'_, P> {
    type Output = ();
    type Elem = f32;

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let WidenParams { src, dst } = self;
        let (n, l) = (src.len().min(dst.len()), S::LANES);
        let mut i = 0;
        while i + l <= n {
            s.store_f32(&mut dst[i..], P::load(s, &src[i..]));
            i += l;
        }
        for (d, &v) in dst[i..n].iter_mut().zip(&src[i..n]) {
            *d = v.widen();
        }
    }
}

/// `out = sums` rounded once from f64 (the 16-bit types' `round_from_f64`, a vector at a
/// time: to f32 by rounding to odd, then the type's own narrowing store), for dγ/dβ. One per
/// column: for few rows (a decoding step, long rows) as much work as the rows themselves.
pub(crate) struct RoundInto<'a, P> {
    pub sums: &'a [f64],
    pub out: &'a mut [P],
}

impl<P: Param> WithSimd for RoundInto<'_, P> {
    type Output = ();
    type Elem = P;

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let RoundInto { sums, out } = self;
        let (n, l) = (sums.len().min(out.len()), S::LANES);
        let mut i = 0;
        while i + l <= n {
            let wide = [s.load_f64(&sums[i..]), s.load_f64(&sums[i + l / 2..])];
            P::store(s, &mut out[i..], s.narrow_odd(wide));
            i += l;
        }
        for (o, &v) in out[i..n].iter_mut().zip(&sums[i..n]) {
            *o = P::round_from_f64(v);
        }
    }
}

/// Pass 1 of a piece of a long row (see `long.rs`): `(Σd, Σd²)` around `pivot`, as
/// [`shifted_sums`] adds a whole row.
pub(crate) struct PieceSums<'a, T> {
    pub x: &'a [T],
    pub pivot: f64,
}

impl<T: Element<Compute = f32> + Storage> WithSimd for PieceSums<'_, T> {
    type Output = (f64, f64);
    type Elem = T;

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) -> (f64, f64) {
        shifted_sums(s, self.x, self.pivot)
    }
}

/// Pass 2 of a piece of a long row: `y = x̂·γ + β` with the row's statistics (`weight`,
/// `bias` and `y` cut like `x`).
pub(crate) struct PieceNormalize<'a, T, P> {
    pub x: &'a [T],
    pub weight: Option<&'a [P]>,
    pub bias: Option<&'a [P]>,
    pub stats: RowStats,
    pub y: &'a mut [T],
    pub stream: bool,
}

impl<T: Element<Compute = f32> + Storage, P: Param> WithSimd for PieceNormalize<'_, T, P> {
    type Output = ();
    type Elem = T;

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let PieceNormalize {
            x,
            weight,
            bias,
            stats,
            y,
            stream,
        } = self;
        if stream {
            normalize_affine::<S, T, P, true>(s, x, weight, bias, stats, y, None);
            s.fence();
        } else {
            normalize_affine::<S, T, P, false>(s, x, weight, bias, stats, y, None);
        }
    }
}

/// Backward pass 1 of a piece of a long row: `[Σd, Σg, Σg·d]` around the saved `mean`, as
/// [`TermSums`] adds a whole row.
pub(crate) struct PieceTerms<'a, T> {
    pub x: &'a [T],
    pub dy: &'a [T],
    pub weight: Option<&'a [f32]>,
    pub mean: f64,
}

impl<T: Element<Compute = f32> + Storage> WithSimd for PieceTerms<'_, T> {
    type Output = [f64; 3];
    type Elem = T;

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) -> [f64; 3] {
        let PieceTerms {
            x,
            dy,
            weight,
            mean,
        } = self;
        let end = x.len() / S::LANES * S::LANES;
        let mut acc = TermSums::new(s);
        match weight {
            Some(w) => {
                acc.run::<T, true>(s, x, dy, w, mean, 0..end, None);
                acc.totals::<T, true>(s, x, dy, w, end, mean, None)
            }
            None => {
                acc.run::<T, false>(s, x, dy, &[], mean, 0..end, None);
                acc.totals::<T, false>(s, x, dy, &[], end, mean, None)
            }
        }
    }
}

/// How backward pass 2 runs a row of a long-row problem: with the vector kernel and these
/// constants, or on the f64 path (a row outside f32's safe range).
#[derive(Clone, Copy, Debug)]
pub(crate) enum RowPlan {
    Vector(Pass2),
    F64(portable::BackwardRow),
}

/// One row's piece in [`PieceGrads`]: x, dy and dx cut to the piece's columns.
pub(crate) struct PieceRow<'a, T> {
    pub x: &'a [T],
    pub dy: &'a [T],
    pub dx: Option<&'a mut [T]>,
    pub plan: RowPlan,
}

/// Backward pass 2 of one piece of columns of every row of a long-row problem: dx row by
/// row, and dγ/dβ for those columns (`weight`, `dweight` and `dbias` cut to the piece's
/// columns), summed in f64 over the rows in order in buffers of the piece's own, then rounded
/// once into the outputs. The piece's sums stay in cache (L2/L3) between rows; row-long f64
/// partials, as the block kernels keep, were zeroed, read and written back, then read again
/// to be narrowed: for one row of 2^24 f32 columns, ~5 bytes of partials moved per byte of
/// the byte model. 2 threads, f32 backward, A/B medians of 5, ratio to copy: 1×16777216 0.07
/// → 0.25, 2×8388608 0.14 → 0.33, 4×4194304 0.25 → 0.28 (9.5 → 15.3 GB/s), 16×1048576 alike.
/// Walking the piece in chunks of 4096 or 16384 columns (every row per chunk, the sums in
/// L1/L2) measured no faster for few rows and slower for many (64×524288: 14–15 against
/// 16–19 GB/s): each row's part of a chunk is too short for the prefetchers.
pub(crate) struct PieceGrads<'a, T, P> {
    pub rows: Vec<PieceRow<'a, T>>,
    pub weight: Option<&'a [f32]>,
    pub dweight: Option<&'a mut [P]>,
    pub dbias: Option<&'a mut [P]>,
    pub stream: bool,
}

impl<T: Element<Compute = f32> + Storage, P: Element> WithSimd for PieceGrads<'_, T, P> {
    type Output = ();
    type Elem = T;

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let PieceGrads {
            rows,
            weight,
            dweight,
            dbias,
            stream,
        } = self;
        let sums = |out: &Option<&mut [P]>| out.as_ref().map(|o| vec![0.0f64; o.len()]);
        let (mut sum_dw, mut sum_db) = (sums(&dweight), sums(&dbias));
        for row in rows {
            let out = RowGrads {
                dx: row.dx,
                dsum: None,
                dweight: sum_dw.as_deref_mut(),
                dbias: sum_db.as_deref_mut(),
            };
            match (row.plan, weight) {
                (RowPlan::Vector(t), Some(w)) => {
                    pass2_row::<S, T, true>(s, row.x, row.dy, w, t, out, stream, None);
                }
                (RowPlan::Vector(t), None) => {
                    pass2_row::<S, T, false>(s, row.x, row.dy, &[], t, out, stream, None);
                }
                (RowPlan::F64(plan), w) => plan.apply(row.x, row.dy, w, out),
            }
        }
        round_into(dweight, sum_dw.as_deref().unwrap_or_default());
        round_into(dbias, sum_db.as_deref().unwrap_or_default());
        if stream {
            s.fence();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Param, RoundInto, WidenParams};
    use crate::arch::Isa;
    use half::{bf16, f16};

    /// Every ISA widens 16-bit parameters to the values of the scalar conversion, bit for bit,
    /// for every length up to a few vectors (whole vectors and the scalar tail), from slices
    /// that start anywhere, with zeros, subnormals, infinities and NaN among them.
    fn widens_as_scalar<P: Param>(from_f32: fn(f32) -> P) {
        let specials = [
            0.0,
            -0.0,
            1e-40,
            -3e-39,
            6e-8,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        let src: Vec<P> = (0..67)
            .map(|i| match i % 11 {
                k @ 0..=6 => from_f32(specials[k]),
                7 => from_f32(f32::NAN),
                _ => from_f32((i as f32 - 30.0) * 0.37),
            })
            .collect();
        for isa in Isa::available() {
            for start in 0..3 {
                for len in 0..src.len() - start {
                    let src = &src[start..start + len];
                    let mut dst = vec![1.0f32; len];
                    isa.vectorize(WidenParams { src, dst: &mut dst });
                    let want: Vec<u32> = src.iter().map(|v| v.widen().to_bits()).collect();
                    let got: Vec<u32> = dst.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got, want, "{:?}, start {start}, len {len}", isa.kind());
                }
            }
        }
    }

    /// Every ISA rounds f64 sums into 16-bit outputs with the bits of the scalar
    /// `round_from_f64`, at every length up to a few vectors: values just off the 16-bit
    /// midpoints (where rounding twice would go wrong), ties, exact values, subnormals of
    /// both types and of f32, values underflowing f32, beyond f32's range and beyond the
    /// 16-bit ranges, infinities and NaN.
    fn rounds_as_scalar<P: Param>() {
        let mut values = vec![
            0.0,
            -0.0,
            1.5,
            1.0 + 2f64.powi(-8) + 2f64.powi(-30),
            -(1.0 + 2f64.powi(-8) - 2f64.powi(-30)),
            1.0 + 2f64.powi(-11) + 2f64.powi(-40),
            1.0 + 2f64.powi(-8),
            1.0 + 2f64.powi(-11),
            6e-8,
            3e-39,
            -1e-41,
            1e-50,
            -1e-300,
            65519.0,
            65520.0,
            3.4e38,
            3.5e38,
            -1e300,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            -f64::NAN,
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let exp = 1023 - 140 + (state >> 52) % 280;
            values.push(f64::from_bits(
                (state & 0x800f_ffff_ffff_ffff) | (exp << 52),
            ));
        }
        let want: Vec<P> = values.iter().map(|&v| P::round_from_f64(v)).collect();
        let bits = |v: &[P]| -> Vec<u32> { v.iter().map(|x| x.widen().to_bits()).collect() };
        for isa in Isa::available() {
            for start in 0..2 {
                for len in [0, 1, 7, 8, 15, 16, 17, 33, 64, values.len() - start] {
                    let sums = &values[start..start + len];
                    let mut out = vec![P::default(); len];
                    isa.vectorize(RoundInto {
                        sums,
                        out: &mut out,
                    });
                    let want = &want[start..start + len];
                    assert_eq!(
                        bits(&out),
                        bits(want),
                        "{:?}, start {start}, len {len}",
                        isa.kind()
                    );
                }
            }
        }
    }

    #[test]
    fn bf16_sums_round_once_on_every_isa() {
        rounds_as_scalar::<bf16>();
    }

    #[test]
    fn f16_sums_round_once_on_every_isa() {
        rounds_as_scalar::<f16>();
    }

    #[test]
    fn bf16_parameters_widen_exactly_on_every_isa() {
        widens_as_scalar(bf16::from_f32);
    }

    #[test]
    fn f16_parameters_widen_exactly_on_every_isa() {
        widens_as_scalar(f16::from_f32);
    }
}
