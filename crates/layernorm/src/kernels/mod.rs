//! The algorithms, written once, generic over the element type (and, in `simd.rs`, over the
//! instruction set).
//!
//! Kernels take rows that the public API has already validated; they cannot fail. Per-row
//! results depend only on the row's own data and length (never on its address or on the rows
//! around it), which is what makes outputs batch-invariant.
//!
//! Work arrives in blocks of whole rows ([`ForwardBlock`], [`BackwardBlock`]); each element
//! type says which kernel runs a block through [`RowKernels`]: the vector kernels for the
//! f32-computed types (f32, f16, bf16), the portable one for f64.

mod long;
pub(crate) mod portable;
pub(crate) mod reduce;
mod simd;

pub(crate) use long::LONG_COLS;
pub(crate) use simd::max_cancellation;
pub(crate) use simd::RoundInto;

use std::borrow::Cow;

use half::{bf16, f16};

use crate::arch::{Isa, Storage};
use crate::dtype::{Element, Float};
use crate::par::{for_each_block, split_opt, Blocks, Parallelism, RowSplit};

/// Which statistics a row is normalized with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// LayerNorm: centred, `x̂ = (x − mean)·rstd`, `rstd = 1/√(var + ε)`.
    Layer,
    /// RMSNorm: not centred, `x̂ = x·rstd`, `rstd = 1/√(mean(x²) + ε)`.
    Rms,
}

impl Norm {
    pub(crate) fn centers(self) -> bool {
        self == Norm::Layer
    }
}

/// A range of rows of a forward problem, with everything a kernel needs to normalize them.
pub struct ForwardBlock<'a, T: Element, P = T> {
    pub(crate) norm: Norm,
    pub(crate) cols: usize,
    pub(crate) eps: f64,
    /// Write y with non-temporal stores (the output is too large to stay in cache).
    pub(crate) stream: bool,
    /// γ and β: the element type, or f32 beside 16-bit data (mixed precision).
    pub(crate) weight: Option<&'a [P]>,
    pub(crate) bias: Option<&'a [P]>,
    pub(crate) x: &'a [T],
    /// Fused residual add: `sum = x + residual` is written out and normalized instead of x.
    pub(crate) residual: Option<Residual<'a, T>>,
    pub(crate) y: &'a mut [T],
    pub(crate) mean: Option<&'a mut [T::Compute]>,
    pub(crate) rstd: Option<&'a mut [T::Compute]>,
}

/// The residual input and the sum output of a fused residual add.
pub struct Residual<'a, T> {
    pub(crate) residual: &'a [T],
    pub(crate) sum: &'a mut [T],
}

impl<T: Element, P: Sync> RowSplit for ForwardBlock<'_, T, P> {
    fn split_at(self, at: usize) -> (Self, Self) {
        let elems = at * self.cols;
        let (x0, x1) = self.x.split_at(elems);
        let (y0, y1) = self.y.split_at_mut(elems);
        let (m0, m1) = split_opt(self.mean, at);
        let (s0, s1) = split_opt(self.rstd, at);
        let (r0, r1) = match self.residual {
            Some(Residual { residual, sum }) => {
                let (a, b) = residual.split_at(elems);
                let (c, d) = sum.split_at_mut(elems);
                (
                    Some(Residual {
                        residual: a,
                        sum: c,
                    }),
                    Some(Residual {
                        residual: b,
                        sum: d,
                    }),
                )
            }
            None => (None, None),
        };
        let (cols, eps, weight, bias) = (self.cols, self.eps, self.weight, self.bias);
        let (stream, norm) = (self.stream, self.norm);
        let piece = |x, residual, y, mean, rstd| ForwardBlock {
            norm,
            cols,
            eps,
            stream,
            weight,
            bias,
            x,
            residual,
            y,
            mean,
            rstd,
        };
        (piece(x0, r0, y0, m0, s0), piece(x1, r1, y1, m1, s1))
    }
}

impl<T: Element, P> ForwardBlock<'_, T, P> {
    fn rows(&self) -> usize {
        self.x.len() / self.cols
    }

    fn save_stats(&mut self, row: usize, stats: portable::RowStats) {
        save_stats(
            self.mean.as_deref_mut(),
            self.rstd.as_deref_mut(),
            row,
            stats,
        );
    }
}

/// Stores a row's statistics where the caller asked for them.
fn save_stats<K: Float>(
    mean: Option<&mut [K]>,
    rstd: Option<&mut [K]>,
    row: usize,
    stats: portable::RowStats,
) {
    if let Some(m) = mean {
        m[row] = K::from_f64(stats.mean);
    }
    if let Some(s) = rstd {
        s[row] = K::from_f64(stats.rstd);
    }
}

/// Rounds dγ or dβ, summed in f64, into its output once (`P::round_from_f64`), where the
/// caller asked for it.
pub(crate) fn round_into<P: Element>(out: Option<&mut [P]>, sums: &[f64]) {
    if let Some(out) = out {
        P::round_all_from_f64(sums, out);
    }
}

/// A range of rows of a backward problem, with the f64 dγ/dβ partials of the blocks it covers
/// (`partial_len` values per block: dγ's `cols` first, if requested, then dβ's).
pub struct BackwardBlock<'a, T: Element, P = T> {
    pub(crate) norm: Norm,
    pub(crate) cols: usize,
    pub(crate) block_rows: usize,
    pub(crate) partial_len: usize,
    pub(crate) want_dweight: bool,
    pub(crate) want_dbias: bool,
    /// Write dx with non-temporal stores (the output is too large to stay in cache).
    pub(crate) stream: bool,
    pub(crate) weight: Option<&'a [P]>,
    pub(crate) x: &'a [T],
    pub(crate) dy: &'a [T],
    /// Per-row means (LayerNorm only).
    pub(crate) mean: Option<&'a [T::Compute]>,
    pub(crate) rstd: &'a [T::Compute],
    pub(crate) dx: Option<&'a mut [T]>,
    /// Fused residual add: the upstream gradient of the sum, added to dx.
    pub(crate) dsum: Option<&'a [T]>,
    pub(crate) partials: &'a mut [f64],
}

impl<T: Element, P: Sync> RowSplit for BackwardBlock<'_, T, P> {
    fn split_at(self, at: usize) -> (Self, Self) {
        let elems = at * self.cols;
        let (x0, x1) = self.x.split_at(elems);
        let (dy0, dy1) = self.dy.split_at(elems);
        let (m0, m1) = match self.mean {
            Some(m) => {
                let (a, b) = m.split_at(at);
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        let (s0, s1) = self.rstd.split_at(at);
        let (dx0, dx1) = split_opt(self.dx, elems);
        let (ds0, ds1) = match self.dsum {
            Some(d) => {
                let (a, b) = d.split_at(elems);
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        // Splits fall on block boundaries (or at the end, for the short last block).
        let (p0, p1) = self
            .partials
            .split_at_mut(at.div_ceil(self.block_rows) * self.partial_len);
        let (cols, block_rows, partial_len) = (self.cols, self.block_rows, self.partial_len);
        let (want_dweight, want_dbias, weight) = (self.want_dweight, self.want_dbias, self.weight);
        let (norm, stream) = (self.norm, self.stream);
        let piece = |x, dy, mean, rstd, dx, dsum, partials| BackwardBlock {
            norm,
            cols,
            block_rows,
            partial_len,
            want_dweight,
            want_dbias,
            stream,
            weight,
            x,
            dy,
            mean,
            rstd,
            dx,
            dsum,
            partials,
        };
        (
            piece(x0, dy0, m0, s0, dx0, ds0, p0),
            piece(x1, dy1, m1, s1, dx1, ds1, p1),
        )
    }
}

/// Which kernel runs a block of this element type. Implemented for every [`Element`].
pub trait RowKernels: Sized {
    /// The γ type the backward kernels take: f32 for the types computed in f32 (f16/bf16 γ
    /// is widened once per call by [`RowKernels::kernel_params`], so that the backward
    /// kernels are compiled for f32 parameters only; backward has rows enough to pay for it),
    /// f64 for f64. Forward reads γ/β as stored (see [`RowKernels::forward_block`]).
    type Param: Element;
    /// γ or β as [`RowKernels::Param`]: borrowed when it already is, widened (exactly)
    /// otherwise.
    fn kernel_params<P: ParamOf<Self>>(p: Option<&[P]>) -> Option<Cow<'_, [Self::Param]>>
    where
        Self: Element;
    /// Runs a whole forward problem (see [`run_forward`]), γ/β read as stored or widened
    /// to [`RowKernels::Param`] first, as the type decides.
    fn forward<P: ParamOf<Self>>(isa: Isa, par: Parallelism, work: ForwardBlock<'_, Self, P>)
    where
        Self: Element;
    /// Normalizes every row of `block`, reading γ/β as they are stored (no [`RowKernels::Param`]
    /// copy: the vector kernels widen 16-bit parameters as they load them).
    fn forward_block<P: ParamOf<Self>>(isa: Isa, block: ForwardBlock<'_, Self, P>)
    where
        Self: Element;
    /// Backward for every row of `block`, accumulating its dγ/dβ partials.
    fn backward_block(isa: Isa, block: BackwardBlock<'_, Self, Self::Param>)
    where
        Self: Element;
    /// Whether this type has a long-row path of its own ([`RowKernels::forward_long`]); the
    /// drivers keep the block kernels for the others.
    const LONG_ROWS: bool;
    /// Forward of a whole problem of rows of [`LONG_COLS`] columns or more, without fused
    /// residual, a piece of each row at a time (see `long.rs`). (f64, without such a path,
    /// runs its block kernel on the whole problem, on one thread.)
    fn forward_long<P: ParamOf<Self>>(isa: Isa, par: Parallelism, block: ForwardBlock<'_, Self, P>)
    where
        Self: Element;
    /// Backward as [`RowKernels::forward_long`], of a block without partials: dγ/dβ are
    /// written to `dweight`/`dbias` (rounded once from their f64 sums).
    fn backward_long<P: ParamOf<Self>>(
        isa: Isa,
        par: Parallelism,
        block: BackwardBlock<'_, Self, Self::Param>,
        dweight: Option<&mut [P]>,
        dbias: Option<&mut [P]>,
    ) where
        Self: Element;
}

/// Forward problems with fewer rows than this read 16-bit γ/β as stored, widening them as
/// they load; from this many rows on, γ/β are widened to f32 once per call
/// ([`RowKernels::kernel_params`]) and the rows read f32. Widening per call costs two f32
/// stores per column, which for one row cost more than the row (one thread, bf16, 1×4096:
/// 7.4 GB/s widened, 11.7 read as stored; 1×768: 3.7 and 7.0); widening as they load costs
/// every row a permute and an unpack per vector of each, where the arithmetic is the limit
/// (64×4096: 19.4 widened, 17.3 as stored; 2 threads, 4096×4096: 0.71 and 0.60 of copy).
/// At 8 rows the two measured alike (16.7 and 16.5 GB/s).
const FEW_ROWS: usize = 8;

/// Runs a forward problem: long rows (the choice depends on the row length alone, so no
/// result depends on the number of rows) cut into pieces, other rows in blocks over the
/// threads; the fused residual keeps whole rows.
fn run_forward<T: Element, P: ParamOf<T>>(
    isa: Isa,
    par: Parallelism,
    work: ForwardBlock<'_, T, P>,
) {
    let (rows, cols) = (work.rows(), work.cols);
    if T::LONG_ROWS && cols >= LONG_COLS && work.residual.is_none() {
        return T::forward_long(isa, par, work);
    }
    let elems = work.x.len();
    for_each_block(
        par,
        elems,
        Blocks::for_map(rows, cols),
        work,
        &|block, _| T::forward_block(isa, block),
    );
}

/// `P: ParamOf<T>`: γ/β of type `P` can go with data of type `T` — every element type's own,
/// and f32 beside f16/bf16 (mixed precision: 16-bit activations with f32 master weights; see
/// `layer_norm::forward_mixed`). Sealed: only the crate's element types implement it.
pub trait ParamOf<T: Element>: Element<Compute = T::Compute> + Storage {}

impl<T: Element> ParamOf<T> for T {}
impl ParamOf<f16> for f32 {}
impl ParamOf<bf16> for f32 {}

macro_rules! vector_kernels {
    ($($t:ty),*) => {$(
        impl RowKernels for $t {
            type Param = f32;
            const LONG_ROWS: bool = true;
            fn kernel_params<P: ParamOf<Self>>(p: Option<&[P]>) -> Option<Cow<'_, [f32]>> {
                p.map(|p| match P::as_f32_slice(p) {
                    Some(v) => Cow::Borrowed(v),
                    None => {
                        let mut v = vec![0.0; p.len()];
                        let job = simd::WidenParams { src: p, dst: &mut v };
                        crate::arch::active().vectorize(job);
                        Cow::Owned(v)
                    }
                })
            }
            fn forward<P: ParamOf<Self>>(
                isa: Isa,
                par: Parallelism,
                work: ForwardBlock<'_, Self, P>,
            ) {
                let narrow = |p: Option<&[P]>| p.is_some_and(|p| P::as_f32_slice(p).is_none());
                if work.rows() < FEW_ROWS || !(narrow(work.weight) || narrow(work.bias)) {
                    return run_forward(isa, par, work);
                }
                let weight = Self::kernel_params(work.weight);
                let bias = Self::kernel_params(work.bias);
                let ForwardBlock {
                    norm, cols, eps, stream, x, residual, y, mean, rstd, ..
                } = work;
                let (weight, bias) = (weight.as_deref(), bias.as_deref());
                let work = ForwardBlock {
                    norm, cols, eps, stream, weight, bias, x, residual, y, mean, rstd,
                };
                run_forward(isa, par, work)
            }
            fn forward_block<P: ParamOf<Self>>(isa: Isa, block: ForwardBlock<'_, Self, P>) {
                isa.vectorize(simd::Forward(block))
            }
            fn backward_block(isa: Isa, block: BackwardBlock<'_, Self, f32>) {
                isa.vectorize(simd::Backward(block))
            }
            fn forward_long<P: ParamOf<Self>>(
                isa: Isa,
                par: Parallelism,
                block: ForwardBlock<'_, Self, P>,
            ) {
                long::forward(isa, par, block)
            }
            fn backward_long<P: ParamOf<Self>>(
                isa: Isa,
                par: Parallelism,
                block: BackwardBlock<'_, Self, f32>,
                dweight: Option<&mut [P]>,
                dbias: Option<&mut [P]>,
            ) {
                long::backward(isa, par, block, dweight, dbias)
            }
        }
    )*};
}
vector_kernels!(f32, f16, bf16);

impl RowKernels for f64 {
    type Param = f64;
    const LONG_ROWS: bool = false;
    fn kernel_params<P: ParamOf<Self>>(p: Option<&[P]>) -> Option<Cow<'_, [f64]>> {
        // (P is f64 itself: the only parameter type of f64 data.)
        p.map(|p| match P::as_f64_slice(p) {
            Some(v) => Cow::Borrowed(v),
            None => Cow::Owned(p.iter().map(|&v| v.widen()).collect()),
        })
    }
    fn forward<P: ParamOf<Self>>(isa: Isa, par: Parallelism, work: ForwardBlock<'_, Self, P>) {
        run_forward(isa, par, work)
    }
    fn forward_block<P: ParamOf<Self>>(_isa: Isa, block: ForwardBlock<'_, Self, P>) {
        portable::forward_block(block)
    }
    fn backward_block(_isa: Isa, block: BackwardBlock<'_, Self, f64>) {
        portable::backward_block(block)
    }
    fn forward_long<P: ParamOf<Self>>(
        _isa: Isa,
        _par: Parallelism,
        block: ForwardBlock<'_, Self, P>,
    ) {
        portable::forward_block(block)
    }
    fn backward_long<P: ParamOf<Self>>(
        _isa: Isa,
        _par: Parallelism,
        block: BackwardBlock<'_, Self, f64>,
        dweight: Option<&mut [P]>,
        dbias: Option<&mut [P]>,
    ) {
        // One block over every row, with partials of its own, rounded into the outputs.
        let cols = block.cols;
        let mut partials =
            vec![0.0; cols * (usize::from(dweight.is_some()) + usize::from(dbias.is_some()))];
        portable::backward_block(BackwardBlock {
            block_rows: block.rstd.len(),
            partial_len: partials.len(),
            want_dweight: dweight.is_some(),
            want_dbias: dbias.is_some(),
            partials: &mut partials,
            ..block
        });
        let (dw, db) = partials.split_at(if dweight.is_some() { cols } else { 0 });
        round_into(dweight, dw);
        round_into(dbias, db);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{layer_norm, Affine, GradMask};

    /// f64 has no long-row path of its own (the drivers keep its long rows on the block
    /// kernels), but `RowKernels` is total: its `forward_long` and `backward_long` run the
    /// block kernel over the whole problem, and must give the drivers' bits.
    #[test]
    fn f64_long_row_entry_points_give_the_block_path_bits() {
        let (rows, cols) = (3, 37);
        let wave = |i: usize, k: usize, m: usize| ((i * k) % m) as f64 / 7.0 - 3.0;
        let x: Vec<f64> = (0..rows * cols).map(|i| wave(i, 7919, 101)).collect();
        let dy: Vec<f64> = (0..rows * cols).map(|i| wave(i, 104_729, 89)).collect();
        let w: Vec<f64> = (0..cols).map(|j| 1.0 + wave(j, 31, 17) / 10.0).collect();
        let b: Vec<f64> = (0..cols).map(|j| wave(j, 13, 23)).collect();
        let par = Parallelism::Sequential;
        let affine = Affine::scale_shift(&w, &b);
        let (y_ref, stats) = layer_norm::forward(&x, cols, affine, 1e-5, par).unwrap();
        let g_ref =
            layer_norm::backward(&dy, &x, cols, stats.as_ref(), Some(&w), GradMask::ALL, par)
                .unwrap();

        let isa = crate::arch::active();
        let (mut y, mut mean, mut rstd) =
            (vec![0.0; rows * cols], vec![0.0; rows], vec![0.0; rows]);
        f64::forward_long(
            isa,
            par,
            ForwardBlock {
                norm: Norm::Layer,
                cols,
                eps: 1e-5,
                stream: false,
                weight: Some(&w),
                bias: Some(&b),
                x: &x,
                residual: None,
                y: &mut y,
                mean: Some(&mut mean),
                rstd: Some(&mut rstd),
            },
        );
        assert_eq!((&y, &mean, &rstd), (&y_ref, &stats.mean, &stats.rstd));

        let (mut dx, mut dw, mut db) = (vec![0.0; rows * cols], vec![0.0; cols], vec![0.0; cols]);
        f64::backward_long(
            isa,
            par,
            BackwardBlock {
                norm: Norm::Layer,
                cols,
                block_rows: rows,
                partial_len: 0,
                want_dweight: true,
                want_dbias: true,
                stream: false,
                weight: Some(&w),
                x: &x,
                dy: &dy,
                mean: Some(&mean),
                rstd: &rstd,
                dx: Some(&mut dx),
                dsum: None,
                partials: &mut [],
            },
            Some(&mut dw[..]),
            Some(&mut db[..]),
        );
        assert_eq!(Some(dx), g_ref.dx);
        assert_eq!(Some(dw), g_ref.dweight);
        assert_eq!(Some(db), g_ref.dbias);
    }
}
