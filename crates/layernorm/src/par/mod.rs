//! Deterministic partition of rows into blocks, and the parallel walk over them.
//!
//! Work is cut into blocks of rows whose boundaries depend only on the problem (`rows`,
//! `cols`), never on the number of threads. Anything reduced across rows (dγ, dβ) is reduced
//! per block into its own partial, then the partials are combined in block order — so every
//! output is bitwise the same with 1 thread or 64, and with [`Parallelism::Sequential`].

use std::ops::Range;

/// How a call may use threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Parallelism {
    /// Run on the calling thread only.
    Sequential,
    /// Split large tensors across the current rayon thread pool (the global pool, or the one a
    /// caller entered with `ThreadPool::install`). Tensors below a size threshold stay on the
    /// calling thread, where starting threads would cost more than it saves.
    #[default]
    Rayon,
}

impl Parallelism {
    /// Whether a call over `elems` elements would split its work across threads. Callers that
    /// hand work to a pool (`ThreadPool::install` costs a thread hand-off, tens of µs) can skip
    /// the pool when this is false.
    pub fn would_split(self, elems: usize) -> bool {
        self == Parallelism::Rayon && elems >= PAR_MIN_ELEMS
    }
}

/// Below this many elements a call stays on the calling thread: splitting 2^16 f32 (256 KiB,
/// a few microseconds of work) across threads costs more in wake-ups than it saves.
const PAR_MIN_ELEMS: usize = 1 << 16;

/// Elements per leaf task of a parallel walk (rows are never split).
const LEAF_ELEMS: usize = 1 << 15;

/// Elements per leaf task of a walk without reduction, at most (see [`Blocks::for_map`]).
const MAP_LEAF_MAX_ELEMS: usize = 1 << 19;

/// At most this many reduction blocks: enough to keep 64 threads busy.
const MAX_BLOCKS: usize = 64;

/// Rows per reduction block, at least. Every block zeroes its own f64 partials and the
/// partials are combined at the end: 16 bytes per column and block for dγ and dβ, written,
/// read and added, against 12 bytes per column and row of f32 x, dy and dx. With blocks of
/// one or two rows that bookkeeping outweighed the work, and a block shorter than the
/// kernels' group of rows never runs the pipelined path: one thread, f32 backward with
/// dγ/dβ, 64×16384 (blocks of 2 rows) took 2.84 ns/elem against 0.82 for dx alone.
const MIN_BLOCK_ROWS: usize = 8;

/// Bound on the f64 partial buffer of a reduction (2^20 values, 8 MiB).
const PARTIAL_BUDGET: usize = 1 << 20;

/// A fixed cut of `rows` into consecutive blocks of `block_rows` rows (the last may be short).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Blocks {
    pub rows: usize,
    pub block_rows: usize,
}

impl Blocks {
    /// Blocks for a walk with no cross-row reduction, where the cut changes no result: about
    /// four per thread of the current pool, each of [`LEAF_ELEMS`] to [`MAP_LEAF_MAX_ELEMS`]
    /// elements. Leaves must not be small: each one restarts the kernels' row pipeline (a
    /// leaf of one row has no next row to overlap) and their prefetch stream. f32 forward on
    /// 2 threads, medians of 6 runs, with leaves of at most 2^15 / 2^17 / 2^18 / 2^19
    /// elements: 1024×65536 0.81 / 0.96 / 1.10 / 1.16 of copy (2^15 was one row per leaf);
    /// 8192×768 0.86 / 0.85 / 0.84 / 0.89 (noise).
    pub fn for_map(rows: usize, cols: usize) -> Self {
        let per_thread = 4 * rayon::current_num_threads().max(1);
        let leaf = (rows.saturating_mul(cols) / per_thread).clamp(LEAF_ELEMS, MAP_LEAF_MAX_ELEMS);
        let block_rows = (leaf / cols.max(1)).clamp(1, rows.max(1));
        Blocks { rows, block_rows }
    }

    /// Blocks for a walk that reduces `partials_per_col` values per column and block: at most
    /// [`MAX_BLOCKS`], few enough that the partials fit in [`PARTIAL_BUDGET`], and each at
    /// least [`LEAF_ELEMS`] elements and [`MIN_BLOCK_ROWS`] rows, so a problem is not drowned
    /// in partials to zero and combine.
    pub fn for_reduction(rows: usize, cols: usize, partials_per_col: usize) -> Self {
        let by_budget = PARTIAL_BUDGET / (cols * partials_per_col.max(1)).max(1);
        let max_blocks = by_budget.clamp(1, MAX_BLOCKS);
        let block_rows = rows
            .div_ceil(max_blocks)
            .max(LEAF_ELEMS / cols.max(1))
            .max(MIN_BLOCK_ROWS);
        Blocks { rows, block_rows }
    }

    /// All `rows` in one block.
    pub fn single(rows: usize) -> Self {
        Blocks {
            rows,
            block_rows: rows.max(1),
        }
    }

    pub fn count(&self) -> usize {
        self.rows.div_ceil(self.block_rows)
    }

    pub fn range(&self, block: usize) -> Range<usize> {
        let start = block * self.block_rows;
        start..(start + self.block_rows).min(self.rows)
    }
}

impl Blocks {
    /// Blocks for a reduction over `rows` slabs of `slab` elements each, whose partials are
    /// small (a few values per channel, not per element): leaves of about [`LEAF_ELEMS`], at
    /// most [`MAX_BLOCKS`].
    pub fn for_slabs(rows: usize, slab: usize) -> Self {
        let block_rows = rows
            .div_ceil(MAX_BLOCKS)
            .max(LEAF_ELEMS / slab.max(1))
            .clamp(1, rows.max(1));
        Blocks { rows, block_rows }
    }
}

/// `f` applied to every item, results in item order, on the rayon pool when `par` splits a
/// problem of `elems` elements. The order of the results (and so any reduction over them in
/// order) does not depend on the number of threads.
pub(crate) fn map_in_order<U, R, F>(par: Parallelism, elems: usize, items: Vec<U>, f: F) -> Vec<R>
where
    U: Send,
    R: Send,
    F: Fn(U) -> R + Sync + Send,
{
    use rayon::prelude::*;
    if par.would_split(elems) && items.len() > 1 {
        items.into_par_iter().with_max_len(1).map(f).collect()
    } else {
        items.into_iter().map(f).collect()
    }
}

/// A piece of work over a contiguous range of rows that can be cut in two at a row.
pub(crate) trait RowSplit: Send + Sized {
    /// Splits into rows `[0, at)` and `[at, ..)`, relative to this piece.
    fn split_at(self, at: usize) -> (Self, Self);
}

/// Runs `f(piece, block)` once per block of `blocks`, in block order when sequential, and
/// through `rayon::join` otherwise. Each call gets exactly the rows of its block.
pub(crate) fn for_each_block<W, F>(par: Parallelism, elems: usize, blocks: Blocks, work: W, f: &F)
where
    W: RowSplit,
    F: Fn(W, usize) + Sync,
{
    let count = blocks.count();
    if !par.would_split(elems) || count < 2 {
        let mut rest = work;
        for b in 0..count {
            let (head, tail) = rest.split_at(blocks.range(b).len());
            f(head, b);
            rest = tail;
        }
    } else {
        split_recursive(blocks, 0..count, work, f);
    }
}

fn split_recursive<W, F>(blocks: Blocks, range: Range<usize>, work: W, f: &F)
where
    W: RowSplit,
    F: Fn(W, usize) + Sync,
{
    if range.len() == 1 {
        f(work, range.start);
        return;
    }
    let mid = range.start + range.len() / 2;
    let first_rows = blocks.range(mid).start - blocks.range(range.start).start;
    let (left, right) = work.split_at(first_rows);
    rayon::join(
        || split_recursive(blocks, range.start..mid, left, f),
        || split_recursive(blocks, mid..range.end, right, f),
    );
}

/// Splits an optional mutable slice of rows.
pub(crate) fn split_opt<T>(s: Option<&mut [T]>, at: usize) -> (Option<&mut [T]>, Option<&mut [T]>) {
    match s {
        Some(s) => {
            let (a, b) = s.split_at_mut(at);
            (Some(a), Some(b))
        }
        None => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rows(Range<usize>);
    impl RowSplit for Rows {
        fn split_at(self, at: usize) -> (Self, Self) {
            let mid = self.0.start + at;
            (Rows(self.0.start..mid), Rows(mid..self.0.end))
        }
    }

    #[test]
    fn every_block_gets_exactly_its_rows() {
        for rows in [1, 2, 7, 64, 65, 1000] {
            for cols in [1, 3, 4096, 1 << 20] {
                let blocks = Blocks::for_reduction(rows, cols, 2);
                assert!(blocks.count() <= MAX_BLOCKS);
                assert!(blocks.block_rows >= MIN_BLOCK_ROWS.min(rows));
                let seen = std::sync::Mutex::new(vec![]);
                let f = |w: Rows, b: usize| {
                    assert_eq!(w.0, blocks.range(b));
                    seen.lock().unwrap().push(b);
                };
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(3)
                    .build()
                    .unwrap();
                pool.install(|| {
                    for_each_block(Parallelism::Rayon, usize::MAX, blocks, Rows(0..rows), &f)
                });
                let mut seen = seen.into_inner().unwrap();
                seen.sort_unstable();
                assert_eq!(seen, (0..blocks.count()).collect::<Vec<_>>());
            }
        }
    }
}
