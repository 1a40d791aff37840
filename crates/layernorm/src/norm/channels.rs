//! The engine behind the channel normalizations — BatchNorm, GroupNorm and InstanceNorm —
//! which differ only in which elements share statistics.
//!
//! A contiguous tensor with a channel axis is seen, without copying, as
//!
//! ```text
//! (outer, batch, channels, run)      statistics per (outer, group),  γ/β per channel
//! ```
//!
//! where a group is `per_group` consecutive channels and `run` is the contiguous extent after
//! the channel axis (the spatial dims of `(N, C, H, W)`, or 1 for channels-last data):
//!
//! | op | outer | batch | channels-first `(N, C, S)` | channels-last `(N, S, C)` |
//! |---|---|---|---|---|
//! | BatchNorm | 1 | everything before C | `batch = N, run = S` | `batch = N·S, run = 1` |
//! | GroupNorm | N | dims between N and C | `batch = 1, run = S` | `batch = S, run = 1` |
//! | InstanceNorm | N | as GroupNorm | GroupNorm with one channel per group | |
//!
//! The arithmetic is LayerNorm's, in f64, for every element type:
//! - statistics as LayerNorm's kernels take them: for f32/f16/bf16 data one pass of `Σd`,
//!   `Σd²` around a pivot from the group (`d = x − x₀`, `σ² = Σd²/n − (Σd/n)²`, a bounded
//!   cancellation), repeated around the mean where it cancelled too much (as `kernels::simd`);
//!   for f64 data the corrected two-pass algorithm (as `kernels::portable`): `m0 = Σx/n`, then
//!   `μ = m0 + Σd/n`, `σ² = (Σd² − (Σd)²/n)/n` with `d = x − m0`; f64 data whose sums
//!   overflow is scaled by an exact power of two;
//! - `y = (x − μ)·(rstd·γ_c) + β_c`, rounded once to the element type;
//! - backward from saved (mean, rstd): `δ = Σ(x − mean)/n` recovers the exact mean from a saved
//!   mean rounded to f32, then `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))` with `g = dy·γ_c`, or
//!   `dx = rstd·g` when the statistics are frozen (BatchNorm in eval mode).
//!
//! Reductions run per unit — one `outer` index and a block of `batch` indices whose size
//! depends only on the shape — into per-channel f64 partials that are combined in unit order,
//! then over the channels of a group in channel order. So results are bitwise the same for
//! any thread count, and a GroupNorm/InstanceNorm sample does not depend on the others.

use std::ops::Range;

use crate::dtype::{to_f64, Element, Float};
use crate::error::{Error, Operand, Result};
use crate::kernels::max_cancellation;
use crate::kernels::reduce::lane_sums;
use crate::layout::{checked_product, resolve_axis};
use crate::norm::{check_eps, check_len, Affine, GradMask, Gradients, Stats, StatsRef};
use crate::par::{map_in_order, Blocks, Parallelism};

/// 2^-600, exact: scales f64 data whose sums or squares would overflow back into range.
const DOWNSCALE: f64 = f64::from_bits((1023 - 600) << 52);

/// The `(outer, batch, channels, run)` view of a tensor; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChannelView {
    pub outer: usize,
    pub batch: usize,
    pub channels: usize,
    pub run: usize,
    pub per_group: usize,
}

/// Which statistics the channels share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sharing {
    /// Across the whole batch (BatchNorm): `outer = 1`.
    Batch,
    /// Per sample, within `groups` groups of channels (GroupNorm; InstanceNorm when every
    /// channel is its own group, `groups = None`).
    Groups(Option<usize>),
}

impl ChannelView {
    /// Resolves `shape` with its channel axis; checks sizes and the grouping.
    pub fn new(shape: &[usize], channel_axis: isize, sharing: Sharing) -> Result<Self> {
        let rank = shape.len();
        let axis = resolve_axis(channel_axis, rank)?;
        if shape.contains(&0) {
            return Err(Error::ZeroSizeDim {
                operand: Operand::Input,
                shape: shape.to_vec(),
            });
        }
        let overflow = || Error::SizeOverflow {
            shape: shape.to_vec(),
        };
        checked_product(shape).ok_or_else(overflow)?;
        let channels = shape[axis];
        let run = shape[axis + 1..].iter().product();
        match sharing {
            Sharing::Batch => Ok(ChannelView {
                outer: 1,
                batch: shape[..axis].iter().product(),
                channels,
                run,
                per_group: 1,
            }),
            Sharing::Groups(groups) => {
                if axis == 0 {
                    return Err(Error::NoBatchAxis {
                        axis: channel_axis,
                        rank,
                    });
                }
                let groups = groups.unwrap_or(channels);
                if groups == 0 || !channels.is_multiple_of(groups) {
                    return Err(Error::InvalidGroups { groups, channels });
                }
                Ok(ChannelView {
                    outer: shape[0],
                    batch: shape[1..axis].iter().product(),
                    channels,
                    run,
                    per_group: channels / groups,
                })
            }
        }
    }

    pub fn groups(&self) -> usize {
        self.channels / self.per_group
    }

    pub fn len(&self) -> usize {
        self.outer * self.batch * self.channels * self.run
    }

    /// Statistics computed: one per (outer, group).
    pub fn stats_len(&self) -> usize {
        self.outer * self.groups()
    }

    /// Elements behind each statistic.
    pub fn count(&self) -> usize {
        self.batch * self.per_group * self.run
    }

    fn slab(&self) -> usize {
        self.channels * self.run
    }

    /// The units of work: each outer index with consecutive blocks of batch indices.
    fn units(&self) -> Vec<Unit> {
        let blocks = Blocks::for_slabs(self.batch, self.slab());
        (0..self.outer)
            .flat_map(|a| {
                (0..blocks.count()).map(move |b| Unit {
                    a,
                    b: blocks.range(b),
                })
            })
            .collect()
    }

    /// The flat range of a unit's elements (consecutive units are adjacent in memory).
    fn span(&self, u: &Unit) -> Range<usize> {
        let start = (u.a * self.batch + u.b.start) * self.slab();
        start..start + u.b.len() * self.slab()
    }

    fn group_of(&self, channel: usize) -> usize {
        channel / self.per_group
    }
}

#[derive(Clone, Debug)]
struct Unit {
    a: usize,
    b: Range<usize>,
}

/// Per-channel sums of `term(per_c[c], x, dy)` over a unit's elements (`xs` and `dys`, the
/// unit's spans): for each slab, each channel's run, lanes summed in a fixed order. Everything
/// is walked by zipped slices, so channels-last data (one element per channel and slab)
/// vectorizes across channels.
#[inline(always)]
fn channel_sums<T: Element, Q: Copy, const K: usize>(
    v: &ChannelView,
    xs: &[T],
    dys: &[T],
    per_c: &[Q],
    term: impl Fn(Q, f64, f64) -> [f64; K],
) -> Vec<[f64; K]> {
    let (slab, run) = (v.slab(), v.run);
    let mut acc = vec![[0.0; K]; v.channels];
    for (xslab, dslab) in xs.chunks_exact(slab).zip(dys.chunks_exact(slab)) {
        if run == 1 {
            for (acc, ((&x, &dy), &p)) in acc.iter_mut().zip(xslab.iter().zip(dslab).zip(per_c)) {
                let t = term(p, to_f64(x), to_f64(dy));
                for k in 0..K {
                    acc[k] += t[k];
                }
            }
        } else {
            let runs = xslab.chunks_exact(run).zip(dslab.chunks_exact(run));
            for (acc, ((xr, dr), &p)) in acc.iter_mut().zip(runs.zip(per_c)) {
                let t = lane_sums(run, |i| term(p, to_f64(xr[i]), to_f64(dr[i])));
                for k in 0..K {
                    acc[k] += t[k];
                }
            }
        }
    }
    acc
}

/// A per-channel copy of per-(outer, group) values for outer index `a`.
fn per_channel<Q: Copy>(v: &ChannelView, a: usize, by_group: &[Q]) -> Vec<Q> {
    let row = &by_group[a * v.groups()..][..v.groups()];
    (0..v.channels).map(|c| row[c / v.per_group]).collect()
}

/// Combines per-unit channel partials into per-(outer, channel) totals, in unit order.
fn combine<const K: usize>(
    v: &ChannelView,
    units: &[Unit],
    parts: Vec<Vec<[f64; K]>>,
) -> Vec<[f64; K]> {
    let mut total = vec![[0.0; K]; v.outer * v.channels];
    for (u, part) in units.iter().zip(parts) {
        let row = &mut total[u.a * v.channels..][..v.channels];
        for (t, p) in row.iter_mut().zip(part) {
            for (t, p) in t.iter_mut().zip(p) {
                *t += p;
            }
        }
    }
    total
}

/// Per-(outer, group) sums of per-(outer, channel) totals, in channel order.
fn by_group<const K: usize>(v: &ChannelView, totals: &[[f64; K]]) -> Vec<[f64; K]> {
    totals
        .chunks(v.per_group)
        .map(|chunk| {
            let mut s = [0.0; K];
            for t in chunk {
                for (s, t) in s.iter_mut().zip(t) {
                    *s += t;
                }
            }
            s
        })
        .collect()
}

/// Exact f64 statistics of every (outer, group).
#[derive(Clone, Debug)]
pub(crate) struct GroupStats {
    pub mean: Vec<f64>,
    /// Biased variance (+∞ where it exceeds f64, which rstd still represents).
    pub var: Vec<f64>,
    pub rstd: Vec<f64>,
}

/// Mean, biased variance and rstd of every (outer, group) of `x`.
fn statistics<T: Element>(v: &ChannelView, x: &[T], eps: f64, par: Parallelism) -> GroupStats {
    let (mean, var) = moments(v, x, 1.0, par);
    let mut out = GroupStats {
        rstd: var.iter().map(|&w| 1.0 / (w + eps).sqrt()).collect(),
        mean,
        var,
    };
    let finite = |m: &f64, w: &f64| m.is_finite() && w.is_finite();
    if out.mean.iter().zip(&out.var).all(|(m, w)| finite(m, w)) {
        return out;
    }
    // Some sum overflowed (f64 data near 1e300) or the data holds NaN/Inf: redo scaled by an
    // exact power of two, and keep the scaled statistics wherever they are finite and the
    // plain ones are not.
    let (mean_s, var_s) = moments(v, x, DOWNSCALE, par);
    for i in 0..out.mean.len() {
        if !finite(&out.mean[i], &out.var[i]) && finite(&mean_s[i], &var_s[i]) {
            out.mean[i] = mean_s[i] / DOWNSCALE;
            // (DOWNSCALE² itself underflows: divide twice.)
            let var = var_s[i] / DOWNSCALE / DOWNSCALE;
            out.var[i] = var;
            out.rstd[i] = if var.is_finite() {
                // A large mean with a modest spread (a constant group near f64::MAX, say).
                1.0 / (var + eps).sqrt()
            } else {
                // A spread beyond f64: ε is negligible beside it.
                DOWNSCALE / var_s[i].sqrt()
            };
        }
    }
    out
}

/// The exact power of two that f64 data of a group with this mean and rstd is scaled by
/// before `x − μ` is formed: 1, unless the spread or the mean is so large (beyond 2^960,
/// f64 data near `f64::MAX`) that `x − μ` or its products could overflow. Scaling by 2^-600
/// and the rstd by 2^600 leaves x̂ the same; f32 data never comes near.
fn scale_of(mean: f64, rstd: f64) -> f64 {
    const HUGE: f64 = f64::from_bits((1023 + 960) << 52);
    if rstd * HUGE < 1.0 || mean.abs() > HUGE {
        DOWNSCALE
    } else {
        1.0
    }
}

/// `1/√(var + ε)` of a given (running) variance.
pub(crate) fn rstd_of(var: f64, eps: f64) -> f64 {
    1.0 / (var + eps).sqrt()
}

fn moments<T: Element>(
    v: &ChannelView,
    x: &[T],
    scale: f64,
    par: Parallelism,
) -> (Vec<f64>, Vec<f64>) {
    let n = v.count() as f64;
    // Σ(x·scale − centre) and its squares per (outer, group), around per-group centres.
    let deviations = |centre: &[f64]| -> Vec<[f64; 2]> {
        let units = v.units();
        let parts = map_in_order(par, x.len(), units.clone(), |u| {
            let xs = &x[v.span(&u)];
            let centre = per_channel(v, u.a, centre);
            channel_sums(v, xs, xs, &centre, |m, x, _| {
                let d = x * scale - m;
                [d, d * d]
            })
        });
        by_group(v, &combine(v, &units, parts))
    };
    // The corrected two-pass step around `centre`: μ = c + Σd/n, σ² = (Σd² − (Σd)²/n)/n.
    let corrected = |centre: f64, [s1, s2]: [f64; 2]| (centre + s1 / n, (s2 - s1 * s1 / n) / n);
    let (mean, mut var): (Vec<f64>, Vec<f64>) = if std::mem::size_of::<T::Compute>() == 4 {
        // f32-computed data, as LayerNorm's vector kernel: one pass around a pivot from the
        // group (its first element), σ² = Σd²/n − (Σd/n)², whose cancellation is bounded;
        // a second pass around the mean found where it cancelled more than
        // `max_cancellation(n)` (its error then stays below 2^-26 of σ²).
        let pivot: Vec<f64> = (0..v.stats_len())
            .map(|s| {
                let (a, g) = (s / v.groups(), s % v.groups());
                let first = (a * v.batch * v.channels + g * v.per_group) * v.run;
                to_f64(x[first]) * scale
            })
            .collect();
        let sums = deviations(&pivot);
        let limit = max_cancellation(v.count());
        let mut redo = false;
        let mut mean = Vec::with_capacity(sums.len());
        let mut var = Vec::with_capacity(sums.len());
        for (p, [s1, s2]) in pivot.iter().zip(&sums) {
            let shift = s1 / n;
            let w = s2 / n - shift * shift;
            redo |= s2 / n > limit * w.abs() && w.is_finite();
            mean.push(p + shift);
            var.push(w);
        }
        if redo {
            let again = deviations(&mean);
            for (i, (p, [s1, s2])) in pivot.iter().zip(&sums).enumerate() {
                let shift = s1 / n;
                if s2 / n > limit * var[i].abs() && var[i].is_finite() {
                    (mean[i], var[i]) = corrected(p + shift, again[i]);
                }
            }
        }
        (mean, var)
    } else {
        // f64 data: the corrected two-pass algorithm, as LayerNorm's portable kernel.
        let zeros = vec![0.0; v.stats_len()];
        let m0: Vec<f64> = deviations(&zeros).iter().map(|[s, _]| s / n).collect();
        m0.iter()
            .zip(deviations(&m0))
            .map(|(&c, s)| corrected(c, s))
            .unzip()
    };
    for w in &mut var {
        // Rounding can leave a hair below zero; a NaN must stay NaN.
        if *w < 0.0 {
            *w = 0.0;
        }
    }
    (mean, var)
}

/// Splits `out` into the spans of `units` (consecutive, in memory order).
fn split_spans<'o, T>(v: &ChannelView, units: &[Unit], mut out: &'o mut [T]) -> Vec<&'o mut [T]> {
    let mut pieces = Vec::with_capacity(units.len());
    for u in units {
        let (head, tail) = out.split_at_mut(v.span(u).len());
        pieces.push(head);
        out = tail;
    }
    pieces
}

/// `y = (x − mean)·(rstd·γ_c) + β_c` for every element, with f64 per-group statistics.
pub(crate) fn normalize<T: Element, P: Element>(
    v: &ChannelView,
    x: &[T],
    mean: &[f64],
    rstd: &[f64],
    affine: Affine<'_, P>,
    y: &mut [T],
    par: Parallelism,
) {
    // Per (outer, channel): the data's scale, the scaled centre, the scale of x̂ and β.
    let mut coef = Vec::with_capacity(v.outer * v.channels);
    for a in 0..v.outer {
        for c in 0..v.channels {
            let s = a * v.groups() + v.group_of(c);
            let gamma = affine.weight.map_or(1.0, |w| to_f64(w[c]));
            let beta = affine.bias.map_or(0.0, |b| to_f64(b[c]));
            let sc = scale_of(mean[s], rstd[s]);
            coef.push((sc, mean[s] * sc, rstd[s] / sc * gamma, beta));
        }
    }
    let units = v.units();
    let work: Vec<(Unit, &mut [T])> = units
        .iter()
        .cloned()
        .zip(split_spans(v, &units, y))
        .collect();
    map_in_order(par, x.len(), work, |(u, y)| {
        let xs = &x[v.span(&u)];
        let coef = &coef[u.a * v.channels..][..v.channels];
        for (xs, ys) in xs.chunks_exact(v.slab()).zip(y.chunks_exact_mut(v.slab())) {
            for ((xr, yr), &(sc, m, k, b)) in xs
                .chunks_exact(v.run)
                .zip(ys.chunks_exact_mut(v.run))
                .zip(coef)
            {
                for (xv, yv) in xr.iter().zip(yr) {
                    *yv = T::round_from_f64((to_f64(*xv) * sc - m) * k + b);
                }
            }
        }
    });
}

/// How the backward pass treats the statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Statistics {
    /// Computed from this batch in forward: they depend on x, so dx has the centring terms.
    Batch,
    /// Given (BatchNorm's running statistics in eval mode): constants, `dx = rstd·γ·dy`.
    Frozen,
}

/// The buffers of a backward call.
pub(crate) struct BackwardArgs<'a, T: Element, P> {
    pub dy: &'a [T],
    pub x: &'a [T],
    /// Per-(outer, group) mean and rstd, in f64.
    pub mean: &'a [f64],
    pub rstd: &'a [f64],
    pub weight: Option<&'a [P]>,
    pub statistics: Statistics,
    pub mask: GradMask,
}

/// dx, dγ, dβ of a channel normalization.
pub(crate) fn backward<T: Element, P: Element>(
    v: &ChannelView,
    args: BackwardArgs<'_, T, P>,
    par: Parallelism,
) -> Gradients<T, P> {
    let BackwardArgs {
        dy,
        x,
        mean,
        rstd,
        weight,
        statistics,
        mask,
    } = args;
    let units = v.units();
    let groups = v.groups();
    let gamma = |c: usize| weight.map_or(1.0, |w| to_f64(w[c]));
    // Per (outer, group): the data's scale (see `scale_of`), and the scaled mean.
    let scale: Vec<f64> = mean
        .iter()
        .zip(rstd)
        .map(|(&m, &r)| scale_of(m, r))
        .collect();
    let scaled: Vec<(f64, f64)> = mean
        .iter()
        .zip(&scale)
        .map(|(&m, &sc)| (sc, m * sc))
        .collect();
    // One pass: per (outer, channel) Σdy, Σdy·d, Σd with d = (x − mean)·scale.
    let parts = map_in_order(par, x.len(), units.clone(), |u| {
        let span = v.span(&u);
        let center = per_channel(v, u.a, &scaled);
        channel_sums(v, &x[span.clone()], &dy[span], &center, |(sc, m), x, g| {
            let d = x * sc - m;
            [g, g * d, d]
        })
    });
    let totals = combine(v, &units, parts);
    let n = v.count() as f64;
    let frozen = statistics == Statistics::Frozen;
    // Per (outer, group): δ, mean(g), mean(g·x̂).
    let mut terms = Vec::with_capacity(v.stats_len());
    for (s, chunk) in totals.chunks(v.per_group).enumerate() {
        let c0 = (s % groups) * v.per_group;
        let (mut sd, mut sg, mut sgd) = (0.0, 0.0, 0.0);
        for (j, [s0, s1, d]) in chunk.iter().enumerate() {
            let w = gamma(c0 + j);
            sd += d;
            sg += w * s0;
            sgd += w * s1;
        }
        terms.push(if frozen {
            (0.0, 0.0, 0.0)
        } else {
            let delta = sd / n;
            (delta, sg / n, (sgd - delta * sg) * (rstd[s] / scale[s]) / n)
        });
    }
    let dx = mask.input.then(|| {
        // Per (outer, channel): the data's scale, the exact scaled centre, the scale of x̂,
        // rstd·γ, rstd·mean(g), rstd·mean(g·x̂).
        let mut coef = Vec::with_capacity(v.outer * v.channels);
        for a in 0..v.outer {
            for c in 0..v.channels {
                let s = a * groups + v.group_of(c);
                let (delta, mean_g, mean_gx) = terms[s];
                let (r, sc) = (rstd[s], scale[s]);
                let centre = scaled[s].1 + delta;
                coef.push((sc, centre, r / sc, r * gamma(c), r * mean_g, r * mean_gx));
            }
        }
        let mut dx = vec![T::default(); x.len()];
        let work: Vec<(Unit, &mut [T])> = units
            .iter()
            .cloned()
            .zip(split_spans(v, &units, &mut dx))
            .collect();
        map_in_order(par, x.len(), work, |(u, out)| {
            let span = v.span(&u);
            let (xs, gs) = (&x[span.clone()], &dy[span]);
            let coef = &coef[u.a * v.channels..][..v.channels];
            let slabs = xs.chunks_exact(v.slab()).zip(gs.chunks_exact(v.slab()));
            for ((xs, gs), os) in slabs.zip(out.chunks_exact_mut(v.slab())) {
                for (((xr, gr), or), &(sc, m, r, rw, k1, k2)) in xs
                    .chunks_exact(v.run)
                    .zip(gs.chunks_exact(v.run))
                    .zip(os.chunks_exact_mut(v.run))
                    .zip(coef)
                {
                    for ((xv, gv), ov) in xr.iter().zip(gr).zip(or) {
                        let xhat = (to_f64(*xv) * sc - m) * r;
                        *ov = T::round_from_f64(rw * to_f64(*gv) - k1 - xhat * k2);
                    }
                }
            }
        });
        dx
    });
    // dγ_c = Σ_outer rstd·(Σdy·d − δ·Σdy),  dβ_c = Σ_outer Σdy, in outer order.
    let mut dw = vec![0.0; v.channels];
    let mut db = vec![0.0; v.channels];
    for a in 0..v.outer {
        for c in 0..v.channels {
            let s = a * groups + v.group_of(c);
            let [s0, s1, _] = totals[a * v.channels + c];
            dw[c] += rstd[s] / scale[s] * (s1 - terms[s].0 * s0);
            db[c] += s0;
        }
    }
    let round = |v: Vec<f64>| v.into_iter().map(P::round_from_f64).collect();
    Gradients {
        dx,
        dweight: (mask.weight && weight.is_some()).then(|| round(dw)),
        dbias: mask.bias.then(|| round(db)),
    }
}

impl GroupStats {
    /// The statistics to save for backward, in the compute type `K`.
    pub fn saved<K: Float>(&self) -> Stats<K> {
        let narrow = |s: &[f64]| s.iter().map(|&v| K::from_f64(v)).collect();
        Stats {
            mean: narrow(&self.mean),
            rstd: narrow(&self.rstd),
        }
    }
}

/// `x` normalized with its own statistics (training mode); the arguments are checked.
pub(crate) fn forward_own_stats<T: Element, P: Element>(
    v: &ChannelView,
    x: &[T],
    affine: Affine<'_, P>,
    eps: f64,
    par: Parallelism,
) -> (Vec<T>, GroupStats) {
    let stats = statistics(v, x, eps, par);
    let mut y = vec![T::default(); x.len()];
    normalize(v, x, &stats.mean, &stats.rstd, affine, &mut y, par);
    (y, stats)
}

/// Backward from statistics saved by forward (checked here).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_saved<T: Element, P: Element>(
    v: &ChannelView,
    dy: &[T],
    x: &[T],
    stats: StatsRef<'_, T::Compute>,
    weight: Option<&[P]>,
    mask: GradMask,
    par: Parallelism,
) -> Result<Gradients<T, P>> {
    let (mean, rstd) = check_backward(v, dy, x, stats, weight)?;
    let args = BackwardArgs {
        dy,
        x,
        mean: &mean,
        rstd: &rstd,
        weight,
        statistics: Statistics::Batch,
        mask,
    };
    Ok(backward(v, args, par))
}

/// Checks the common arguments of a channel normalization's forward.
pub(crate) fn check_forward<T: Element, P>(
    v: &ChannelView,
    x: &[T],
    affine: &Affine<'_, P>,
    eps: f64,
) -> Result<()> {
    check_len(Operand::Input, v.len(), x.len())?;
    check_eps::<T::Compute>(eps)?;
    affine.check(v.channels)
}

/// Checks the buffers of a backward call and widens the saved statistics to f64.
fn check_backward<T: Element, P>(
    v: &ChannelView,
    dy: &[T],
    x: &[T],
    stats: StatsRef<'_, T::Compute>,
    weight: Option<&[P]>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    check_len(Operand::Input, v.len(), x.len())?;
    check_len(Operand::GradOutput, v.len(), dy.len())?;
    check_len(Operand::Mean, v.stats_len(), stats.mean.len())?;
    check_len(Operand::Rstd, v.stats_len(), stats.rstd.len())?;
    if let Some(w) = weight {
        check_len(Operand::Weight, v.channels, w.len())?;
    }
    let wide = |s: &[T::Compute]| s.iter().map(|m| m.to_f64()).collect();
    Ok((wide(stats.mean), wide(stats.rstd)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_of_the_usual_layouts() {
        let nchw = [2, 6, 3, 5];
        let bn = ChannelView::new(&nchw, 1, Sharing::Batch).unwrap();
        assert_eq!((bn.outer, bn.batch, bn.channels, bn.run), (1, 2, 6, 15));
        let gn = ChannelView::new(&nchw, 1, Sharing::Groups(Some(3))).unwrap();
        assert_eq!((gn.outer, gn.batch, gn.per_group, gn.run), (2, 1, 2, 15));
        let nhwc = [2, 3, 5, 6];
        let gn = ChannelView::new(&nhwc, -1, Sharing::Groups(None)).unwrap();
        assert_eq!((gn.outer, gn.batch, gn.per_group, gn.run), (2, 15, 1, 1));
        assert_eq!(gn.count(), 15);
        assert!(matches!(
            ChannelView::new(&nchw, 1, Sharing::Groups(Some(4))),
            Err(Error::InvalidGroups { .. })
        ));
        assert!(matches!(
            ChannelView::new(&nchw, 0, Sharing::Groups(None)),
            Err(Error::NoBatchAxis { .. })
        ));
    }

    #[test]
    fn an_outlier_pivot_takes_the_second_pass_and_stays_exact() {
        // One channel of 2^17 f32 values: an outlier first (the pivot), then a spread of ±1.
        // Around the pivot Σd²/n ≈ 10^8/2^17 ≫ σ² ≈ 1: the mean is repeated around.
        let n = 1 << 17;
        let x: Vec<f32> = (0..n)
            .map(|i| {
                if i == 0 {
                    1e4
                } else {
                    ((i * 7919) % 2001) as f32 / 1000.0 - 1.0
                }
            })
            .collect();
        let v = ChannelView::new(&[n, 1], -1, Sharing::Batch).unwrap();
        let got = statistics(&v, &x, 1e-5, Parallelism::Sequential);
        let exact_mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        let exact_var = x
            .iter()
            .map(|&v| (f64::from(v) - exact_mean).powi(2))
            .sum::<f64>()
            / n as f64;
        assert!((got.mean[0] - exact_mean).abs() <= 1e-12 * exact_var.sqrt());
        assert!((got.var[0] - exact_var).abs() <= 1e-9 * exact_var);
    }

    #[test]
    fn units_tile_the_tensor_in_memory_order() {
        for shape in [[3usize, 7, 5, 1], [1, 1, 1, 1], [2, 300, 40, 9]] {
            let v = ChannelView::new(&shape, 2, Sharing::Groups(None)).unwrap();
            let mut next = 0;
            for u in v.units() {
                let span = v.span(&u);
                assert_eq!(span.start, next);
                next = span.end;
            }
            assert_eq!(next, v.len());
        }
    }
}
