//! RMSNorm: the f64 reference on every ISA and dtype, finite differences, determinism, and
//! extreme magnitudes. Tolerances as in reference_agreement.rs: y = x·rstd·γ takes ≤ 4
//! roundings in the storage precision (rstd to f32, ·rstd, ·γ, the store), so 6u·|x̂γ| covers
//! it with the f64 mean-square's own error (≤ (n/8 + 3)·2^-53 relative) beside.

use crate::common::*;
use layernorm::reference::{rms_norm_backward, rms_norm_forward};
use layernorm::{rms_norm, Element, GradMask, Parallelism};

const U64: f64 = f64::EPSILON / 2.0;
const LENGTHS: [usize; 10] = [1, 2, 15, 16, 17, 63, 64, 65, 1023, 4097];

fn check<T: Element>(rows: usize, cols: usize, with_weight: bool, misalign: usize, seed: u8) {
    let what = format!(
        "{} rows={rows} cols={cols} weight={with_weight} misalign={misalign}",
        T::NAME
    );
    let u = T::UNIT_ROUNDOFF;
    // Each output's last rounding, to T, where it lands among T's subnormals.
    let tiny = subnormal_rounding::<T>();
    let mut rng = Rand::new(seed);
    let pad = |v: Vec<T>| [vec![T::default(); misalign], v].concat();
    let x_buf = pad(rng.normals(rows * cols, 0.5, 2.0));
    let dy_buf = pad(rng.normals(rows * cols, 0.0, 1.0));
    let w_buf = pad(rng.normals(cols, 1.0, 0.5));
    let (x, dy) = (&x_buf[misalign..], &dy_buf[misalign..]);
    let w = with_weight.then(|| &w_buf[misalign..]);
    let par = Parallelism::Rayon;
    let (y, rstd) = rms_norm::forward(x, cols, w, 1e-5, par).unwrap();
    let g = rms_norm::backward(dy, x, cols, &rstd, w, GradMask::ALL, par).unwrap();
    assert!(g.dbias.is_none());

    let (xf, dyf, wf) = (widen_all(x), widen_all(dy), w.map(widen_all));
    let (y_ref, rstd_ref) = rms_norm_forward(&xf, cols, wf.as_deref(), 1e-5);
    let (dx_ref, dw_ref) = rms_norm_backward(&dyf, &xf, cols, wf.as_deref(), 1e-5);
    let depth = cols.div_ceil(8) as f64 + 3.0;
    let gamma = |j: usize| wf.as_ref().map_or(1.0, |w| w[j]);
    let xhat = |i: usize| xf[i] * rstd_ref[i / cols];
    let y_bound: Vec<f64> = (0..rows * cols)
        .map(|i| (6.0 * u + depth * U64) * (xhat(i) * gamma(i % cols)).abs() + tiny)
        .collect();
    assert_within(&format!("y {what}"), &widen_all(&y), &y_ref, &y_bound);
    let rstd_bound: Vec<f64> = rstd_ref
        .iter()
        .map(|r| (2.0 * u + depth * U64) * r)
        .collect();
    assert_within(
        &format!("rstd {what}"),
        &widen_stats(&rstd),
        &rstd_ref,
        &rstd_bound,
    );

    let mut dx_bound = vec![0.0; rows * cols];
    for (r, &rs) in rstd_ref.iter().enumerate() {
        let span = r * cols..(r + 1) * cols;
        let gx: Vec<f64> = span
            .clone()
            .map(|i| dyf[i] * gamma(i % cols) * xhat(i))
            .collect();
        let mean_gx = gx.iter().sum::<f64>() / cols as f64;
        let abs_gx = gx.iter().map(|v| v.abs()).sum::<f64>() / cols as f64;
        for i in span {
            let gi = dyf[i] * gamma(i % cols);
            let terms = gi.abs() + (xhat(i) * mean_gx).abs();
            dx_bound[i] = rs * (8.0 * u * terms + depth * U64 * xhat(i).abs() * abs_gx) + tiny;
        }
    }
    assert_within(
        &format!("dx {what}"),
        &widen_all(g.dx.as_ref().unwrap()),
        &dx_ref,
        &dx_bound,
    );
    let dw_bound: Vec<f64> = (0..cols)
        .map(|j| {
            (0..rows)
                .map(|r| 6.0 * u * (dyf[r * cols + j] * xhat(r * cols + j)).abs())
                .sum::<f64>()
                + tiny
        })
        .collect();
    assert_within(
        &format!("dweight {what}"),
        &widen_all(g.dweight.as_ref().unwrap()),
        &dw_ref,
        &dw_bound,
    );
}

fn suite<T: Element>() {
    for (k, &cols) in LENGTHS.iter().enumerate() {
        for (with_weight, misalign) in [(false, 0), (true, 1), (true, 0)] {
            check::<T>(3, cols, with_weight, misalign, k as u8);
        }
    }
    // Many rows: parallel blocks.
    check::<T>(700, 96, true, 1, 99);
}

/// Long rows, cut into pieces (2^19 columns and more, see kernels/long.rs; f64 data keeps
/// whole rows).
fn long_rows<T: Element>() {
    check::<T>(2, (1 << 19) + 37, true, 1, 98);
    check::<T>(1, 1 << 20, false, 0, 97);
}

#[test]
fn matches_the_reference_on_every_isa_and_dtype() {
    long_rows::<layernorm::f16>();
    for kind in layernorm::cpu_info().available {
        layernorm::with_isa(kind, || {
            suite::<f32>();
            suite::<f64>();
            suite::<layernorm::f16>();
            suite::<layernorm::bf16>();
            long_rows::<f32>();
            long_rows::<layernorm::bf16>();
        })
        .unwrap();
    }
}

#[test]
fn gradients_match_finite_differences() {
    let (rows, cols) = (3, 9);
    let mut rng = Rand::new(4);
    let x: Vec<f64> = rng.normals(rows * cols, 0.3, 1.5);
    let w: Vec<f64> = rng.normals(cols, 1.0, 0.5);
    let r: Vec<f64> = rng.normals(rows * cols, 0.0, 1.0);
    let par = Parallelism::Sequential;
    let loss = |x: &[f64], w: &[f64]| -> f64 {
        let (y, _) = rms_norm::forward(x, cols, Some(w), 1e-5, par).unwrap();
        y.iter().zip(&r).map(|(a, b)| a * b).sum()
    };
    let (_, rstd) = rms_norm::forward(&x, cols, Some(&w), 1e-5, par).unwrap();
    let g = rms_norm::backward(&r, &x, cols, &rstd, Some(&w), GradMask::ALL, par).unwrap();
    // Central differences: step 1e-4·(1/rstd) in x (truncation ≈ 1e-8 relative), 1e-5 in γ
    // (L is linear in γ): 1e-7 is met by the exact gradient and missed by a wrong one.
    for i in 0..x.len() {
        let h = 1e-4 / rstd[i / cols];
        let (mut p, mut m) = (x.clone(), x.clone());
        p[i] += h;
        m[i] -= h;
        let fd = (loss(&p, &w) - loss(&m, &w)) / (2.0 * h);
        let got = g.dx.as_ref().unwrap()[i];
        assert!(
            (got - fd).abs() <= 1e-7 * (1.0 + fd.abs()),
            "dx[{i}]: {got} vs {fd}"
        );
    }
    for j in 0..cols {
        let h = 1e-5 * (1.0 + w[j].abs());
        let (mut p, mut m) = (w.clone(), w.clone());
        p[j] += h;
        m[j] -= h;
        let fd = (loss(&x, &p) - loss(&x, &m)) / (2.0 * h);
        let got = g.dweight.as_ref().unwrap()[j];
        assert!(
            (got - fd).abs() <= 1e-7 * (1.0 + fd.abs()),
            "dweight[{j}]: {got} vs {fd}"
        );
    }
}

#[test]
fn bitwise_identical_across_threads_and_batches() {
    let (rows, cols) = (900, 200);
    let mut rng = Rand::new(6);
    let x: Vec<f32> = rng.normals(rows * cols, 0.0, 3.0);
    let dy: Vec<f32> = rng.normals(rows * cols, 0.0, 1.0);
    let w: Vec<f32> = rng.normals(cols, 1.0, 0.5);
    let run = |x: &[f32], dy: &[f32]| {
        let (y, rstd) = rms_norm::forward(x, cols, Some(&w), 1e-5, Parallelism::Rayon).unwrap();
        let g = rms_norm::backward(
            dy,
            x,
            cols,
            &rstd,
            Some(&w),
            GradMask::ALL,
            Parallelism::Rayon,
        )
        .unwrap();
        (y, rstd, g)
    };
    let one = run(&x, &dy);
    for threads in [1, 2, 3, 7] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        assert!(pool.install(|| run(&x, &dy)) == one, "{threads} threads");
    }
    // Row 17 alone gives the bits it had in the batch.
    let span = 17 * cols..18 * cols;
    let alone = run(&x[span.clone()], &dy[span.clone()]);
    assert_eq!(alone.0, one.0[span.clone()]);
    assert_eq!(alone.1[0], one.1[17]);
    assert_eq!(alone.2.dx.unwrap(), one.2.dx.unwrap()[span].to_vec());
}

#[test]
fn extreme_rows_stay_finite() {
    let par = Parallelism::Rayon;
    // f32 near the top of its range: squares overflow f32 but not the f64 accumulator.
    let x = vec![3e38f32, -2e38, 1e38, 5e37];
    let (y, _) = rms_norm::forward(&x, 4, None, 1e-5, par).unwrap();
    assert!(y.iter().all(|v| v.is_finite() && v.abs() <= 2.0), "{y:?}");
    // f64 whose squares overflow f64: rescaled.
    let x = vec![1e300f64, -1e300, 2e300, 0.0];
    let (y, rstd) = rms_norm::forward(&x, 4, None, 1e-5, par).unwrap();
    let (y_ref, _) = rms_norm_forward(
        &x.iter().map(|v| v * 2f64.powi(-600)).collect::<Vec<_>>(),
        4,
        None,
        0.0,
    );
    assert_close("huge f64 row", &y, &y_ref, 1e-14, 1e-14);
    assert!(rstd[0] > 0.0);
    // An all-zero row: y = 0, rstd = 1/√ε, finite gradients.
    let zero = vec![0.0f32; 8];
    let (y, rstd) = rms_norm::forward(&zero, 8, None, 1e-5, par).unwrap();
    assert_eq!(y, vec![0.0; 8]);
    let g = rms_norm::backward(&[1.0; 8], &zero, 8, &rstd, None, GradMask::INPUT, par).unwrap();
    assert!(g.dx.unwrap().iter().all(|v| v.is_finite()));
}
