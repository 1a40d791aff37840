//! The normalization family — BatchNorm (train and eval), GroupNorm, InstanceNorm and
//! LayerNorm over arbitrary axes — against an independent f64 reference written here (nested
//! loops over multi-indices; nothing from the library), plus finite-difference gradients,
//! bitwise determinism across thread counts, batch invariance, properties on random shapes,
//! adversarial inputs, BatchNorm's running statistics and every error variant.
//!
//! # Tolerances
//!
//! Every bound is derived from rounding, with `u` the unit roundoff of the data type T, `u_c`
//! that of its compute type (f32 for f32/f16/bf16, f64 for f64) and `u_p` that of the
//! parameter type P (T, or f32 beside f16/bf16):
//!
//! - **Rounding to the output type.** The library forms every output in f64 (or, for the
//!   LayerNorm kernels, in the compute type K) and rounds it once, so it carries `u·|ref|`,
//!   plus half a subnormal spacing (`tiny`) where the value is subnormal in T (tiny y in f16).
//! - **The f64 statistics.** Both the library and the reference take sums of the `n` values
//!   behind a statistic in f64 (in different orders). A sum of n terms in any order is off by
//!   at most `(n − 1)·u64·Σ|terms|`; with the roundings around it (÷n, √, 1/x) each
//!   implementation's mean is good to `s·σ + u64·|μ|` and its rstd to `s` relative, with
//!   `s = (n + 4)·u64`. That moves x̂ by `e_x̂ = s + 2·u64·|μ|·rstd` and rstd by `s`. Two
//!   implementations, so twice that.
//! - **The channel engine** (BN/GN/IN) then works in f64: `y = (x − μ)·(rstd·γ) + β` is 4
//!   roundings of u64, and dx, dγ, dβ a handful more. **The LayerNorm kernels** normalize in K:
//!   `((x − μ_hi) − μ_lo)·rstd·γ + β` is at most 6 roundings of `u_c` on `|x̂γ| + |β|`, and
//!   backward at most 8 on its terms (as in `reference_agreement.rs`).
//! - **Saved statistics** are rounded to the compute type (`u_c`); backward reads them back, so
//!   its rstd is off by `u_c` relative: the term `x̂·mean(g·x̂)` carries rstd³, hence `3·u_c`.
//!   The saved mean's rounding is repaired from x (δ = Σ(x − mean)/n), which costs only `s`.
//!
//! So for f32 the bounds are a few `2^-24·|value|`, for f16/bf16 one rounding of the storage
//! type plus a few f32 roundings, and for f64 a few `n·2^-53`: a formula that is wrong by a
//! term of order 1 — a wrong variance convention, a missing centring term, a γ applied to the
//! wrong channel — fails them by many orders of magnitude.

use crate::common::*;
use layernorm::batch_norm::{BatchNorm, RunningStats, RunningStatsMut};
use layernorm::group_norm::{GroupNorm, InstanceNorm};
use layernorm::{
    bf16, f16, layer_norm, Affine, Element, Error, Float, GradMask, IsaKind, Operand, Parallelism,
    ParamOf,
};
use proptest::prelude::*;

const U64: f64 = f64::EPSILON / 2.0;
const U32: f64 = f32::EPSILON as f64 / 2.0;
const EPS: f64 = 1e-5;
const PAR: Parallelism = Parallelism::Rayon;

// ---------------------------------------------------------------------------------------------
// The independent f64 reference.
// ---------------------------------------------------------------------------------------------

/// An operation of the family, with its hyper-parameters (ε is always [`EPS`]).
#[derive(Clone, Debug, PartialEq)]
enum Op {
    Bn { axis: isize },
    Gn { groups: usize, axis: isize },
    In { axis: isize },
    Ln { axes: Vec<isize> },
}

impl Op {
    fn is_ln(&self) -> bool {
        matches!(self, Op::Ln { .. })
    }
}

/// `axis` in `0..rank` (negative counts from the end).
fn resolve(axis: isize, rank: usize) -> usize {
    let a = if axis < 0 { axis + rank as isize } else { axis };
    assert!((0..rank as isize).contains(&a), "test bug: axis {axis}");
    a as usize
}

/// The multi-index of flat position `i` in a row-major tensor of `shape`.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for a in (0..shape.len()).rev() {
        idx[a] = i % shape[a];
        i /= shape[a];
    }
    idx
}

/// Row-major linear index of the sub-multi-index `idx[axes]` in the sub-shape `shape[axes]`.
fn linear(idx: &[usize], shape: &[usize], axes: &[usize]) -> usize {
    axes.iter().fold(0, |acc, &a| acc * shape[a] + idx[a])
}

/// For every element: which statistic it shares and which γ/β entry it uses.
struct Grouping {
    stat: Vec<usize>,
    param: Vec<usize>,
    stats: usize,
    params: usize,
    /// Elements behind each statistic.
    count: usize,
}

/// Maps a multi-index to its (statistic, parameter) pair.
type Key = Box<dyn Fn(&[usize]) -> (usize, usize)>;

impl Grouping {
    fn new(op: &Op, shape: &[usize]) -> Self {
        let rank = shape.len();
        let len: usize = shape.iter().product();
        let (key, stats, params): (Key, usize, usize) = match op {
            Op::Bn { axis } => {
                let a = resolve(*axis, rank);
                (Box::new(move |i| (i[a], i[a])), shape[a], shape[a])
            }
            Op::Gn { groups, axis } => {
                let (a, g) = (resolve(*axis, rank), *groups);
                let per = shape[a] / g;
                let key = move |i: &[usize]| (i[0] * g + i[a] / per, i[a]);
                (Box::new(key), shape[0] * g, shape[a])
            }
            Op::In { axis } => {
                let a = resolve(*axis, rank);
                let c = shape[a];
                (Box::new(move |i| (i[0] * c + i[a], i[a])), shape[0] * c, c)
            }
            Op::Ln { axes } => {
                let mut norm: Vec<usize> = axes.iter().map(|&a| resolve(a, rank)).collect();
                norm.sort_unstable();
                let kept: Vec<usize> = (0..rank).filter(|a| !norm.contains(a)).collect();
                let stats = kept.iter().map(|&a| shape[a]).product();
                let params = norm.iter().map(|&a| shape[a]).product();
                let shape = shape.to_vec();
                let key = move |i: &[usize]| (linear(i, &shape, &kept), linear(i, &shape, &norm));
                (Box::new(key), stats, params)
            }
        };
        let (mut stat, mut param) = (Vec::with_capacity(len), Vec::with_capacity(len));
        for i in 0..len {
            let (s, p) = key(&unravel(i, shape));
            stat.push(s);
            param.push(p);
        }
        Grouping {
            stat,
            param,
            stats,
            params,
            count: len / stats,
        }
    }
}

/// Mean, biased variance and rstd per statistic: corrected two-pass sums in f64.
struct RefStats {
    mean: Vec<f64>,
    var: Vec<f64>,
    rstd: Vec<f64>,
}

fn ref_stats(x: &[f64], g: &Grouping, eps: f64) -> RefStats {
    let n = g.count as f64;
    let mut sum = vec![0.0; g.stats];
    for (i, &v) in x.iter().enumerate() {
        sum[g.stat[i]] += v;
    }
    let m0: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let (mut s1, mut s2) = (vec![0.0; g.stats], vec![0.0; g.stats]);
    for (i, &v) in x.iter().enumerate() {
        let d = v - m0[g.stat[i]];
        s1[g.stat[i]] += d;
        s2[g.stat[i]] += d * d;
    }
    let mean: Vec<f64> = (0..g.stats).map(|s| m0[s] + s1[s] / n).collect();
    let var: Vec<f64> = (0..g.stats)
        .map(|s| ((s2[s] - s1[s] * s1[s] / n) / n).max(0.0))
        .collect();
    let rstd = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    RefStats { mean, var, rstd }
}

/// `y = (x − mean)·rstd·γ + β`.
fn ref_normalize(
    x: &[f64],
    g: &Grouping,
    mean: &[f64],
    rstd: &[f64],
    w: Option<&[f64]>,
    b: Option<&[f64]>,
) -> Vec<f64> {
    (0..x.len())
        .map(|i| {
            let (s, p) = (g.stat[i], g.param[i]);
            (x[i] - mean[s]) * rstd[s] * w.map_or(1.0, |w| w[p]) + b.map_or(0.0, |b| b[p])
        })
        .collect()
}

/// dx, dγ, dβ. With batch statistics `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))` per statistic
/// (g = dy·γ); with frozen ones (BatchNorm eval) `dx = rstd·g`.
fn ref_backward(
    dy: &[f64],
    x: &[f64],
    g: &Grouping,
    mean: &[f64],
    rstd: &[f64],
    w: Option<&[f64]>,
    frozen: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let n = g.count as f64;
    let xhat = |i: usize| (x[i] - mean[g.stat[i]]) * rstd[g.stat[i]];
    let gr = |i: usize| dy[i] * w.map_or(1.0, |w| w[g.param[i]]);
    let (mut mean_g, mut mean_gx) = (vec![0.0; g.stats], vec![0.0; g.stats]);
    if !frozen {
        for i in 0..x.len() {
            mean_g[g.stat[i]] += gr(i) / n;
            mean_gx[g.stat[i]] += gr(i) * xhat(i) / n;
        }
    }
    let dx = (0..x.len())
        .map(|i| {
            let s = g.stat[i];
            rstd[s] * (gr(i) - mean_g[s] - xhat(i) * mean_gx[s])
        })
        .collect();
    let (mut dw, mut db) = (vec![0.0; g.params], vec![0.0; g.params]);
    for i in 0..x.len() {
        dw[g.param[i]] += dy[i] * xhat(i);
        db[g.param[i]] += dy[i];
    }
    (dx, dw, db)
}

/// PyTorch's running update: `(1 − m)·old + m·batch`, the variance unbiased (`·n/(n − 1)`).
fn ref_running(m: f64, old: (&[f64], &[f64]), st: &RefStats, n: usize) -> (Vec<f64>, Vec<f64>) {
    let unbias = n as f64 / (n - 1) as f64;
    let mean = (0..old.0.len())
        .map(|c| (1.0 - m) * old.0[c] + m * st.mean[c])
        .collect();
    let var = (0..old.1.len())
        .map(|c| (1.0 - m) * old.1[c] + m * st.var[c] * unbias)
        .collect();
    (mean, var)
}

// ---------------------------------------------------------------------------------------------
// The library, behind one signature.
// ---------------------------------------------------------------------------------------------

/// Train-mode forward (statistics from the batch) and backward with every gradient, widened to
/// f64 (exactly).
#[derive(Clone, Debug, PartialEq)]
struct LibOut {
    y: Vec<f64>,
    mean: Vec<f64>,
    rstd: Vec<f64>,
    dx: Vec<f64>,
    dw: Option<Vec<f64>>,
    db: Vec<f64>,
}

impl LibOut {
    /// Every value's bits, for bitwise comparisons (widening to f64 is injective).
    fn bits(&self) -> Vec<u64> {
        let mut all = vec![];
        for v in [&self.y, &self.mean, &self.rstd, &self.dx, &self.db] {
            all.extend(v.iter().map(|x| x.to_bits()));
        }
        all.extend(self.dw.iter().flatten().map(|x| x.to_bits()));
        all
    }
}

fn run_lib<T: Element, P: ParamOf<T>>(
    op: &Op,
    x: &[T],
    dy: &[T],
    shape: &[usize],
    w: Option<&[P]>,
    b: Option<&[P]>,
    par: Parallelism,
) -> LibOut {
    let affine = Affine { weight: w, bias: b };
    let m = GradMask::ALL;
    let (y, stats, grads) = match op {
        Op::Bn { axis } => {
            let bn = BatchNorm {
                channel_axis: *axis,
                ..BatchNorm::default()
            };
            let (y, st) = bn.forward_train(x, shape, affine, None, par).unwrap();
            let g = bn
                .backward_train(dy, x, shape, st.as_ref(), w, m, par)
                .unwrap();
            (y, st, g)
        }
        Op::Gn { groups, axis } => {
            let gn = GroupNorm {
                groups: *groups,
                channel_axis: *axis,
                eps: EPS,
            };
            let (y, st) = gn.forward(x, shape, affine, par).unwrap();
            let g = gn.backward(dy, x, shape, st.as_ref(), w, m, par).unwrap();
            (y, st, g)
        }
        Op::In { axis } => {
            let inorm = InstanceNorm {
                channel_axis: *axis,
                eps: EPS,
            };
            let (y, st) = inorm.forward(x, shape, affine, par).unwrap();
            let g = inorm
                .backward(dy, x, shape, st.as_ref(), w, m, par)
                .unwrap();
            (y, st, g)
        }
        Op::Ln { axes } => {
            // LN-axes takes parameters of the data type: only called with P = T, where this
            // conversion through f64 is the identity.
            assert_eq!(T::NAME, P::NAME, "test bug: LN-axes with mixed parameters");
            let conv =
                |v: &[P]| -> Vec<T> { v.iter().map(|&p| T::round_from_f64(to_f64(p))).collect() };
            let (wt, bt) = (w.map(conv), b.map(conv));
            let affine = Affine {
                weight: wt.as_deref(),
                bias: bt.as_deref(),
            };
            let (y, st) = layer_norm::forward_axes(x, shape, axes, affine, EPS, par).unwrap();
            let g =
                layer_norm::backward_axes(dy, x, shape, axes, st.as_ref(), wt.as_deref(), m, par)
                    .unwrap();
            let widen = |v: Option<Vec<T>>| -> Option<Vec<P>> {
                v.map(|v| v.iter().map(|&t| P::round_from_f64(to_f64(t))).collect())
            };
            let g = layernorm::Gradients::<T, P> {
                dx: g.dx,
                dweight: widen(g.dweight),
                dbias: widen(g.dbias),
            };
            (y, st, g)
        }
    };
    if !op.is_ln() {
        // The channel ops return dγ only when there is a γ (their documented contract).
        assert_eq!(grads.dweight.is_some(), w.is_some(), "{op:?}: dγ presence");
    }
    LibOut {
        y: widen_all(&y),
        mean: widen_stats(&stats.mean),
        rstd: widen_stats(&stats.rstd),
        dx: widen_all(&grads.dx.unwrap()),
        dw: grads.dweight.map(|v| widen_all(&v)),
        db: widen_all(&grads.dbias.unwrap()),
    }
}

// ---------------------------------------------------------------------------------------------
// Bounds (see the module docs).
// ---------------------------------------------------------------------------------------------

/// Half the smallest subnormal spacing of E: the absolute rounding error of a subnormal result.
fn tiny<E: Element>() -> f64 {
    match E::NAME {
        "float16" => 2f64.powi(-25),
        "bfloat16" => 2f64.powi(-134),
        "float32" => 2f64.powi(-150),
        _ => f64::from_bits(1), // f64: the smallest subnormal (its half is not an f64)
    }
}

/// Unit roundoff of T's compute type.
fn compute_unit<T: Element>() -> f64 {
    if <T::Compute as Float>::NAME == "float64" {
        U64
    } else {
        U32
    }
}

/// The roundoffs that apply to one call.
#[derive(Clone, Copy, Debug)]
struct Units {
    /// Data type T.
    t: f64,
    tiny_t: f64,
    /// Compute type (saved statistics).
    c: f64,
    /// Parameter type P (dγ, dβ, running statistics).
    p: f64,
    tiny_p: f64,
    /// Arithmetic between the f64 statistics and the output: K for the LN kernels, none
    /// (0) for the channel engine, whose f64 roundings are counted as u64 terms.
    kernel: f64,
}

impl Units {
    fn of<T: Element, P: Element>(op: &Op) -> Self {
        Units {
            t: T::UNIT_ROUNDOFF,
            tiny_t: tiny::<T>(),
            c: compute_unit::<T>(),
            p: P::UNIT_ROUNDOFF,
            tiny_p: tiny::<P>(),
            kernel: if op.is_ln() { compute_unit::<T>() } else { 0.0 },
        }
    }
}

/// The reference for one problem, with the per-element quantities the bounds need.
struct Ref<'a> {
    g: &'a Grouping,
    x: &'a [f64],
    dy: &'a [f64],
    w: Option<&'a [f64]>,
    b: Option<&'a [f64]>,
    st: RefStats,
}

impl<'a> Ref<'a> {
    fn new(
        g: &'a Grouping,
        x: &'a [f64],
        dy: &'a [f64],
        w: Option<&'a [f64]>,
        b: Option<&'a [f64]>,
    ) -> Self {
        Ref {
            st: ref_stats(x, g, EPS),
            g,
            x,
            dy,
            w,
            b,
        }
    }
    fn gamma(&self, i: usize) -> f64 {
        self.w.map_or(1.0, |w| w[self.g.param[i]])
    }
    fn beta(&self, i: usize) -> f64 {
        self.b.map_or(0.0, |b| b[self.g.param[i]])
    }
    fn xhat(&self, i: usize) -> f64 {
        let s = self.g.stat[i];
        (self.x[i] - self.st.mean[s]) * self.st.rstd[s]
    }
    /// One implementation's relative error of a statistic's f64 sums.
    fn s(&self) -> f64 {
        (self.g.count as f64 + 4.0) * U64
    }
    /// One implementation's error of f64 sums over the whole tensor (dγ, dβ).
    fn s_all(&self) -> f64 {
        (self.x.len() as f64 + 4.0) * U64
    }
    /// One implementation's error of x̂ from its mean.
    fn e_xhat(&self, s: usize) -> f64 {
        self.s() + 2.0 * U64 * self.st.mean[s].abs() * self.st.rstd[s]
    }
    fn y(&self) -> Vec<f64> {
        ref_normalize(self.x, self.g, &self.st.mean, &self.st.rstd, self.w, self.b)
    }
    /// y: one rounding to T (`u·|y|`, or `tiny` where subnormal); the LN kernel's ≤ 6 roundings
    /// in K; the two sides' statistics (x̂ moved by `e_x̂ + s·|x̂|`, times |γ|) and 4 f64
    /// roundings of the affine step each.
    fn y_bound(&self, u: Units, y_ref: &[f64]) -> Vec<f64> {
        (0..self.x.len())
            .map(|i| {
                let (xh, ga, be) = (self.xhat(i), self.gamma(i), self.beta(i));
                let e = self.e_xhat(self.g.stat[i]);
                u.t * y_ref[i].abs()
                    + u.tiny_t
                    + 6.0 * u.kernel * ((xh * ga).abs() + be.abs())
                    + 2.0
                        * (ga.abs() * (e + self.s() * xh.abs())
                            + 4.0 * U64 * ((xh * ga).abs() + be.abs()))
            })
            .collect()
    }
    /// Saved mean: one rounding to the compute type, plus each side's `s·σ + 2u64·|μ|`.
    fn mean_bound(&self, u: Units) -> Vec<f64> {
        (0..self.g.stats)
            .map(|s| {
                let (m, sd) = (self.st.mean[s], self.st.var[s].sqrt());
                u.c * m.abs() + 2.0 * (self.s() * sd + 2.0 * U64 * m.abs())
            })
            .collect()
    }
    /// Saved rstd: one rounding to the compute type, plus each side's `s` relative.
    fn rstd_bound(&self, u: Units) -> Vec<f64> {
        self.st
            .rstd
            .iter()
            .map(|r| (u.c + 2.0 * self.s()) * r)
            .collect()
    }
    /// Bounds on dx, dγ, dβ of the train-mode backward, on the terms of
    /// `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))`: the saved rstd's rounding (u_c, cubed in the
    /// last term: 3u_c), the LN kernel's ≤ 8 roundings in K, and per side the statistics
    /// (3s on rstd, e_x̂ on x̂), the f64 means of g and g·x̂ (s of their absolute sums) and 6
    /// f64 roundings; then one rounding to T. dγ = Σ dy·x̂ and dβ = Σ dy: f64 sums over the
    /// tensor (`s_all`), x̂'s own errors, one rounding to P.
    fn grad_bounds(&self, u: Units, refs: &(Vec<f64>, Vec<f64>, Vec<f64>)) -> [Vec<f64>; 3] {
        let (g, n) = (self.g, self.g.count as f64);
        let gr = |i: usize| self.dy[i] * self.gamma(i);
        let mut mean_g = vec![0.0; g.stats];
        let mut mean_gx = vec![0.0; g.stats];
        let mut abs_g = vec![0.0; g.stats];
        let mut abs_gx = vec![0.0; g.stats];
        for i in 0..self.x.len() {
            let s = g.stat[i];
            mean_g[s] += gr(i) / n;
            mean_gx[s] += gr(i) * self.xhat(i) / n;
            abs_g[s] += gr(i).abs() / n;
            abs_gx[s] += (gr(i) * self.xhat(i)).abs() / n;
        }
        let (sm, sa) = (self.s(), self.s_all());
        let dx = (0..self.x.len())
            .map(|i| {
                let (s, xh) = (g.stat[i], self.xhat(i));
                let terms = gr(i).abs() + mean_g[s].abs() + (xh * mean_gx[s]).abs();
                let f64_part = (3.0 * sm + 6.0 * U64) * terms
                    + sm * (abs_g[s] + xh.abs() * abs_gx[s])
                    + self.e_xhat(s) * (mean_gx[s].abs() + xh.abs() * abs_g[s]);
                u.t * refs.0[i].abs()
                    + u.tiny_t
                    + self.st.rstd[s] * ((3.0 * u.c + 8.0 * u.kernel) * terms + 2.0 * f64_part)
            })
            .collect();
        let (mut dyx, mut dya, mut dye) = (
            vec![0.0; g.params],
            vec![0.0; g.params],
            vec![0.0; g.params],
        );
        for i in 0..self.x.len() {
            let p = g.param[i];
            dyx[p] += (self.dy[i] * self.xhat(i)).abs();
            dya[p] += self.dy[i].abs();
            dye[p] += self.dy[i].abs() * self.e_xhat(g.stat[i]);
        }
        let dw = (0..g.params)
            .map(|p| {
                u.p * refs.1[p].abs()
                    + u.tiny_p
                    + (u.c + 8.0 * u.kernel) * dyx[p]
                    + 2.0 * ((sm + sa) * dyx[p] + dye[p])
            })
            .collect();
        let db = (0..g.params)
            .map(|p| u.p * refs.2[p].abs() + u.tiny_p + 2.0 * sa * dya[p])
            .collect();
        [dx, dw, db]
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Agreement with the reference.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Case {
    op: Op,
    shape: Vec<usize>,
    kind: AffineKind,
    offset: f64,
    spread: f64,
    misalign: usize,
    seed: u8,
}

/// Runs the library on a random problem and checks y, the saved statistics, dx, dγ, dβ (and
/// for BatchNorm the running update, eval forward and eval backward) against the reference.
fn check_case<T: Element, P: ParamOf<T>>(case: &Case) {
    let what = format!("{}/{} {case:?}", T::NAME, P::NAME);
    let g = Grouping::new(&case.op, &case.shape);
    let (len, pad) = (g.stat.len(), case.misalign);
    let mut rng = Rand::new(case.seed);
    // Each buffer starts `misalign` elements into its allocation.
    let xb: Vec<T> = rng.normals(len + pad, case.offset, case.spread);
    let dyb: Vec<T> = rng.normals(len + pad, 0.0, 1.0);
    let wb: Vec<P> = rng.normals(g.params + pad, 1.0, 0.5);
    let bb: Vec<P> = rng.normals(g.params + pad, 0.0, 0.5);
    let (x, dy) = (&xb[pad..], &dyb[pad..]);
    let w = case.kind.has_weight().then(|| &wb[pad..]);
    let b = case.kind.has_bias().then(|| &bb[pad..]);

    let out = run_lib(&case.op, x, dy, &case.shape, w, b, PAR);

    let (xf, dyf) = (widen_all(x), widen_all(dy));
    let (wf, bf) = (w.map(widen_all), b.map(widen_all));
    let r = Ref::new(&g, &xf, &dyf, wf.as_deref(), bf.as_deref());
    let u = Units::of::<T, P>(&case.op);
    let y_ref = r.y();
    assert_within(&format!("y {what}"), &out.y, &y_ref, &r.y_bound(u, &y_ref));
    assert_within(
        &format!("mean {what}"),
        &out.mean,
        &r.st.mean,
        &r.mean_bound(u),
    );
    assert_within(
        &format!("rstd {what}"),
        &out.rstd,
        &r.st.rstd,
        &r.rstd_bound(u),
    );
    let grads = ref_backward(&dyf, &xf, &g, &r.st.mean, &r.st.rstd, wf.as_deref(), false);
    let [dxb, dwb, dbb] = r.grad_bounds(u, &grads);
    assert_within(&format!("dx {what}"), &out.dx, &grads.0, &dxb);
    if let Some(dw) = &out.dw {
        assert_within(&format!("dγ {what}"), dw, &grads.1, &dwb);
    }
    assert_within(&format!("dβ {what}"), &out.db, &grads.2, &dbb);

    if let Op::Bn { axis } = case.op {
        check_bn_modes(&what, axis, &case.shape, x, dy, w, b, &r, u, &out, &mut rng);
    }
}

/// BatchNorm's running update (default momentum), eval forward and eval backward.
#[allow(clippy::too_many_arguments)]
fn check_bn_modes<T: Element, P: ParamOf<T>>(
    what: &str,
    axis: isize,
    shape: &[usize],
    x: &[T],
    dy: &[T],
    w: Option<&[P]>,
    b: Option<&[P]>,
    r: &Ref<'_>,
    u: Units,
    out: &LibOut,
    rng: &mut Rand,
) {
    let bn = BatchNorm {
        channel_axis: axis,
        ..BatchNorm::default()
    };
    let c = r.g.params;
    let rm0: Vec<P> = rng.normals(c, 0.0, 1.0);
    let rv0: Vec<P> = (0..c)
        .map(|_| from_f64(0.25 + 2.0 * rng.uniform()))
        .collect();
    let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
    let running = RunningStatsMut {
        mean: &mut rm,
        var: &mut rv,
    };
    let affine = Affine { weight: w, bias: b };
    let (y, st) = bn
        .forward_train(x, shape, affine, Some(running), PAR)
        .unwrap();
    // Updating running statistics changes nothing else.
    assert_eq!(widen_all(&y), out.y, "y with running stats {what}");
    assert_eq!(
        widen_stats(&st.mean),
        out.mean,
        "mean with running stats {what}"
    );
    check_running(what, bn.momentum, (&rm0, &rv0), (&rm, &rv), r, u);

    // Eval mode with the updated running statistics: mean and rstd are given, not summed.
    let (rmf, rvf) = (widen_all(&rm), widen_all(&rv));
    let rstd: Vec<f64> = rvf.iter().map(|v| 1.0 / (v + EPS).sqrt()).collect();
    let running = RunningStats {
        mean: &rm,
        var: &rv,
    };
    let y = bn.forward_eval(x, shape, affine, running, PAR).unwrap();
    let y_ref = ref_normalize(r.x, r.g, &rmf, &rstd, r.w, r.b);
    // Both sides: x − m, 1/√(v + ε) (3 roundings), ·rstd·γ, + β in f64 — 8·u64 on the terms
    // each, then one rounding to T.
    let xhat = |i: usize| (r.x[i] - rmf[r.g.stat[i]]) * rstd[r.g.stat[i]];
    let bound: Vec<f64> = (0..y_ref.len())
        .map(|i| {
            let terms = (xhat(i) * r.gamma(i)).abs() + r.beta(i).abs();
            u.t * y_ref[i].abs() + u.tiny_t + 16.0 * U64 * terms
        })
        .collect();
    assert_within(&format!("eval y {what}"), &widen_all(&y), &y_ref, &bound);

    let ge = bn
        .backward_eval(dy, x, shape, running, w, GradMask::ALL, PAR)
        .unwrap();
    let (dx_ref, dw_ref, db_ref) = ref_backward(r.dy, r.x, r.g, &rmf, &rstd, r.w, true);
    // dx = rstd·γ·dy: a few f64 roundings and one to T. dγ, dβ: f64 sums over the tensor.
    let dxb: Vec<f64> = dx_ref
        .iter()
        .map(|d| u.t * d.abs() + u.tiny_t + 16.0 * U64 * d.abs())
        .collect();
    assert_within(
        &format!("eval dx {what}"),
        &widen_all(&ge.dx.unwrap()),
        &dx_ref,
        &dxb,
    );
    let (mut dyx, mut dya) = (vec![0.0; c], vec![0.0; c]);
    for i in 0..r.x.len() {
        dyx[r.g.param[i]] += (r.dy[i] * xhat(i)).abs();
        dya[r.g.param[i]] += r.dy[i].abs();
    }
    let sa = r.s_all();
    if let Some(dw) = ge.dweight {
        let dwb: Vec<f64> = (0..c)
            .map(|p| u.p * dw_ref[p].abs() + u.tiny_p + 2.0 * (sa + 8.0 * U64) * dyx[p])
            .collect();
        assert_within(&format!("eval dγ {what}"), &widen_all(&dw), &dw_ref, &dwb);
    } else {
        assert!(w.is_none(), "eval dγ missing {what}");
    }
    let dbb: Vec<f64> = (0..c)
        .map(|p| u.p * db_ref[p].abs() + u.tiny_p + 2.0 * sa * dya[p])
        .collect();
    assert_within(
        &format!("eval dβ {what}"),
        &widen_all(&ge.dbias.unwrap()),
        &db_ref,
        &dbb,
    );
}

/// The running statistics after one update with `momentum` against the formula on the
/// reference batch statistics: the batch mean carries 2(s·σ + 2u64|μ|) (both sides), the
/// batch variance 2·2s relative, the blend 3–4 roundings of u64, then one rounding to P.
fn check_running<P: Element>(
    what: &str,
    momentum: f64,
    old: (&[P], &[P]),
    new: (&[P], &[P]),
    r: &Ref<'_>,
    u: Units,
) {
    let (om, ov) = (widen_all(old.0), widen_all(old.1));
    let (mean_ref, var_ref) = ref_running(momentum, (&om, &ov), &r.st, r.g.count);
    let m = momentum;
    let unbias = r.g.count as f64 / (r.g.count - 1) as f64;
    let mb: Vec<f64> = (0..om.len())
        .map(|c| {
            let (mu, sd) = (r.st.mean[c], r.st.var[c].sqrt());
            u.p * mean_ref[c].abs()
                + u.tiny_p
                + 2.0 * (m * (r.s() * sd + 2.0 * U64 * mu.abs()))
                + 4.0 * U64 * ((1.0 - m) * om[c].abs() + m * mu.abs())
        })
        .collect();
    let vb: Vec<f64> = (0..ov.len())
        .map(|c| {
            let bv = r.st.var[c] * unbias;
            u.p * var_ref[c].abs()
                + u.tiny_p
                + 2.0 * m * 2.0 * r.s() * bv
                + 5.0 * U64 * ((1.0 - m) * ov[c].abs() + m * bv)
        })
        .collect();
    // Where the exact value lies beyond P's range (a variance of 1e60 in f32, of 1e5 in f16),
    // the correctly rounded result is ±∞: expect exactly that.
    let overflow = |got: &[f64], want: &[f64], bound: &[f64]| -> (Vec<f64>, Vec<f64>) {
        let mut want = want.to_vec();
        let mut bound = bound.to_vec();
        for (w, b) in want.iter_mut().zip(&mut bound) {
            let rounded = to_f64(P::round_from_f64(*w));
            if rounded.is_infinite() {
                (*w, *b) = (rounded, 0.0);
            }
        }
        assert_eq!(got.len(), want.len());
        (want, bound)
    };
    let (got_m, got_v) = (widen_all(new.0), widen_all(new.1));
    let (mean_ref, mb) = overflow(&got_m, &mean_ref, &mb);
    let (var_ref, vb) = overflow(&got_v, &var_ref, &vb);
    assert_within(&format!("running mean {what}"), &got_m, &mean_ref, &mb);
    assert_within(&format!("running var {what}"), &got_v, &var_ref, &vb);
}

/// The fixed agreement suite: channel axis 1, last and in the middle, odd sizes, every op.
fn agreement_cases() -> Vec<(Op, Vec<usize>)> {
    let bn = |axis| Op::Bn { axis };
    let gn = |groups, axis| Op::Gn { groups, axis };
    let inorm = |axis| Op::In { axis };
    let ln = |axes: &[isize]| Op::Ln {
        axes: axes.to_vec(),
    };
    vec![
        (bn(1), vec![3, 7, 17]),
        (bn(-1), vec![5, 17, 3]),
        (bn(2), vec![3, 5, 7, 3]),
        (bn(1), vec![1, 33, 3]),
        (bn(1), vec![17, 1]),
        (bn(-2), vec![2, 3, 1, 33]),
        (bn(-1), vec![33, 7]),
        (gn(2, 1), vec![3, 6, 7]),
        (gn(6, 1), vec![3, 6, 7]),
        (gn(1, 1), vec![3, 6, 7]),
        (gn(3, -1), vec![2, 7, 3, 6]),
        (gn(3, 2), vec![2, 5, 9, 3]),
        (gn(11, 1), vec![1, 33, 1]),
        (gn(3, 1), vec![5, 9, 17]),
        (inorm(1), vec![3, 7, 17]),
        (inorm(-1), vec![2, 17, 3]),
        (inorm(2), vec![2, 3, 7, 5]),
        (inorm(1), vec![7, 1, 33]),
        (inorm(1), vec![3, 5, 1]),
        (ln(&[1]), vec![3, 7, 17]),
        (ln(&[0, 2]), vec![5, 17, 3]),
        (ln(&[1, 3]), vec![3, 5, 7, 3]),
        (ln(&[-1, 0]), vec![3, 5, 7, 3]),
        (ln(&[-1]), vec![2, 3, 33]),
        (ln(&[0, 1, 2]), vec![3, 7, 5]),
        (ln(&[2, 1]), vec![1, 17, 7]),
        (ln(&[2]), vec![3, 1, 7, 1]),
    ]
}

/// Runs the suite for T with parameters P (LN-axes only when P = T).
fn agreement_suite<T: Element, P: ParamOf<T>>() {
    let mut seed = 0u8;
    for (op, shape) in agreement_cases() {
        if op.is_ln() && T::NAME != P::NAME {
            continue;
        }
        for kind in AffineKind::ALL {
            seed = seed.wrapping_add(1);
            check_case::<T, P>(&Case {
                op: op.clone(),
                shape: shape.clone(),
                kind,
                offset: if seed.is_multiple_of(3) { 10.0 } else { 0.5 },
                spread: 1.5,
                misalign: (seed % 2) as usize,
                seed,
            });
        }
    }
}

/// Runs `f` once per instruction set this CPU has (only LN-axes depends on it).
fn on_every_isa(f: impl Fn()) {
    for kind in layernorm::cpu_info().available {
        layernorm::with_isa(kind, &f).expect("an available ISA");
    }
}

#[test]
fn f32_agrees_with_reference() {
    on_every_isa(agreement_suite::<f32, f32>);
}

#[test]
fn f64_agrees_with_reference() {
    on_every_isa(agreement_suite::<f64, f64>);
}

#[test]
fn f16_agrees_with_reference() {
    on_every_isa(agreement_suite::<f16, f16>);
}

#[test]
fn bf16_agrees_with_reference() {
    on_every_isa(agreement_suite::<bf16, bf16>);
}

#[test]
fn half_data_with_f32_params_agrees_with_reference() {
    agreement_suite::<bf16, f32>();
    agreement_suite::<f16, f32>();
}

// ---------------------------------------------------------------------------------------------
// 2. Finite differences.
// ---------------------------------------------------------------------------------------------

/// A forward pass as a function of (x, γ, β).
type Forward<'a> = &'a dyn Fn(&[f64], &[f64], &[f64]) -> Vec<f64>;

/// Central differences of L = Σ y·r in f64 against dx, dγ, dβ.
///
/// Error of `(L(θ + h) − L(θ − h))/2h`: truncation `h²·|L'''|/6` plus rounding `≈ δL/h`.
/// In x, each derivative of x̂ brings a factor rstd, so with `h = 1e-4·σ` of the element's
/// statistic the truncation is about `1e-8·rstd·C/6` (C of order 1 to 10, σ ≈ 2 here: ≲ 2e-8);
/// L is linear in γ and β (and in x for BatchNorm eval), so there only rounding remains, with
/// `h = 1e-5·(1 + |θ|)`. δL, the rounding of L itself, is a few hundred u64 for these sizes
/// (≲ 1e-13), so ≲ 1e-9 after dividing by h. Hence `1e-7·(1 + |∂L/∂θ|)`: met by the true
/// gradient with margin, missed by any formula wrong by a term of order 1.
fn gradcheck(
    what: &str,
    shape: &[usize],
    step_x: &dyn Fn(usize) -> f64,
    forward: Forward<'_>,
    analytic: (&[f64], &[f64], &[f64]),
    point: (&[f64], &[f64], &[f64]),
    r: &[f64],
) {
    let len: usize = shape.iter().product();
    let loss = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
        forward(x, w, b).iter().zip(r).map(|(y, r)| y * r).sum()
    };
    let (x, w, b) = (point.0.to_vec(), point.1.to_vec(), point.2.to_vec());
    let fd = |which: usize, i: usize, h: f64| -> f64 {
        let mut args = [x.clone(), w.clone(), b.clone()];
        args[which][i] += h;
        let up = loss(&args[0], &args[1], &args[2]);
        args[which][i] -= 2.0 * h;
        let down = loss(&args[0], &args[1], &args[2]);
        (up - down) / (2.0 * h)
    };
    let param_step = |v: f64| 1e-5 * (1.0 + v.abs());
    let tol = |a: &[f64]| -> Vec<f64> { a.iter().map(|v| 1e-7 * (1.0 + v.abs())).collect() };
    let num_dx: Vec<f64> = (0..len).map(|i| fd(0, i, step_x(i))).collect();
    assert_within(
        &format!("fd dx {what}"),
        analytic.0,
        &num_dx,
        &tol(analytic.0),
    );
    let num_dw: Vec<f64> = (0..w.len()).map(|p| fd(1, p, param_step(w[p]))).collect();
    assert_within(
        &format!("fd dγ {what}"),
        analytic.1,
        &num_dw,
        &tol(analytic.1),
    );
    let num_db: Vec<f64> = (0..b.len()).map(|p| fd(2, p, param_step(b[p]))).collect();
    assert_within(
        &format!("fd dβ {what}"),
        analytic.2,
        &num_db,
        &tol(analytic.2),
    );
}

#[test]
fn gradients_match_finite_differences() {
    let seq = Parallelism::Sequential;
    let cases = [
        (Op::Bn { axis: 1 }, vec![4, 3, 5]),
        (Op::Bn { axis: -1 }, vec![5, 4, 3]),
        (Op::Bn { axis: 2 }, vec![2, 3, 4, 3]),
        (Op::Gn { groups: 2, axis: 1 }, vec![2, 4, 7]),
        (
            Op::Gn {
                groups: 3,
                axis: -1,
            },
            vec![2, 5, 6],
        ),
        (Op::Gn { groups: 2, axis: 2 }, vec![2, 3, 4, 3]),
        (Op::In { axis: 1 }, vec![2, 3, 11]),
        (Op::In { axis: -1 }, vec![2, 11, 3]),
        (Op::In { axis: 2 }, vec![2, 3, 2, 5]),
        (Op::Ln { axes: vec![1, 3] }, vec![2, 3, 4, 3]),
        (Op::Ln { axes: vec![0] }, vec![7, 3, 2]),
        (Op::Ln { axes: vec![-1, -2] }, vec![3, 4, 5]),
    ];
    for (seed, (op, shape)) in cases.into_iter().enumerate() {
        let mut rng = Rand::new(100 + seed as u8);
        let g = Grouping::new(&op, &shape);
        let len = g.stat.len();
        let x: Vec<f64> = rng.normals(len, 0.5, 2.0);
        let r: Vec<f64> = rng.normals(len, 0.0, 1.0);
        let w: Vec<f64> = rng.normals(g.params, 1.0, 0.5);
        let b: Vec<f64> = rng.normals(g.params, 0.0, 0.5);
        let st = ref_stats(&x, &g, EPS);
        let step_x = |i: usize| 1e-4 * st.var[g.stat[i]].sqrt();
        let forward =
            |x: &[f64], w: &[f64], b: &[f64]| run_lib(&op, x, x, &shape, Some(w), Some(b), seq).y;
        let out = run_lib(&op, &x, &r, &shape, Some(&w), Some(&b), PAR);
        let what = format!("{op:?} {shape:?}");
        let analytic = (&out.dx[..], &out.dw.as_ref().unwrap()[..], &out.db[..]);
        gradcheck(&what, &shape, &step_x, &forward, analytic, (&x, &w, &b), &r);

        if let Op::Bn { axis } = op {
            // Eval mode: the running statistics are constants.
            let bn = BatchNorm {
                channel_axis: axis,
                ..BatchNorm::default()
            };
            let rm: Vec<f64> = rng.normals(g.params, 0.3, 1.0);
            let rv: Vec<f64> = (0..g.params).map(|_| 0.5 + rng.uniform()).collect();
            let running = RunningStats {
                mean: &rm,
                var: &rv,
            };
            let forward = |x: &[f64], w: &[f64], b: &[f64]| {
                bn.forward_eval(x, &shape, Affine::scale_shift(w, b), running, seq)
                    .unwrap()
            };
            let ge = bn
                .backward_eval(&r, &x, &shape, running, Some(&w), GradMask::ALL, PAR)
                .unwrap();
            let (dx, dw, db) = (ge.dx.unwrap(), ge.dweight.unwrap(), ge.dbias.unwrap());
            let step_x = |i: usize| 1e-4 * (1.0 + x[i].abs());
            let what = format!("eval {what}");
            gradcheck(
                &what,
                &shape,
                &step_x,
                &forward,
                (&dx, &dw, &db),
                (&x, &w, &b),
                &r,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Determinism across thread counts; 4. batch invariance.
// ---------------------------------------------------------------------------------------------

/// Runs `f` on a pool of `threads` threads, with instruction set `isa` on the pool's threads
/// (`with_isa` is per thread).
fn in_pool<R: Send>(threads: usize, isa: IsaKind, f: impl FnOnce() -> R + Send) -> R {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| layernorm::with_isa(isa, f).unwrap())
}

/// Every output of `ops` on one problem, as bits: train forward/backward, and for BatchNorm
/// the running update and the eval forward/backward too.
fn all_bits<T: Element>(
    ops: &[Op],
    shape: &[usize],
    x: &[T],
    dy: &[T],
    par: Parallelism,
) -> Vec<Vec<u64>> {
    let bits = |v: &[T]| -> Vec<u64> { v.iter().map(|&t| to_f64(t).to_bits()).collect() };
    let mut all = vec![];
    for op in ops {
        // Only the parameter count is needed: skip the per-element grouping.
        let params = match op {
            Op::Bn { axis } | Op::Gn { axis, .. } | Op::In { axis } => {
                shape[resolve(*axis, shape.len())]
            }
            Op::Ln { axes } => axes
                .iter()
                .map(|&a| shape[resolve(a, shape.len())])
                .product(),
        };
        let mut rng = Rand::new(7);
        let w: Vec<T> = rng.normals(params, 1.0, 0.5);
        let b: Vec<T> = rng.normals(params, 0.0, 0.5);
        all.push(run_lib(op, x, dy, shape, Some(&w), Some(&b), par).bits());
        if let Op::Bn { axis } = op {
            let bn = BatchNorm {
                channel_axis: *axis,
                ..BatchNorm::default()
            };
            let (mut rm, mut rv): (Vec<T>, Vec<T>) =
                (rng.normals(params, 0.0, 1.0), vec![from_f64(1.0); params]);
            let running = RunningStatsMut {
                mean: &mut rm,
                var: &mut rv,
            };
            let affine = Affine::scale_shift(&w[..], &b[..]);
            bn.forward_train(x, shape, affine, Some(running), par)
                .unwrap();
            all.push(bits(&rm));
            all.push(bits(&rv));
            let running = RunningStats {
                mean: &rm,
                var: &rv,
            };
            all.push(bits(
                &bn.forward_eval(x, shape, affine, running, par).unwrap(),
            ));
            let ge = bn
                .backward_eval(dy, x, shape, running, Some(&w), GradMask::ALL, par)
                .unwrap();
            all.push(bits(&ge.dx.unwrap()));
            all.push(bits(&ge.dweight.unwrap()));
            all.push(bits(&ge.dbias.unwrap()));
        }
    }
    all
}

fn thread_counts_agree<T: Element>(
    shape: &[usize],
    channel_axis: isize,
    isa: IsaKind,
    ln_only: bool,
) {
    let len: usize = shape.iter().product();
    let mut rng = Rand::new(31);
    let x: Vec<T> = rng.normals(len, 2.0, 3.0);
    let dy: Vec<T> = rng.normals(len, 0.0, 1.0);
    let rank = shape.len() as isize;
    let mut ops = vec![
        Op::Ln {
            axes: vec![channel_axis],
        },
        Op::Ln {
            axes: vec![0, rank - 1],
        },
        Op::Ln { axes: vec![-1, -2] },
    ];
    if !ln_only {
        ops.extend([
            Op::Bn { axis: channel_axis },
            Op::Gn {
                groups: 4,
                axis: channel_axis,
            },
            Op::In { axis: channel_axis },
        ]);
    }
    let sequential = layernorm::with_isa(isa, || {
        all_bits(&ops, shape, &x, &dy, Parallelism::Sequential)
    })
    .unwrap();
    for threads in [1, 2, 3, 7] {
        let threaded = in_pool(threads, isa, || all_bits(&ops, shape, &x, &dy, PAR));
        for (k, (a, b)) in threaded.iter().zip(&sequential).enumerate() {
            assert!(
                a == b,
                "{} {shape:?} on {isa:?}: output {k} differs with {threads} threads",
                T::NAME
            );
        }
    }
}

#[test]
fn outputs_are_bitwise_identical_across_thread_counts() {
    // Both shapes hold more than 2^16 elements, so every op splits into several blocks.
    let info = layernorm::cpu_info();
    for &isa in &info.available {
        // The channel engine has no ISA-specific code: run it on the default ISA only.
        let ln_only = isa != info.selected;
        thread_counts_agree::<f32>(&[8, 16, 40, 40], 1, isa, ln_only);
        thread_counts_agree::<f32>(&[64, 32, 48], -1, isa, ln_only);
        thread_counts_agree::<bf16>(&[64, 32, 48], -1, isa, ln_only);
    }
    thread_counts_agree::<f64>(&[8, 16, 40, 40], 1, info.selected, false);
    thread_counts_agree::<f16>(&[64, 32, 48], 2, info.selected, false);
}

#[test]
fn group_and_instance_norm_are_batch_invariant() {
    // A sample's y, statistics and dx do not depend on the rest of the batch (bitwise). The
    // channels-last shape splits each sample into several blocks.
    let cases = [
        (Op::Gn { groups: 3, axis: 1 }, vec![5, 6, 30, 30]),
        (
            Op::Gn {
                groups: 2,
                axis: -1,
            },
            vec![5, 100, 100, 4],
        ),
        (Op::Gn { groups: 3, axis: 2 }, vec![5, 7, 6, 9]),
        (Op::In { axis: 1 }, vec![5, 6, 30, 30]),
        (Op::In { axis: -1 }, vec![5, 100, 100, 4]),
        (Op::In { axis: 2 }, vec![5, 7, 6, 9]),
    ];
    for (op, shape) in cases {
        let len: usize = shape.iter().product();
        let per = len / shape[0];
        let mut rng = Rand::new(41);
        let x: Vec<f32> = rng.normals(len, 1.0, 2.0);
        let dy: Vec<f32> = rng.normals(len, 0.0, 1.0);
        let g = Grouping::new(&op, &shape);
        let w: Vec<f32> = rng.normals(g.params, 1.0, 0.5);
        let b: Vec<f32> = rng.normals(g.params, 0.0, 0.5);
        let batch = run_lib(&op, &x, &dy, &shape, Some(&w), Some(&b), PAR);
        let groups = g.stats / shape[0];
        for k in [0, 2, 4] {
            let mut one_shape = shape.clone();
            one_shape[0] = 1;
            let span = k * per..(k + 1) * per;
            let alone = run_lib(
                &op,
                &x[span.clone()],
                &dy[span.clone()],
                &one_shape,
                Some(&w),
                Some(&b),
                PAR,
            );
            let what = format!("{op:?} {shape:?} sample {k}");
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&alone.y), bits(&batch.y[span.clone()]), "y {what}");
            assert_eq!(bits(&alone.dx), bits(&batch.dx[span.clone()]), "dx {what}");
            let st = k * groups..(k + 1) * groups;
            assert_eq!(
                bits(&alone.mean),
                bits(&batch.mean[st.clone()]),
                "mean {what}"
            );
            assert_eq!(bits(&alone.rstd), bits(&batch.rstd[st]), "rstd {what}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Properties on random shapes.
// ---------------------------------------------------------------------------------------------

/// A random op on a random shape (rank 2–4, dims 1–9) with random values and offset, starting
/// 0 or 1 element into its buffers.
fn random_case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(1usize..=9, 2..=4),
        0u8..4,
        any::<usize>(),
        any::<usize>(),
        1usize..16,
        0usize..4,
        (0usize..2, -100.0f64..100.0, -2i32..4, any::<u8>()),
    )
        .prop_map(
            |(
                shape,
                which,
                axis_pick,
                group_pick,
                mask,
                kind,
                (misalign, offset, log_spread, seed),
            )| {
                let rank = shape.len();
                // Negative or positive spelling of an axis, chosen by a spare bit.
                let spell = |a: usize| {
                    if (axis_pick >> 8) % 2 == 1 {
                        a as isize - rank as isize
                    } else {
                        a as isize
                    }
                };
                let op = match which {
                    0 => Op::Bn {
                        axis: spell(axis_pick % rank),
                    },
                    1 | 2 => {
                        let a = 1 + axis_pick % (rank - 1);
                        let c = shape[a];
                        if which == 2 {
                            Op::In { axis: spell(a) }
                        } else {
                            let divisors: Vec<usize> = (1..=c).filter(|d| c % d == 0).collect();
                            Op::Gn {
                                groups: divisors[group_pick % divisors.len()],
                                axis: spell(a),
                            }
                        }
                    }
                    _ => {
                        let mask = match mask % (1 << rank) {
                            0 => 1 << (rank - 1),
                            m => m,
                        };
                        let axes = (0..rank)
                            .rev()
                            .filter(|a| (mask >> a) & 1 == 1)
                            .map(spell)
                            .collect();
                        Op::Ln { axes }
                    }
                };
                Case {
                    op,
                    shape,
                    kind: AffineKind::ALL[kind],
                    offset,
                    spread: 10f64.powi(log_spread),
                    misalign,
                    seed,
                }
            },
        )
}

/// BatchNorm needs two values per channel in training; these cases must be rejected instead.
fn bn_too_few(case: &Case) -> bool {
    let g = Grouping::new(&case.op, &case.shape);
    matches!(case.op, Op::Bn { .. }) && g.count < 2
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_problems_agree_with_reference(case in random_case()) {
        if bn_too_few(&case) {
            let Op::Bn { axis } = case.op else { unreachable!() };
            let len: usize = case.shape.iter().product();
            let bn = BatchNorm { channel_axis: axis, ..BatchNorm::default() };
            let r = bn.forward_train(&vec![1.0f32; len], &case.shape, Affine::<f32>::none(), None, PAR);
            prop_assert!(matches!(r, Err(Error::TooFewValues { count: 1 })), "{r:?}");
            return Ok(());
        }
        check_case::<f32, f32>(&case);
        check_case::<f16, f16>(&Case { offset: case.offset.clamp(-20.0, 20.0), ..case.clone() });
        if !case.op.is_ln() {
            check_case::<bf16, f32>(&case);
        }
    }

    #[test]
    fn each_statistic_group_is_normalized(case in random_case()) {
        prop_assume!(!bn_too_few(&case));
        let g = Grouping::new(&case.op, &case.shape);
        let len = g.stat.len();
        let mut rng = Rand::new(case.seed);
        let buf: Vec<f32> = rng.normals(len + 1, case.offset, case.spread);
        let x = &buf[1..]; // misaligned by one element
        let out = run_lib::<f32, f32>(&case.op, x, x, &case.shape, None, None, PAR);
        let xf = widen_all(x);
        let r = Ref::new(&g, &xf, &xf, None, None);
        let n = g.count as f64;
        // Each y_i = x̂_i + θ_i·|x̂_i| + e_i with θ ≤ u + 2s + 8u64 (+6u for the LN kernel)
        // and |e| ≤ 2·e_x̂ + tiny (module docs); mean|x̂| ≤ 1 and mean(x̂²) = σ²/(σ² + ε) ≤ 1,
        // so |mean(y)| ≤ θ + |e| and |var(y) − σ²/(σ² + ε)| ≤ 3(θ + |e|) + (θ + |e|)², plus
        // n·u64 for the sums taken here.
        let u = Units::of::<f32, f32>(&case.op);
        let (mut sum, mut sq) = (vec![0.0; g.stats], vec![0.0; g.stats]);
        for (i, y) in out.y.iter().enumerate() {
            sum[g.stat[i]] += y;
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        for (i, y) in out.y.iter().enumerate() {
            sq[g.stat[i]] += (y - mean[g.stat[i]]).powi(2);
        }
        for s in 0..g.stats {
            let theta = u.t + 6.0 * u.kernel + 2.0 * r.s() + 8.0 * U64 + 2.0 * r.e_xhat(s) + u.tiny_t;
            let var = sq[s] / n;
            let want = r.st.var[s] / (r.st.var[s] + EPS);
            let own = n * U64 * 4.0;
            prop_assert!(mean[s].abs() <= theta + own, "group {s}: mean {:e} > {:e}", mean[s], theta);
            prop_assert!(
                (var - want).abs() <= 3.0 * theta + theta * theta + own,
                "group {s}: var {var} vs {want}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Adversarial inputs.
// ---------------------------------------------------------------------------------------------

fn channel_ops() -> Vec<(Op, Vec<usize>)> {
    vec![
        (Op::Bn { axis: 1 }, vec![4, 6, 33]),
        (Op::Bn { axis: -1 }, vec![33, 5, 6]),
        (Op::Gn { groups: 3, axis: 1 }, vec![4, 6, 33]),
        (
            Op::Gn {
                groups: 2,
                axis: -1,
            },
            vec![4, 33, 6],
        ),
        (Op::In { axis: 1 }, vec![4, 6, 33]),
        (Op::In { axis: 2 }, vec![4, 5, 6, 7]),
    ]
}

#[test]
fn large_mean_keeps_normwise_error_below_1e6() {
    // x = 1e7 + N(0, 1) in f32 (DESIGN §2): ‖y − y_ref‖/‖y_ref‖ ≤ 1e-6 against the f64
    // reference on the same values. dx is held to the same target.
    let mut cases = channel_ops();
    cases.push((Op::Ln { axes: vec![0, 2] }, vec![4, 6, 33]));
    for (op, shape) in cases {
        let g = Grouping::new(&op, &shape);
        let len = g.stat.len();
        let mut rng = Rand::new(51);
        let x: Vec<f32> = rng.normals(len, 1e7, 1.0);
        let dy: Vec<f32> = rng.normals(len, 0.0, 1.0);
        let w: Vec<f32> = rng.normals(g.params, 1.0, 0.5);
        let b: Vec<f32> = rng.normals(g.params, 0.0, 0.5);
        let out = run_lib(&op, &x, &dy, &shape, Some(&w), Some(&b), PAR);
        let (xf, dyf, wf, bf) = (widen_all(&x), widen_all(&dy), widen_all(&w), widen_all(&b));
        let r = Ref::new(&g, &xf, &dyf, Some(&wf), Some(&bf));
        let ey = normwise_error(&out.y, &r.y());
        let (dx_ref, _, _) = ref_backward(&dyf, &xf, &g, &r.st.mean, &r.st.rstd, Some(&wf), false);
        let edx = normwise_error(&out.dx, &dx_ref);
        assert!(ey <= 1e-6, "{op:?}: y normwise error {ey:e}");
        assert!(edx <= 1e-6, "{op:?}: dx normwise error {edx:e}");
    }
}

/// A constant statistic group gives x − μ = 0 exactly (the f64 mean of equal values is exact),
/// so y = 0·k + β = β bit for bit.
fn constant_group_gives_beta<T: Element>(value: f64) {
    for (op, shape) in channel_ops() {
        let g = Grouping::new(&op, &shape);
        let len = g.stat.len();
        let mut rng = Rand::new(61);
        let mut x: Vec<T> = rng.normals(len, 0.0, 1.0);
        for (v, &s) in x.iter_mut().zip(&g.stat) {
            if s == 1 {
                *v = from_f64(value);
            }
        }
        let w: Vec<T> = rng.normals(g.params, 1.0, 0.5);
        // β away from zero, so that a −0 from 0·(negative scale) cannot hide.
        let b: Vec<T> = (0..g.params).map(|p| from_f64(0.25 + p as f64)).collect();
        let out = run_lib(&op, &x, &x, &shape, Some(&w), Some(&b), PAR);
        let none = run_lib::<T, T>(&op, &x, &x, &shape, None, None, PAR);
        for i in (0..len).filter(|&i| g.stat[i] == 1) {
            let beta = to_f64(b[g.param[i]]);
            assert_eq!(
                out.y[i].to_bits(),
                beta.to_bits(),
                "{} {op:?} [{i}]",
                T::NAME
            );
            assert_eq!(none.y[i], 0.0, "{} {op:?} no affine [{i}]", T::NAME);
        }
        assert_eq!(
            out.mean[1],
            to_f64(from_f64::<T>(value)),
            "{} {op:?} mean",
            T::NAME
        );
    }
}

#[test]
fn constant_group_gives_exactly_beta() {
    constant_group_gives_beta::<f32>(123456.7);
    constant_group_gives_beta::<f64>(123456.7);
    constant_group_gives_beta::<f16>(1234.5);
    constant_group_gives_beta::<bf16>(-3.0e5);
}

#[test]
fn nan_stays_in_its_group() {
    // One NaN in group 0 of sample 1: that (sample, group) becomes NaN, every other element of
    // y and dx, every other statistic and the other channels' dγ/dβ are bitwise the clean run's.
    for bad in [f32::NAN, f32::INFINITY] {
        for (op, shape) in channel_ops()
            .into_iter()
            .filter(|(op, _)| !matches!(op, Op::Bn { .. }))
        {
            let g = Grouping::new(&op, &shape);
            let len = g.stat.len();
            let mut rng = Rand::new(71);
            let clean: Vec<f32> = rng.normals(len, 0.5, 1.0);
            let dy: Vec<f32> = rng.normals(len, 0.0, 1.0);
            let w: Vec<f32> = rng.normals(g.params, 1.0, 0.5);
            let b: Vec<f32> = rng.normals(g.params, 0.0, 0.5);
            let groups = g.stats / shape[0];
            let target = groups; // sample 1, group 0
            let pos = (0..len).filter(|&i| g.stat[i] == target).nth(3).unwrap();
            let mut x = clean.clone();
            x[pos] = bad;
            let a = run_lib(&op, &clean, &dy, &shape, Some(&w), Some(&b), PAR);
            let z = run_lib(&op, &x, &dy, &shape, Some(&w), Some(&b), PAR);
            let what = format!("{op:?} {shape:?} {bad}");
            for i in 0..len {
                if g.stat[i] == target {
                    // The group's statistics are NaN (an ∞ makes the variance ∞ − ∞).
                    assert!(
                        z.y[i].is_nan(),
                        "{what}: y[{i}] = {} in the bad group",
                        z.y[i]
                    );
                } else {
                    assert!(z.y[i].is_finite(), "{what}: y[{i}] not finite");
                    assert_eq!(z.y[i].to_bits(), a.y[i].to_bits(), "{what}: y[{i}] changed");
                    assert_eq!(
                        z.dx[i].to_bits(),
                        a.dx[i].to_bits(),
                        "{what}: dx[{i}] changed"
                    );
                }
            }
            for s in (0..g.stats).filter(|&s| s != target) {
                assert_eq!(
                    z.mean[s].to_bits(),
                    a.mean[s].to_bits(),
                    "{what}: mean[{s}]"
                );
                assert_eq!(
                    z.rstd[s].to_bits(),
                    a.rstd[s].to_bits(),
                    "{what}: rstd[{s}]"
                );
            }
            let in_target: Vec<bool> = (0..g.params)
                .map(|p| (0..len).any(|i| g.param[i] == p && g.stat[i] == target))
                .collect();
            let (zw, aw) = (z.dw.unwrap(), a.dw.unwrap());
            for p in (0..g.params).filter(|&p| !in_target[p]) {
                assert_eq!(zw[p].to_bits(), aw[p].to_bits(), "{what}: dγ[{p}]");
            }
            assert_eq!(z.db, a.db, "{what}: dβ does not read x");
        }
    }
}

#[test]
fn batch_norm_nan_stays_in_its_channel() {
    for (axis, shape) in [
        (1isize, vec![4usize, 6, 33]),
        (-1, vec![33, 5, 6]),
        (2, vec![3, 4, 5, 6]),
    ] {
        let op = Op::Bn { axis };
        let g = Grouping::new(&op, &shape);
        let len = g.stat.len();
        let mut rng = Rand::new(81);
        let clean: Vec<f32> = rng.normals(len, 0.5, 1.0);
        let dy: Vec<f32> = rng.normals(len, 0.0, 1.0);
        let w: Vec<f32> = rng.normals(g.params, 1.0, 0.5);
        let b: Vec<f32> = rng.normals(g.params, 0.0, 0.5);
        let pos = (0..len).filter(|&i| g.stat[i] == 2).nth(5).unwrap();
        let mut x = clean.clone();
        x[pos] = f32::NAN;
        let a = run_lib(&op, &clean, &dy, &shape, Some(&w), Some(&b), PAR);
        let z = run_lib(&op, &x, &dy, &shape, Some(&w), Some(&b), PAR);
        for i in 0..len {
            if g.stat[i] == 2 {
                assert!(z.y[i].is_nan(), "{shape:?}: y[{i}] in the NaN channel");
            } else {
                assert_eq!(z.y[i].to_bits(), a.y[i].to_bits(), "{shape:?}: y[{i}]");
                assert_eq!(z.dx[i].to_bits(), a.dx[i].to_bits(), "{shape:?}: dx[{i}]");
            }
        }
        // The running statistics of the other channels are updated as usual.
        let bn = BatchNorm {
            channel_axis: axis,
            ..BatchNorm::default()
        };
        let run = |x: &[f32]| {
            let (mut m, mut v) = (vec![0.0f32; g.params], vec![1.0f32; g.params]);
            let running = RunningStatsMut {
                mean: &mut m,
                var: &mut v,
            };
            bn.forward_train(x, &shape, Affine::<f32>::none(), Some(running), PAR)
                .unwrap();
            (m, v)
        };
        let ((ma, va), (mz, vz)) = (run(&clean), run(&x));
        for c in 0..g.params {
            if c == 2 {
                assert!(
                    mz[c].is_nan() && vz[c].is_nan(),
                    "{shape:?}: running stats of the NaN channel"
                );
            } else {
                assert_eq!(
                    (ma[c].to_bits(), va[c].to_bits()),
                    (mz[c].to_bits(), vz[c].to_bits())
                );
            }
        }
    }
}

#[test]
fn huge_f32_values_stay_finite_and_accurate() {
    // x ≈ 1e30·N(0, 1): squares overflow f32, not the f64 sums. Checked against the reference
    // with the usual bounds (the reference squares in f64 too, 1e60 ≪ f64::MAX).
    let mut cases = channel_ops();
    cases.push((Op::Ln { axes: vec![0, 2] }, vec![4, 6, 33]));
    cases.push((Op::Ln { axes: vec![1] }, vec![4, 6, 33]));
    for (seed, (op, shape)) in cases.into_iter().enumerate() {
        let case = Case {
            op,
            shape,
            kind: AffineKind::ScaleShift,
            offset: 0.0,
            spread: 1e30,
            misalign: 0,
            seed: seed as u8,
        };
        check_case::<f32, f32>(&case);
        check_case::<f32, f32>(&Case {
            offset: 3e30,
            ..case
        });
    }
}

/// f64 data near 1e300 (its squares overflow f64): the outputs must be finite and equal x̂ of
/// the same data scaled by 2^-600 (exact, and x̂ is scale-invariant once ε ≪ σ²).
fn huge_f64_group_is_finite(x: &[f64], op: &Op, shape: &[usize]) {
    let g = Grouping::new(op, shape);
    let dy = vec![1.0; x.len()];
    let out = run_lib::<f64, f64>(op, x, &dy, shape, None, None, PAR);
    let what = format!("{op:?} {shape:?}");
    for v in out.y.iter().chain(&out.mean).chain(&out.dx) {
        assert!(v.is_finite(), "{what}: non-finite output {v}");
    }
    assert!(
        out.rstd.iter().all(|r| *r > 0.0 && r.is_finite()),
        "{what}: rstd"
    );
    let scaled: Vec<f64> = x.iter().map(|v| v * 2f64.powi(-600)).collect();
    let r = Ref::new(&g, &scaled, &dy, None, None);
    let u = Units::of::<f64, f64>(op);
    let y_ref = r.y();
    assert_within(
        &format!("huge y {what}"),
        &out.y,
        &y_ref,
        &r.y_bound(u, &y_ref),
    );
}

#[test]
fn huge_f64_values_stay_finite() {
    let mut cases = channel_ops();
    cases.push((Op::Ln { axes: vec![0, 2] }, vec![4, 6, 33]));
    for (op, shape) in cases {
        let len: usize = shape.iter().product();
        let mut rng = Rand::new(91);
        let x: Vec<f64> = rng.normals(len, 0.0, 1e300);
        huge_f64_group_is_finite(&x, &op, &shape);
    }
}

/// Groups holding f64::MAX and −0.9·f64::MAX: the mean is about −0.27·MAX, so x − μ ≈ 1.27·MAX
/// overflows f64 unless the normalization, like the statistics, is scaled.
fn near_max_of_both_signs(op: &Op, shape: &[usize]) {
    let len: usize = shape.iter().product();
    let x: Vec<f64> = (0..len)
        .map(|i| {
            if i % 3 == 0 {
                f64::MAX
            } else {
                -0.9 * f64::MAX
            }
        })
        .collect();
    huge_f64_group_is_finite(&x, op, shape);
}

#[test]
fn layer_norm_axes_near_f64_max_of_both_signs_stay_finite() {
    // The control for the test below: LayerNorm's rows already handle it.
    near_max_of_both_signs(&Op::Ln { axes: vec![0, 2] }, &[4, 6, 33]);
    near_max_of_both_signs(&Op::Ln { axes: vec![-1] }, &[4, 6, 33]);
}

#[test]
fn channel_ops_near_f64_max_of_both_signs_stay_finite() {
    // DESIGN §2: finite inputs never give NaN/Inf. E.g. x = [MAX, −0.9·MAX, −0.9·MAX] as a
    // BatchNorm (3, 1) channels-last batch gives [√2, −1/√2, −1/√2] (x − μ is formed on data
    // scaled by 2^-600); channels that are constant near ±MAX give exactly 0 (the rstd of a
    // scaled variance of 0 is 1/√ε, not 2^-600/√(ε·2^-1200) = ∞).
    for (op, shape) in channel_ops() {
        near_max_of_both_signs(&op, &shape);
    }
}

// ---------------------------------------------------------------------------------------------
// 7. BatchNorm running statistics.
// ---------------------------------------------------------------------------------------------

/// One training step with `momentum` from random running statistics; returns them before and
/// after, with the reference of the batch.
fn running_step<T: Element, P: ParamOf<T>>(momentum: f64, axis: isize, shape: &[usize], seed: u8) {
    let op = Op::Bn { axis };
    let g = Grouping::new(&op, shape);
    let len = g.stat.len();
    let mut rng = Rand::new(seed);
    let x: Vec<T> = rng.normals(len, 3.0, 2.0);
    let rm0: Vec<P> = rng.normals(g.params, 0.0, 1.0);
    let rv0: Vec<P> = (0..g.params)
        .map(|_| from_f64(0.5 + rng.uniform()))
        .collect();
    let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
    let bn = BatchNorm {
        channel_axis: axis,
        momentum,
        ..BatchNorm::default()
    };
    let running = RunningStatsMut {
        mean: &mut rm,
        var: &mut rv,
    };
    bn.forward_train(&x, shape, Affine::<P>::none(), Some(running), PAR)
        .unwrap();
    let what = format!("{}/{} momentum {momentum} {shape:?}", T::NAME, P::NAME);
    if momentum == 0.0 {
        assert_eq!(widen_all(&rm), widen_all(&rm0), "{what}: mean moved");
        assert_eq!(widen_all(&rv), widen_all(&rv0), "{what}: var moved");
    }
    let xf = widen_all(&x);
    let r = Ref::new(&g, &xf, &xf, None, None);
    let u = Units::of::<T, P>(&op);
    check_running(&what, momentum, (&rm0, &rv0), (&rm, &rv), &r, u);
    if momentum == 1.0 {
        // The batch mean and the *unbiased* batch variance, whatever came before.
        let unbias = g.count as f64 / (g.count - 1) as f64;
        let var_u: Vec<f64> = r.st.var.iter().map(|v| v * unbias).collect();
        let rel = |v: &[f64], k: f64| -> Vec<f64> { v.iter().map(|v| k * v.abs()).collect() };
        let k = u.p + 8.0 * r.s() + 8.0 * U64;
        let sd: Vec<f64> = r.st.var.iter().map(|v| v.sqrt()).collect();
        let mb: Vec<f64> = rel(&r.st.mean, k)
            .iter()
            .zip(&sd)
            .map(|(a, s)| a + 2.0 * r.s() * s)
            .collect();
        assert_within(&format!("{what}: mean"), &widen_all(&rm), &r.st.mean, &mb);
        assert_within(
            &format!("{what}: var"),
            &widen_all(&rv),
            &var_u,
            &rel(&var_u, k),
        );
        // Eval mode then normalizes with exactly these (a slightly different y than training,
        // which uses the biased variance).
        let running = RunningStats {
            mean: &rm,
            var: &rv,
        };
        let y = bn
            .forward_eval(&x, shape, Affine::<P>::none(), running, PAR)
            .unwrap();
        let rstd: Vec<f64> = widen_all(&rv)
            .iter()
            .map(|v| 1.0 / (v + EPS).sqrt())
            .collect();
        let y_ref = ref_normalize(&xf, &g, &widen_all(&rm), &rstd, None, None);
        // y = (x − m)·rstd: the same 3 f64 roundings on each side, then one to T.
        let bound: Vec<f64> = y_ref
            .iter()
            .map(|v| u.t * v.abs() + u.tiny_t + 8.0 * U64 * v.abs())
            .collect();
        assert_within(&format!("{what}: eval y"), &widen_all(&y), &y_ref, &bound);
    }
}

#[test]
fn running_statistics_follow_momentum() {
    for momentum in [0.0, 1.0, 0.1, 0.37] {
        running_step::<f32, f32>(momentum, 1, &[5, 3, 7], 1);
        running_step::<f32, f32>(momentum, -1, &[9, 4, 5], 2);
        running_step::<f64, f64>(momentum, 2, &[3, 2, 5, 7], 3);
        running_step::<bf16, f32>(momentum, 1, &[6, 4, 9], 4);
        running_step::<f16, f16>(momentum, -1, &[17, 3], 5);
    }
    // The default is PyTorch's 0.1.
    assert_eq!(BatchNorm::default().momentum, 0.1);
    assert_eq!(BatchNorm::default().channel_axis, 1);
    assert_eq!(BatchNorm::default().eps, 1e-5);
}

// ---------------------------------------------------------------------------------------------
// 8. Errors.
// ---------------------------------------------------------------------------------------------

fn bn(axis: isize) -> BatchNorm {
    BatchNorm {
        channel_axis: axis,
        ..BatchNorm::default()
    }
}

fn gn(groups: usize, axis: isize) -> GroupNorm {
    GroupNorm {
        groups,
        channel_axis: axis,
        eps: EPS,
    }
}

fn inorm(axis: isize) -> InstanceNorm {
    InstanceNorm {
        channel_axis: axis,
        eps: EPS,
    }
}

const NONE: Affine<'static, f32> = Affine {
    weight: None,
    bias: None,
};

/// Every entry point of the family on `x` of `shape` with channel/normalized axis `axis`:
/// one result per call, forward and backward, with matching dummy buffers.
fn every_call(
    x: &[f32],
    shape: &[usize],
    axis: isize,
) -> Vec<(&'static str, layernorm::Result<()>)> {
    let len = x.len();
    let c = 4; // buffers sized for 4 channels / statistics: the shapes used below have 4
    let (ones, zeros) = (vec![1.0f32; c], vec![0.0f32; c]);
    let dy = vec![0.0f32; len];
    let stats = layernorm::StatsRef {
        mean: &zeros[..],
        rstd: &ones[..],
    };
    let running = RunningStats {
        mean: &zeros[..],
        var: &ones[..],
    };
    let (mut rm, mut rv) = (zeros.clone(), ones.clone());
    let m = GradMask::ALL;
    let p = PAR;
    let w: Option<&[f32]> = None;
    vec![
        (
            "bn train",
            bn(axis)
                .forward_train(
                    x,
                    shape,
                    NONE,
                    Some(RunningStatsMut {
                        mean: &mut rm,
                        var: &mut rv,
                    }),
                    p,
                )
                .map(drop),
        ),
        (
            "bn eval",
            bn(axis).forward_eval(x, shape, NONE, running, p).map(drop),
        ),
        (
            "bn train bwd",
            bn(axis)
                .backward_train(&dy, x, shape, stats, w, m, p)
                .map(drop),
        ),
        (
            "bn eval bwd",
            bn(axis)
                .backward_eval(&dy, x, shape, running, w, m, p)
                .map(drop),
        ),
        ("gn", gn(2, axis).forward(x, shape, NONE, p).map(drop)),
        (
            "gn bwd",
            gn(2, axis)
                .backward(&dy, x, shape, stats, w, m, p)
                .map(drop),
        ),
        ("in", inorm(axis).forward(x, shape, NONE, p).map(drop)),
        (
            "in bwd",
            inorm(axis)
                .backward(&dy, x, shape, stats, w, m, p)
                .map(drop),
        ),
        (
            "ln",
            layer_norm::forward_axes(x, shape, &[axis], NONE, EPS, p).map(drop),
        ),
        (
            "ln bwd",
            layer_norm::backward_axes(&dy, x, shape, &[axis], stats, w, m, p).map(drop),
        ),
    ]
}

#[track_caller]
fn expect_all(
    results: Vec<(&'static str, layernorm::Result<()>)>,
    want: impl Fn(&Error) -> bool,
    what: &str,
) {
    for (call, r) in results {
        match r {
            Err(e) if want(&e) => {}
            other => panic!("{what}: {call} gave {other:?}"),
        }
    }
}

#[test]
fn axis_zero_size_and_overflow_errors() {
    let x = vec![0.5f32; 24];
    for axis in [3, -4, 100, isize::MIN] {
        expect_all(
            every_call(&x, &[2, 4, 3], axis),
            |e| matches!(e, Error::AxisOutOfRange { .. }),
            "axis",
        );
    }
    expect_all(
        every_call(&[], &[2, 0, 3], 1),
        |e| matches!(e, Error::ZeroSizeDim { .. }),
        "zero dim",
    );
    let huge = [usize::MAX / 2 + 1, 4, 2];
    expect_all(
        every_call(&x, &huge, 1),
        |e| matches!(e, Error::SizeOverflow { .. }),
        "overflow",
    );
    // Rank 0: no channel axis at all.
    expect_all(
        every_call(&[1.0], &[], 0),
        |e| matches!(e, Error::AxisOutOfRange { .. }),
        "rank 0",
    );
}

#[test]
fn length_errors_name_their_operand() {
    use Operand::*;
    let shape = [3usize, 4, 5];
    let len = 60;
    let x = vec![0.5f32; len];
    let is = |want: Operand| move |e: &Error| matches!(e, Error::LengthMismatch { operand, .. } if *operand == want);
    // x against the shape.
    expect_all(every_call(&x[..len - 1], &shape, 1), is(Input), "short x");
    let (w4, w3) = (vec![1.0f32; 4], vec![1.0f32; 3]);
    let (short, good) = (Affine::scale(&w3[..]), Affine::scale(&w4[..]));
    let bias3 = Affine {
        weight: None,
        bias: Some(&w3[..]),
    };
    let ok_run = RunningStats {
        mean: &w4[..],
        var: &w4[..],
    };
    let p = PAR;
    let checks: Vec<(&str, Operand, layernorm::Result<()>)> = vec![
        (
            "bn weight",
            Weight,
            bn(1).forward_train(&x, &shape, short, None, p).map(drop),
        ),
        (
            "bn bias",
            Bias,
            bn(1).forward_train(&x, &shape, bias3, None, p).map(drop),
        ),
        (
            "bn eval weight",
            Weight,
            bn(1).forward_eval(&x, &shape, short, ok_run, p).map(drop),
        ),
        (
            "gn weight",
            Weight,
            gn(2, 1).forward(&x, &shape, short, p).map(drop),
        ),
        (
            "gn bias",
            Bias,
            gn(2, 1).forward(&x, &shape, bias3, p).map(drop),
        ),
        (
            "in weight",
            Weight,
            inorm(1).forward(&x, &shape, short, p).map(drop),
        ),
        (
            "ln weight",
            Weight,
            layer_norm::forward_axes(&x, &shape, &[1], short, EPS, p).map(drop),
        ),
        (
            "ln bias",
            Bias,
            layer_norm::forward_axes(&x, &shape, &[1], bias3, EPS, p).map(drop),
        ),
        (
            "bn eval mean",
            RunningMean,
            bn(1)
                .forward_eval(
                    &x,
                    &shape,
                    good,
                    RunningStats {
                        mean: &w3[..],
                        var: &w4[..],
                    },
                    p,
                )
                .map(drop),
        ),
        (
            "bn eval var",
            RunningVar,
            bn(1)
                .forward_eval(
                    &x,
                    &shape,
                    good,
                    RunningStats {
                        mean: &w4[..],
                        var: &w3[..],
                    },
                    p,
                )
                .map(drop),
        ),
        (
            "bn eval bwd var",
            RunningVar,
            bn(1)
                .backward_eval(
                    &x,
                    &x,
                    &shape,
                    RunningStats {
                        mean: &w4[..],
                        var: &w3[..],
                    },
                    None,
                    GradMask::ALL,
                    p,
                )
                .map(drop),
        ),
        (
            "bn eval bwd dy",
            GradOutput,
            bn(1)
                .backward_eval(&x[1..], &x, &shape, ok_run, None, GradMask::ALL, p)
                .map(drop),
        ),
        (
            "bn eval bwd weight",
            Weight,
            bn(1)
                .backward_eval(&x, &x, &shape, ok_run, Some(&w3[..]), GradMask::ALL, p)
                .map(drop),
        ),
    ];
    let mut checks = checks;
    {
        let (mut m3, mut v4) = (w3.clone(), w4.clone());
        let r = bn(1).forward_train(
            &x,
            &shape,
            good,
            Some(RunningStatsMut {
                mean: &mut m3,
                var: &mut v4,
            }),
            p,
        );
        checks.push(("bn train running mean", RunningMean, r.map(drop)));
        let (mut m4, mut v3) = (w4.clone(), w3.clone());
        let r = bn(1).forward_train(
            &x,
            &shape,
            good,
            Some(RunningStatsMut {
                mean: &mut m4,
                var: &mut v3,
            }),
            p,
        );
        checks.push(("bn train running var", RunningVar, r.map(drop)));
    }
    // Backward: dy, the saved statistics, γ. Per-channel stats for BN, per (sample, group) for
    // GN (3·2 = 6), per (sample, channel) for IN (12), per kept index for LN over axis 1 (15).
    let dy_short = &x[1..];
    let m = GradMask::ALL;
    for (name, good_n) in [("bn", 4usize), ("gn", 6), ("in", 12), ("ln", 15)] {
        let backward =
            |dy: &[f32], mean: &[f32], rstd: &[f32], w: Option<&[f32]>| -> layernorm::Result<()> {
                let s = layernorm::StatsRef { mean, rstd };
                match name {
                    "bn" => bn(1).backward_train(dy, &x, &shape, s, w, m, p).map(drop),
                    "gn" => gn(2, 1).backward(dy, &x, &shape, s, w, m, p).map(drop),
                    "in" => inorm(1).backward(dy, &x, &shape, s, w, m, p).map(drop),
                    _ => layer_norm::backward_axes(dy, &x, &shape, &[1], s, w, m, p).map(drop),
                }
            };
        let (gm, gr) = (vec![0.0f32; good_n], vec![1.0f32; good_n]);
        let (bm, br) = (vec![0.0f32; good_n + 1], vec![1.0f32; good_n - 1]);
        assert!(
            backward(&x, &gm, &gr, Some(&w4)).is_ok(),
            "{name}: valid backward"
        );
        for (what, want, r) in [
            ("dy", GradOutput, backward(dy_short, &gm, &gr, None)),
            ("mean", Mean, backward(&x, &bm, &gr, None)),
            ("rstd", Rstd, backward(&x, &gm, &br, None)),
            ("weight", Weight, backward(&x, &gm, &gr, Some(&w3))),
        ] {
            assert!(
                is(want)(&r.clone().unwrap_err()),
                "{name} backward {what}: {r:?}"
            );
        }
    }
    for (what, want, r) in checks {
        match r {
            Err(Error::LengthMismatch { operand, .. }) if operand == want => {}
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn hyper_parameter_errors() {
    let shape = [3usize, 4, 5];
    let x = vec![0.5f32; 60];
    let xd = vec![0.5f64; 60];
    let p = PAR;
    let nonef64 = Affine::<f64>::none();
    // ε: non-finite, non-positive, or below the compute type's smallest normal.
    for eps in [0.0, -1e-5, f64::NAN, f64::INFINITY, 1e-300] {
        let bad = |e: &layernorm::Result<()>| matches!(e, Err(Error::InvalidEpsilon { .. }));
        let b = BatchNorm {
            eps,
            ..BatchNorm::default()
        };
        let r = RunningStats {
            mean: &[0.0f32; 4][..],
            var: &[1.0f32; 4][..],
        };
        for (what, res) in [
            (
                "bn train",
                b.forward_train(&x, &shape, NONE, None, p).map(drop),
            ),
            ("bn eval", b.forward_eval(&x, &shape, NONE, r, p).map(drop)),
            (
                "bn eval bwd",
                b.backward_eval(&x, &x, &shape, r, None, GradMask::ALL, p)
                    .map(drop),
            ),
            (
                "gn",
                GroupNorm {
                    eps,
                    ..GroupNorm::new(2)
                }
                .forward(&x, &shape, NONE, p)
                .map(drop),
            ),
            (
                "in",
                InstanceNorm {
                    eps,
                    ..InstanceNorm::default()
                }
                .forward(&x, &shape, NONE, p)
                .map(drop),
            ),
            (
                "ln",
                layer_norm::forward_axes(&x, &shape, &[1], NONE, eps, p).map(drop),
            ),
        ] {
            assert!(bad(&res), "eps {eps:e} {what}: {res:?}");
        }
    }
    // 1e-300 is a fine ε for f64 data.
    let b = BatchNorm {
        eps: 1e-300,
        ..BatchNorm::default()
    };
    assert!(b.forward_train(&xd, &shape, nonef64, None, p).is_ok());
    // Momentum outside [0, 1] or NaN; the ends are fine.
    for momentum in [-0.1, 1.1, f64::NAN, f64::INFINITY, -0.0 - 1e-300] {
        let b = BatchNorm {
            momentum,
            ..BatchNorm::default()
        };
        let r = b.forward_train(&x, &shape, NONE, None, p);
        assert!(
            matches!(r, Err(Error::InvalidMomentum { .. })),
            "momentum {momentum}: {r:?}"
        );
    }
    for momentum in [0.0, 1.0, -0.0] {
        let b = BatchNorm {
            momentum,
            ..BatchNorm::default()
        };
        assert!(
            b.forward_train(&x, &shape, NONE, None, p).is_ok(),
            "momentum {momentum}"
        );
    }
    // Running variance negative or NaN in eval (forward and backward); +∞ and −0 are numbers ≥ 0.
    for (value, channel) in [(-1.0f32, 2usize), (f32::NAN, 0), (-1e-30, 3)] {
        let mut var = [1.0f32; 4];
        var[channel] = value;
        let r = RunningStats {
            mean: &[0.0f32; 4][..],
            var: &var[..],
        };
        for res in [
            bn(1).forward_eval(&x, &shape, NONE, r, p).map(drop),
            bn(1)
                .backward_eval(&x, &x, &shape, r, None, GradMask::ALL, p)
                .map(drop),
        ] {
            assert!(
                matches!(res, Err(Error::InvalidRunningVar { channel: c, .. }) if c == channel),
                "running var {value} at {channel}: {res:?}"
            );
        }
    }
    for value in [f32::INFINITY, -0.0] {
        let r = RunningStats {
            mean: &[0.0f32; 4][..],
            var: &[value; 4][..],
        };
        let y = bn(1).forward_eval(&x, &shape, NONE, r, p).unwrap();
        assert!(y.iter().all(|v| v.is_finite()), "running var {value}");
    }
    // Training BatchNorm with one value per channel.
    for (shape, axis) in [
        (vec![1usize, 4], 1isize),
        (vec![1, 4, 1], 1),
        (vec![1, 1, 4], -1),
        (vec![4], 0),
    ] {
        let x = vec![0.5f32; 4];
        let r = bn(axis).forward_train(&x, &shape, NONE, None, p);
        assert!(
            matches!(r, Err(Error::TooFewValues { count: 1 })),
            "{shape:?}: {r:?}"
        );
        // Eval mode is fine with one value per channel.
        let run = RunningStats {
            mean: &[0.0f32; 4][..],
            var: &[1.0f32; 4][..],
        };
        assert!(bn(axis).forward_eval(&x, &shape, NONE, run, p).is_ok());
    }
    // GroupNorm/InstanceNorm: the channel axis must leave the batch axis 0 in front of it.
    for axis in [0, -3] {
        for r in [
            gn(2, axis).forward(&x, &shape, NONE, p).map(drop),
            inorm(axis).forward(&x, &shape, NONE, p).map(drop),
            gn(1, axis)
                .backward(
                    &x,
                    &x,
                    &shape,
                    layernorm::StatsRef {
                        mean: &[0.0; 3][..],
                        rstd: &[1.0; 3][..],
                    },
                    None::<&[f32]>,
                    GradMask::ALL,
                    p,
                )
                .map(drop),
        ] {
            assert!(
                matches!(r, Err(Error::NoBatchAxis { .. })),
                "axis {axis}: {r:?}"
            );
        }
    }
    // Groups that do not divide the channels, zero groups, more groups than channels.
    for groups in [0, 3, 5, 8] {
        let r = gn(groups, 1).forward(&x, &shape, NONE, p);
        assert!(
            matches!(r, Err(Error::InvalidGroups { .. })),
            "groups {groups}: {r:?}"
        );
        let s = layernorm::StatsRef {
            mean: &[0.0f32; 3][..],
            rstd: &[1.0f32; 3][..],
        };
        let r = gn(groups, 1).backward(&x, &x, &shape, s, None::<&[f32]>, GradMask::ALL, p);
        assert!(
            matches!(r, Err(Error::InvalidGroups { .. })),
            "groups {groups} bwd: {r:?}"
        );
    }
    // LayerNorm axes: none, duplicated (also spelled differently), out of range.
    let s = layernorm::StatsRef {
        mean: &[0.0f32; 3][..],
        rstd: &[1.0f32; 3][..],
    };
    for (axes, want) in [
        (vec![], "empty"),
        (vec![1, 1], "dup"),
        (vec![1, -2], "dup"),
        (vec![0, 2, -1], "dup"),
        (vec![1, 3], "range"),
        (vec![-4], "range"),
    ] {
        let check = |r: layernorm::Result<()>| match want {
            "empty" => matches!(r, Err(Error::EmptyNormalizedShape)),
            "dup" => matches!(r, Err(Error::DuplicateAxis { .. })),
            _ => matches!(r, Err(Error::AxisOutOfRange { .. })),
        };
        let f = layer_norm::forward_axes(&x, &shape, &axes, NONE, EPS, p).map(drop);
        let b =
            layer_norm::backward_axes(&x, &x, &shape, &axes, s, None, GradMask::ALL, p).map(drop);
        assert!(
            check(f.clone()) && check(b.clone()),
            "axes {axes:?}: {f:?} {b:?}"
        );
    }
}
