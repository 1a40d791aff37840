//! Rows too long for the cache ([`LONG_COLS`] columns and more), cut into pieces of
//! [`PIECE`] columns so that one row keeps every thread busy.
//!
//! A row's statistics are needed before any of its outputs can be written, so a row longer
//! than the cache is read from memory twice whatever the kernel does; what the block kernels
//! cannot do with such rows is share them: a problem of one or two rows ran on one or two
//! threads, and backward summed dγ/dβ into one block's f64 partials as long as a row (2 ×
//! 8 MiB columns of f32, 2 threads: 0.04 of copy). Here every phase is spread over the pool:
//!
//! ```text
//! forward   A  each (row, piece): Σd, Σd² around the row's pivot (its first element)
//!           B  each row: the pieces' sums added in piece order → mean, rstd (a second
//!              pass over the pieces when the first cancelled, as for whole rows)
//!           C  each (row, piece): y = x̂·γ + β
//! backward  A  each (row, piece): Σd, Σg, Σg·d around the saved mean
//!           B  each row: the pieces' sums added in piece order → pass-2 constants
//!           C  each piece of columns: every row in order: dx, and dγ,
//!              dβ summed in f64 for those columns (in row order: no partials to combine),
//!              then rounded into the outputs
//! ```
//!
//! The pieces' sums combine by plain addition: every piece is summed around the same pivot
//! (the row's, not its own), so there is nothing to merge but the totals, exactly as the
//! whole-row kernels fold their accumulators — Chan's pairwise merge of (count, mean, M2)
//! would round more and buy nothing here. The cut depends on the row length alone and the
//! sums are added in piece order, so results are bitwise the same on any number of threads
//! and a row's outputs do not depend on the other rows. Rows outside f32's safe range take
//! the f64 path as whole rows do (forward: the whole row at once; backward: its constants
//! from the whole row, applied piece by piece), with the same bits as the block kernels.

use crate::arch::{Isa, Storage};
use crate::dtype::{to_f64, Element};
use crate::par::{map_in_order, Parallelism};

use super::portable::{self, in_safe_range, RowStats};
use super::simd::{self, PieceRow, RowPlan};
use super::{BackwardBlock, ForwardBlock};

/// Rows of at least this many columns go through this module: 2 MiB of f32, twice the L2 of
/// the cores here, so that a whole row would not stay in cache between its passes anyway.
pub(crate) const LONG_COLS: usize = 1 << 19;

/// Columns per piece (256 KiB of f32): x and dy of a piece stay in L2 between a row's use
/// of them and the next, and a row of [`LONG_COLS`] makes 8 pieces.
const PIECE: usize = 1 << 16;

/// The fixed cut of `cols` columns into pieces (the last may be short).
fn pieces(cols: usize) -> impl Iterator<Item = std::ops::Range<usize>> + Clone {
    (0..cols.div_ceil(PIECE)).map(move |p| p * PIECE..((p + 1) * PIECE).min(cols))
}

/// A row (or a row's worth of partials) cut into its pieces.
fn cut<T>(mut row: &mut [T]) -> Vec<&mut [T]> {
    let mut out = Vec::with_capacity(row.len().div_ceil(PIECE));
    while !row.is_empty() {
        let (piece, rest) = row.split_at_mut(PIECE.min(row.len()));
        out.push(piece);
        row = rest;
    }
    out
}

/// Forward of a block of long rows (no fused residual: the caller keeps those on the block
/// kernels).
pub(crate) fn forward<T: Element<Compute = f32> + Storage, P: simd::Param>(
    isa: Isa,
    par: Parallelism,
    block: ForwardBlock<'_, T, P>,
) {
    let ForwardBlock {
        norm,
        cols,
        eps,
        stream,
        weight,
        bias,
        x,
        residual,
        y,
        mut mean,
        mut rstd,
    } = block;
    debug_assert!(residual.is_none(), "long rows take no fused residual");
    let rows = x.len() / cols;
    let row = |r: usize| &x[r * cols..(r + 1) * cols];
    let center = norm.centers();
    let elems = x.len();
    let per_row = cols.div_ceil(PIECE);

    // A: every piece's sums around its row's pivot.
    let pivot = |r: usize| if center { to_f64(row(r)[0]) } else { 0.0 };
    let items: Vec<(usize, std::ops::Range<usize>)> = (0..rows)
        .flat_map(|r| pieces(cols).map(move |p| (r, p)))
        .collect();
    let sums = map_in_order(par, elems, items, |(r, p)| {
        isa.vectorize(simd::PieceSums {
            x: &row(r)[p],
            pivot: pivot(r),
        })
    });

    // B: each row's statistics; None for rows that take the f64 path.
    let stats: Vec<Option<RowStats>> = (0..rows)
        .map(|r| {
            let totals = add_in_order(&sums[r * per_row..(r + 1) * per_row]);
            let second = |mean: f64| {
                let items: Vec<_> = pieces(cols).collect();
                let sums = map_in_order(par, cols, items, |p| {
                    isa.vectorize(simd::PieceSums {
                        x: &row(r)[p],
                        pivot: mean,
                    })
                });
                add_in_order(&sums)
            };
            let stats = simd::stats_from_totals(cols, pivot(r), eps, center, totals, second);
            in_safe_range::<f32>(stats.mean, stats.rstd).then_some(stats)
        })
        .collect();

    // C: every piece of y; a row on the f64 path as one item.
    let mut items = Vec::with_capacity(rows * per_row);
    for (r, y) in y.chunks_exact_mut(cols).enumerate() {
        match stats[r] {
            Some(st) => items.extend(
                cut(y)
                    .into_iter()
                    .zip(pieces(cols))
                    .map(|(y, p)| (r, p, y, Some(st))),
            ),
            None => items.push((r, 0..cols, y, None)),
        }
    }
    let f64_stats = map_in_order(par, elems, items, |(r, p, y, st)| match st {
        Some(st) => {
            isa.vectorize(simd::PieceNormalize {
                x: &row(r)[p.clone()],
                weight: weight.map(|w| &w[p.clone()]),
                bias: bias.map(|b| &b[p]),
                stats: st,
                y,
                stream,
            });
            None
        }
        None => Some((r, portable::forward_row(row(r), weight, bias, eps, y, norm))),
    });

    let f64_rows = f64_stats.into_iter().flatten();
    let all = stats
        .iter()
        .enumerate()
        .filter_map(|(r, s)| s.map(|s| (r, s)));
    for (r, st) in all.chain(f64_rows) {
        super::save_stats(mean.as_deref_mut(), rstd.as_deref_mut(), r, st);
    }
}

/// Backward of a block of long rows (no fused residual, no partials: dγ/dβ are written to
/// `dweight`/`dbias`, rounded once from their f64 sums).
pub(crate) fn backward<T: Element<Compute = f32> + Storage, P: Element>(
    isa: Isa,
    par: Parallelism,
    block: BackwardBlock<'_, T, f32>,
    dweight: Option<&mut [P]>,
    dbias: Option<&mut [P]>,
) {
    let BackwardBlock {
        norm,
        cols,
        stream,
        weight,
        x,
        dy,
        mean,
        rstd,
        dx,
        dsum,
        ..
    } = block;
    debug_assert!(dsum.is_none(), "long rows take no fused residual");
    let rows = rstd.len();
    let span = |r: usize| r * cols..(r + 1) * cols;
    let stats = |r: usize| (mean.map_or(0.0, |m| f64::from(m[r])), f64::from(rstd[r]));
    let elems = x.len();
    let per_row = cols.div_ceil(PIECE);

    // A: every piece's sums around its row's saved mean.
    let items: Vec<(usize, std::ops::Range<usize>)> = (0..rows)
        .flat_map(|r| pieces(cols).map(move |p| (r, p)))
        .collect();
    let sums = map_in_order(par, elems, items, |(r, p)| {
        let at = r * cols + p.start..r * cols + p.end;
        isa.vectorize(simd::PieceTerms {
            x: &x[at.clone()],
            dy: &dy[at],
            weight: weight.map(|w| &w[p]),
            mean: stats(r).0,
        })
    });

    // B: each row's pass-2 plan (rows outside f32's range: the f64 path's, from the row).
    let plans: Vec<RowPlan> = (0..rows)
        .map(|r| {
            let part = &sums[r * per_row..(r + 1) * per_row];
            let totals = part
                .iter()
                .fold([0.0; 3], |a, s| [a[0] + s[0], a[1] + s[1], a[2] + s[2]]);
            match simd::pass2_terms(totals, cols, stats(r), norm.centers()) {
                Some(t) => RowPlan::Vector(t),
                None => RowPlan::F64(portable::BackwardRow::new(
                    &x[span(r)],
                    &dy[span(r)],
                    weight,
                    stats(r),
                    norm,
                )),
            }
        })
        .collect();

    // C: every piece of columns, all rows in order, dγ/dβ straight into the outputs.
    let mut dw_pieces = cut_opt(dweight, per_row);
    let mut db_pieces = cut_opt(dbias, per_row);
    let mut dx_pieces: Vec<Vec<Option<&mut [T]>>> = match dx {
        Some(dx) => dx
            .chunks_exact_mut(cols)
            .map(|row| cut_opt(Some(row), per_row))
            .collect(),
        None => (0..rows).map(|_| cut_opt(None, per_row)).collect(),
    };
    let items: Vec<simd::PieceGrads<'_, T, P>> = pieces(cols)
        .enumerate()
        .map(|(k, p)| simd::PieceGrads {
            rows: (0..rows)
                .map(|r| {
                    let at = r * cols + p.start..r * cols + p.end;
                    PieceRow {
                        x: &x[at.clone()],
                        dy: &dy[at],
                        dx: dx_pieces[r][k].take(),
                        plan: plans[r],
                    }
                })
                .collect(),
            weight: weight.map(|w| &w[p.clone()]),
            dweight: dw_pieces[k].take(),
            dbias: db_pieces[k].take(),
            stream,
        })
        .collect();
    map_in_order(par, elems, items, |piece| isa.vectorize(piece));
}

/// [`cut`] for an optional buffer: its `per_row` pieces, or as many `None`s.
fn cut_opt<U>(buf: Option<&mut [U]>, per_row: usize) -> Vec<Option<&mut [U]>> {
    match buf {
        Some(buf) => cut(buf).into_iter().map(Some).collect(),
        None => (0..per_row).map(|_| None).collect(),
    }
}

/// Pairs of sums added in order.
fn add_in_order(sums: &[(f64, f64)]) -> (f64, f64) {
    sums.iter()
        .fold((0.0, 0.0), |(a, b), &(s, q)| (a + s, b + q))
}
