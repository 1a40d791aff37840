//! The kernels against the f64 reference (`layernorm::reference`), forward and backward, for
//! f32 and f64, every γ/β combination, the row lengths around lane boundaries, and slices that
//! start one element off alignment.
//!
//! Tolerances follow the rounding analysis of the kernel (statistics in f64; then, in the
//! storage precision with unit roundoff u: x − μ_hi, − μ_lo, ·rstd, ·γ, +β — at most 5
//! roundings, so 6u·(|x̂γ| + |β|) for y), plus the effect of f64 rounding in the mean.

use crate::common::*;
use layernorm::reference::{layer_norm_backward, layer_norm_forward, layer_norm_stats};
use layernorm::{layer_norm, Affine, Element, GradMask, Parallelism};

const LENGTHS: [usize; 10] = [1, 2, 15, 16, 17, 63, 64, 65, 1023, 4097];
const U64: f64 = f64::EPSILON / 2.0;

struct Case {
    rows: usize,
    cols: usize,
    kind: AffineKind,
    offset: f64,
    misalign: usize,
    seed: u8,
}

fn check_case<T: Element>(case: &Case) {
    let Case {
        rows,
        cols,
        kind,
        offset,
        misalign,
        seed,
    } = *case;
    let what = format!(
        "{} rows={rows} cols={cols} {kind:?} offset={offset} misalign={misalign}",
        T::NAME
    );
    let u = T::UNIT_ROUNDOFF;
    // Each output's last rounding, to T, where it lands among T's subnormals.
    let tiny = subnormal_rounding::<T>();
    let eps = 1e-5;
    let mut rng = Rand::new(seed);
    // Pad the front so the data starts `misalign` elements past the allocation.
    let padded = |v: Vec<T>| -> Vec<T> {
        let mut out = vec![T::default(); misalign];
        out.extend(v);
        out
    };
    let len = rows * cols;
    let x_buf = padded(rng.normals(len, offset, 1.0));
    let dy_buf = padded(rng.normals(len, 0.0, 1.0));
    let w_buf = padded(rng.normals(cols, 1.0, 0.5));
    let b_buf = padded(rng.normals(cols, 0.0, 0.5));
    let (x, dy) = (&x_buf[misalign..], &dy_buf[misalign..]);
    let weight = kind.has_weight().then(|| &w_buf[misalign..]);
    let bias = kind.has_bias().then(|| &b_buf[misalign..]);

    let par = Parallelism::Rayon;
    let (y, stats) = layer_norm::forward(x, cols, Affine { weight, bias }, eps, par).unwrap();
    let grads =
        layer_norm::backward(dy, x, cols, stats.as_ref(), weight, GradMask::ALL, par).unwrap();

    let (xf, dyf) = (widen_all(x), widen_all(dy));
    let (wf, bf) = (weight.map(widen_all), bias.map(widen_all));
    let (y_ref, mean_ref, rstd_ref) =
        layer_norm_forward(&xf, cols, wf.as_deref(), bf.as_deref(), eps);
    let (dx_ref, dw_ref, db_ref) = layer_norm_backward(&dyf, &xf, cols, wf.as_deref(), eps);
    let stats_ref = layer_norm_stats(&xf, cols, eps);

    let gamma = |j: usize| wf.as_ref().map_or(1.0, |w| w[j]);
    let beta = |j: usize| bf.as_ref().map_or(0.0, |b| b[j]);
    let xhat = |i: usize| {
        let (m, r) = stats_ref[i / cols];
        (xf[i] - m) * r
    };
    // The f64 mean is off by a few u64·|μ|, which moves x̂ by that much times rstd.
    let mean_effect = |i: usize| {
        let (m, r) = stats_ref[i / cols];
        8.0 * U64 * (1.0 + m.abs() * r)
    };

    let y_bound: Vec<f64> = (0..len)
        .map(|i| {
            let j = i % cols;
            6.0 * u * ((xhat(i) * gamma(j)).abs() + beta(j).abs())
                + mean_effect(i) * gamma(j).abs()
                + tiny
        })
        .collect();
    assert_within(&format!("y {what}"), &widen_all(&y), &y_ref, &y_bound);

    // rstd: the f64 variance sum carries up to (cols/LANES + 3)·u64 relative error (8 lanes
    // then a pairwise tree), then rounding to the stats type (u) and sqrt/division (u).
    let sum_depth = cols.div_ceil(8) as f64 + 3.0;
    let rstd_bound: Vec<f64> = rstd_ref
        .iter()
        .map(|r| (2.0 * u + sum_depth * U64) * r)
        .collect();
    let mean_bound: Vec<f64> = (0..rows)
        .map(|r| 2.0 * u * mean_ref[r].abs() + 8.0 * U64 / rstd_ref[r])
        .collect();
    assert_within(
        &format!("mean {what}"),
        &widen_stats(&stats.mean),
        &mean_ref,
        &mean_bound,
    );
    assert_within(
        &format!("rstd {what}"),
        &widen_stats(&stats.rstd),
        &rstd_ref,
        &rstd_bound,
    );

    // dx = rstd·(g − mean_g − x̂·mean_gx): ≤ 8 roundings on terms of these sizes.
    let mut dx_bound = vec![0.0; len];
    for (r, &(_, rstd)) in stats_ref.iter().enumerate() {
        let span = r * cols..(r + 1) * cols;
        let g: Vec<f64> = span.clone().map(|i| dyf[i] * gamma(i % cols)).collect();
        let mean_g = g.iter().sum::<f64>() / cols as f64;
        let mean_gx = span.clone().zip(&g).map(|(i, g)| g * xhat(i)).sum::<f64>() / cols as f64;
        // The f64 row sums behind mean_g and mean_gx carry sum_depth·u64 of their terms.
        let abs_g = g.iter().map(|g| g.abs()).sum::<f64>() / cols as f64;
        let abs_gx = span
            .clone()
            .zip(&g)
            .map(|(i, g)| (g * xhat(i)).abs())
            .sum::<f64>()
            / cols as f64;
        for (k, i) in span.enumerate() {
            let terms = g[k].abs() + mean_g.abs() + (xhat(i) * mean_gx).abs();
            let sums = sum_depth * U64 * (abs_g + xhat(i).abs() * abs_gx);
            dx_bound[i] = rstd * (8.0 * u * terms + sums + mean_effect(i) * mean_gx.abs()) + tiny;
        }
    }
    assert_within(
        &format!("dx {what}"),
        &widen_all(grads.dx.as_ref().unwrap()),
        &dx_ref,
        &dx_bound,
    );

    // dγ, dβ: f64 sums over the rows of products with x̂ good to ~5u (plus the f64 mean's
    // own rounding), rounded once at the end; the f64 sum of `rows` terms adds up to
    // (rows − 1)·U64 of Σ|terms| (which matters only for f64 data, where u = U64).
    let dw_bound: Vec<f64> = (0..cols)
        .map(|j| {
            (0..rows)
                .map(|r| {
                    let i = r * cols + j;
                    let term = dyf[i].abs() * xhat(i).abs();
                    term * (6.0 * u + rows as f64 * U64) + dyf[i].abs() * mean_effect(i)
                })
                .sum::<f64>()
                + tiny
        })
        .collect();
    let db_bound: Vec<f64> = (0..cols)
        .map(|j| {
            let sum_abs = (0..rows).map(|r| dyf[r * cols + j].abs()).sum::<f64>();
            (2.0 * u + rows as f64 * U64) * sum_abs + tiny
        })
        .collect();
    assert_within(
        &format!("dweight {what}"),
        &widen_all(grads.dweight.as_ref().unwrap()),
        &dw_ref,
        &dw_bound,
    );
    assert_within(
        &format!("dbias {what}"),
        &widen_all(grads.dbias.as_ref().unwrap()),
        &db_ref,
        &db_bound,
    );
}

fn suite<T: Element>() {
    let mut seed = 0u8;
    for &cols in &LENGTHS {
        for kind in AffineKind::ALL {
            for misalign in [0, 1] {
                seed = seed.wrapping_add(1);
                let offset = if seed.is_multiple_of(3) { 10.0 } else { 0.0 };
                check_case::<T>(&Case {
                    // 6 rows: rows of 2048 and more go through backward pass 2 in pairs,
                    // each pair's pass 1 inside pass 2 of the pair before.
                    rows: 6,
                    cols,
                    kind,
                    offset,
                    misalign,
                    seed,
                });
            }
        }
    }
}

/// Rows of 2^19 columns and more are cut into pieces of 2^16 (`kernels/long.rs`): 2^19 + 37
/// makes eight whole pieces and a short ninth with a tail of less than a vector; 2^20 − 1
/// a last piece one short. One to three rows, so that a piece of columns holds each count
/// of rows; every γ/β combination; data one element off alignment.
fn long_rows<T: Element>() {
    let mut seed = 200u8;
    for (rows, cols) in [(1, (1 << 20) - 1), (2, (1 << 19) + 37), (3, (1 << 19) + 37)] {
        for kind in AffineKind::ALL {
            seed = seed.wrapping_add(1);
            let offset = if seed.is_multiple_of(2) { 10.0 } else { 0.0 };
            let misalign = usize::from(seed.is_multiple_of(3));
            check_case::<T>(&Case {
                rows,
                cols,
                kind,
                offset,
                misalign,
                seed,
            });
        }
    }
}

#[test]
fn long_rows_match_reference_on_every_isa() {
    on_every_isa(|| {
        long_rows::<f32>();
        long_rows::<layernorm::bf16>();
    });
    // (f64 data keeps whole rows: the portable kernel runs in f64 already.)
    long_rows::<layernorm::f16>();
}

/// Runs `f` once per instruction set this CPU has (scalar, AVX2, AVX-512, NEON).
fn on_every_isa(f: impl Fn()) {
    for kind in layernorm::cpu_info().available {
        layernorm::with_isa(kind, &f).expect("an available ISA");
    }
}

#[test]
fn f32_matches_reference_on_every_length_and_affine() {
    on_every_isa(suite::<f32>);
}

#[test]
fn f64_matches_reference_on_every_length_and_affine() {
    on_every_isa(suite::<f64>);
}

#[test]
fn f16_matches_reference_on_every_length_and_affine() {
    on_every_isa(suite::<layernorm::f16>);
}

#[test]
fn bf16_matches_reference_on_every_length_and_affine() {
    on_every_isa(suite::<layernorm::bf16>);
}

#[test]
fn every_isa_agrees_with_scalar() {
    // Each ISA is within a few u of the exact result (the suites above), so two ISAs are within
    // twice that of each other; checked here directly, normwise, against the scalar path. The
    // bound on y and dγ is relative to their own size. dx is not: its terms cancel (exactly,
    // for rows of two elements, where x̂ = ±1), so it is within ~8u of the size of its terms,
    // rstd·(|g| + mean|g| + |x̂|·mean|g·x̂|), and fused and unfused multiply-adds legitimately
    // differ by that much.
    fn agree<T: Element>(cols: usize) {
        let mut rng = Rand::new(cols as u8);
        let x: Vec<T> = rng.normals(5 * cols, 3.0, 2.0);
        let dy: Vec<T> = rng.normals(5 * cols, 0.0, 1.0);
        let w: Vec<T> = rng.normals(cols, 1.0, 0.5);
        let run = || {
            let par = Parallelism::Sequential;
            let (y, st) = layer_norm::forward(&x, cols, Affine::scale(&w), 1e-5, par).unwrap();
            let g = layer_norm::backward(&dy, &x, cols, st.as_ref(), Some(&w), GradMask::ALL, par)
                .unwrap();
            (
                widen_all(&y),
                widen_all(&g.dx.unwrap()),
                widen_all(&g.dweight.unwrap()),
            )
        };
        // The size of dx's terms, from the exact statistics.
        let (xf, dyf, wf) = (widen_all(&x), widen_all(&dy), widen_all(&w));
        let mut dx_terms = Vec::with_capacity(x.len());
        for (r, &(mean, rstd)) in layer_norm_stats(&xf, cols, 1e-5).iter().enumerate() {
            let row = r * cols..(r + 1) * cols;
            let xhat: Vec<f64> = xf[row.clone()].iter().map(|v| (v - mean) * rstd).collect();
            let g: Vec<f64> = dyf[row].iter().zip(&wf).map(|(d, w)| d * w).collect();
            let mean_g = g.iter().map(|v| v.abs()).sum::<f64>() / cols as f64;
            let mean_gx = g.iter().zip(&xhat).map(|(g, x)| (g * x).abs()).sum::<f64>();
            let mean_gx = mean_gx / cols as f64;
            for (g, xh) in g.iter().zip(&xhat) {
                dx_terms.push(rstd * (g.abs() + mean_g + xh.abs() * mean_gx));
            }
        }
        let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
        let scalar = layernorm::with_isa(layernorm::IsaKind::Scalar, run).unwrap();
        for kind in layernorm::cpu_info().available {
            let other = layernorm::with_isa(kind, run).unwrap();
            let tol = 12.0 * T::UNIT_ROUNDOFF;
            for (name, a, b) in [
                ("y", &other.0, &scalar.0),
                ("dx", &other.1, &scalar.1),
                ("dweight", &other.2, &scalar.2),
            ] {
                // (Rows of one element give y = β = 0 everywhere: equal, and 0/0 normwise.)
                let err = if a == b {
                    0.0
                } else if name == "dx" {
                    let diff: Vec<f64> = a.iter().zip(b).map(|(a, b)| a - b).collect();
                    norm(&diff) / norm(&dx_terms)
                } else {
                    normwise_error(a, b)
                };
                assert!(
                    err <= tol,
                    "{} {kind} vs scalar, cols {cols}: {name} differs by {err:e}",
                    T::NAME
                );
            }
        }
    }
    for cols in LENGTHS {
        agree::<f32>(cols);
        agree::<layernorm::f16>(cols);
        agree::<layernorm::bf16>(cols);
    }
}

#[test]
fn many_rows_in_parallel_match_reference() {
    // Enough rows to split into many blocks across threads.
    for (rows, cols) in [(1600, 128), (300, 1023), (64, 4097)] {
        check_case::<f32>(&Case {
            rows,
            cols,
            kind: AffineKind::ScaleShift,
            offset: 3.0,
            misalign: 1,
            seed: 7,
        });
    }
}

#[test]
fn forward_into_equals_forward_bitwise() {
    let mut rng = Rand::new(42);
    let (rows, cols) = (37, 129);
    let x: Vec<f32> = rng.normals(rows * cols, 1.0, 2.0);
    let w: Vec<f32> = rng.normals(cols, 1.0, 0.5);
    let b: Vec<f32> = rng.normals(cols, 0.0, 0.5);
    let affine = Affine::scale_shift(&w, &b);
    let (y, stats) = layer_norm::forward(&x, cols, affine, 1e-5, Parallelism::Rayon).unwrap();
    let mut y2 = vec![0.0; x.len()];
    let mut stats2 = layernorm::Stats {
        mean: vec![0.0; rows],
        rstd: vec![0.0; rows],
    };
    layer_norm::forward_into(
        &x,
        cols,
        affine,
        1e-5,
        &mut y2,
        Some(stats2.as_mut()),
        Parallelism::Rayon,
    )
    .unwrap();
    assert_eq!(y, y2);
    assert_eq!(stats, stats2);
    // Without statistics, y is the same too.
    let mut y3 = vec![0.0; x.len()];
    layer_norm::forward_into(
        &x,
        cols,
        affine,
        1e-5,
        &mut y3,
        None,
        Parallelism::Sequential,
    )
    .unwrap();
    assert_eq!(y, y3);
}

/// Every mask gives the bits of the full backward for what it asks, in f64 (the portable
/// kernel) and in f32, where the vector kernels pick a loop by what is asked: short rows,
/// rows long enough to go through pass 2 in groups, and long rows (cut into pieces, dγ/dβ
/// written by the long-row path itself).
#[test]
fn backward_mask_skips_and_keeps_bits() {
    let mut rng = Rand::new(9);
    for (rows, cols) in [(20, 33), (9, 2100), (2, (1 << 19) + 5)] {
        let x: Vec<f64> = rng.normals(rows * cols, 0.0, 1.0);
        let dy: Vec<f64> = rng.normals(rows * cols, 0.0, 1.0);
        let w: Vec<f64> = rng.normals(cols, 1.0, 0.5);
        masks_keep_bits(&x, &dy, &w, cols);
        let narrow = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        masks_keep_bits(&narrow(&x), &narrow(&dy), &narrow(&w), cols);
    }
}

fn masks_keep_bits<T: Element>(x: &[T], dy: &[T], w: &[T], cols: usize) {
    let par = Parallelism::Rayon;
    let (_, stats) = layer_norm::forward(x, cols, Affine::scale(w), 1e-5, par).unwrap();
    let all =
        layer_norm::backward(dy, x, cols, stats.as_ref(), Some(w), GradMask::ALL, par).unwrap();
    for (input, weight, bias) in [
        (true, false, false),
        (false, true, false),
        (false, false, true),
        (true, false, true),
        (true, true, false),
        (false, true, true),
    ] {
        let mask = GradMask {
            input,
            weight,
            bias,
        };
        let some = layer_norm::backward(dy, x, cols, stats.as_ref(), Some(w), mask, par).unwrap();
        assert_eq!(some.dx.is_some(), mask.input);
        assert_eq!(some.dweight.is_some(), mask.weight);
        assert_eq!(some.dbias.is_some(), mask.bias);
        if mask.input {
            assert_eq!(some.dx, all.dx);
        }
        if mask.weight {
            assert_eq!(some.dweight, all.dweight);
        }
        if mask.bias {
            assert_eq!(some.dbias, all.dbias);
        }
    }
}
