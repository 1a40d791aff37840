//! Adversarial inputs: large offsets, constant rows, extreme magnitudes, NaN/Inf containment.

use crate::common::*;
use layernorm::reference::{layer_norm_backward, layer_norm_forward};
use layernorm::{layer_norm, Affine, GradMask, Parallelism};

const PAR: Parallelism = Parallelism::Rayon;

/// y, dx for f32 input against the f64 reference computed on the same f32 values.
fn errors_at_offset(c: f64, rows: usize, cols: usize) -> (f64, f64, f64) {
    let mut rng = Rand::new(c.log10() as u8 + 1);
    let x: Vec<f32> = rng.normals(rows * cols, c, 1.0);
    let dy: Vec<f32> = rng.normals(rows * cols, 0.0, 1.0);
    let w: Vec<f32> = rng.normals(cols, 1.0, 0.5);
    let b: Vec<f32> = rng.normals(cols, 0.0, 0.5);
    let (y, stats) = layer_norm::forward(&x, cols, Affine::scale_shift(&w, &b), 1e-5, PAR).unwrap();
    let g =
        layer_norm::backward(&dy, &x, cols, stats.as_ref(), Some(&w), GradMask::ALL, PAR).unwrap();
    let (xf, wf, bf) = (widen_all(&x), widen_all(&w), widen_all(&b));
    let (y_ref, _, _) = layer_norm_forward(&xf, cols, Some(&wf), Some(&bf), 1e-5);
    let (dx_ref, dw_ref, _) = layer_norm_backward(&widen_all(&dy), &xf, cols, Some(&wf), 1e-5);
    (
        normwise_error(&widen_all(&y), &y_ref),
        normwise_error(&widen_all(g.dx.as_ref().unwrap()), &dx_ref),
        normwise_error(&widen_all(g.dweight.as_ref().unwrap()), &dw_ref),
    )
}

#[test]
fn large_mean_f32_stays_within_1e6_normwise() {
    // x = c + N(0, 1) in f32. PyTorch's f32 kernel reaches 29 % error at c = 1e7; the target
    // here is 1e-6 for any c. Backward is held to the same bound.
    for c in [0.0, 1e2, 1e4, 1e6, 1e7, 3e7] {
        for cols in [64, 768, 4097] {
            let (ey, edx, edw) = errors_at_offset(c, 16, cols);
            assert!(ey <= 1e-6, "y error {ey:e} at c = {c:e}, cols = {cols}");
            assert!(edx <= 1e-6, "dx error {edx:e} at c = {c:e}, cols = {cols}");
            assert!(
                edw <= 1e-6,
                "dweight error {edw:e} at c = {c:e}, cols = {cols}"
            );
        }
    }
}

#[test]
fn constant_rows_give_exactly_beta_and_finite_gradients() {
    for value in [
        123456.7f32,
        0.0,
        -3.5e-30,
        1e30,
        f32::MAX,
        f32::MIN_POSITIVE * 0.5,
    ] {
        for cols in [1, 2, 17, 4097] {
            let x = vec![value; 2 * cols];
            let b: Vec<f32> = (0..cols).map(|j| j as f32 * 0.25 - 1.0).collect();
            let w = vec![3.0f32; cols];
            let (y, stats) =
                layer_norm::forward(&x, cols, Affine::scale_shift(&w, &b), 1e-5, PAR).unwrap();
            assert_eq!(&y[..cols], &b[..], "value {value:e}, cols {cols}");
            assert_eq!(&y[cols..], &b[..]);
            assert_eq!(stats.mean[0], value);
            let dy = vec![1.0f32; 2 * cols];
            let g =
                layer_norm::backward(&dy, &x, cols, stats.as_ref(), Some(&w), GradMask::ALL, PAR)
                    .unwrap();
            assert!(g.dx.unwrap().iter().all(|v| v.is_finite()));
            assert!(g.dweight.unwrap().iter().all(|v| *v == 0.0));
        }
    }
}

#[test]
fn huge_and_tiny_magnitudes_stay_finite_and_accurate() {
    let mut rng = Rand::new(3);
    // Rows spanning 1e-30..1e30 (PyTorch's f32 kernel gives NaN), rows near f32::MAX of both
    // signs (x − μ overflows f32), rows of subnormals, and a tiny ε with tiny values.
    let cols = 37;
    let mut rows: Vec<Vec<f32>> = vec![];
    rows.push(
        (0..cols)
            .map(|j| {
                10f32.powi(j as i32 * 60 / (cols as i32 - 1) - 30)
                    * if j % 2 == 0 { 1.0 } else { -1.0 }
            })
            .collect(),
    );
    rows.push(
        (0..cols)
            .map(|j| {
                if j % 3 == 0 {
                    f32::MAX
                } else {
                    -f32::MAX * 0.9
                }
            })
            .collect(),
    );
    rows.push((0..cols).map(|_| (rng.normal() * 1e-42) as f32).collect());
    rows.push((0..cols).map(|_| (rng.normal() * 1e30) as f32).collect());
    for eps in [1e-5, 1e-37] {
        for row in &rows {
            let (y, stats) = layer_norm::forward(row, cols, Affine::none(), eps, PAR).unwrap();
            let dy: Vec<f32> = rng.normals(cols, 0.0, 1.0);
            let g = layer_norm::backward(&dy, row, cols, stats.as_ref(), None, GradMask::ALL, PAR)
                .unwrap();
            let xf = widen_all(row);
            let (y_ref, _, _) = layer_norm_forward(&xf, cols, None, None, eps);
            let (dx_ref, _, _) = layer_norm_backward(&widen_all(&dy), &xf, cols, None, eps);
            assert!(
                y.iter().all(|v| v.is_finite()),
                "y not finite for {row:?}, eps {eps:e}"
            );
            let dx = g.dx.unwrap();
            assert!(
                dx.iter().all(|v| v.is_finite()),
                "dx not finite for {row:?}"
            );
            // Elementwise: ≤ 5 roundings of u each (see reference_agreement.rs), plus two
            // subnormal spacings where y itself is subnormal (the row of 1e-42 values).
            let subnormal = f64::from(f32::from_bits(1));
            let what = format!("y, eps {eps:e}, row {row:?}");
            assert_close(
                &what,
                &widen_all(&y),
                &y_ref,
                2.0 * subnormal,
                6.0 * f64::from(f32::EPSILON) / 2.0,
            );
            // Backward reads the saved f32 rstd, which is subnormal for the f32::MAX row
            // (rstd ≈ 6e-39): it then carries only 2^-149/rstd relative precision.
            let rstd = f64::from(stats.rstd[0]);
            let edx = normwise_error(&widen_all(&dx), &dx_ref);
            assert!(
                edx <= 1e-6 + subnormal / rstd,
                "dx error {edx:e} for eps {eps:e}, row {row:?}"
            );
        }
    }
}

#[test]
fn f64_rows_near_overflow_stay_finite() {
    let cols = 9;
    let x: Vec<f64> = (0..cols)
        .map(|j| if j % 2 == 0 { 1e308 } else { -1.5e308 })
        .collect();
    let (y, stats) = layer_norm::forward(&x, cols, Affine::none(), 1e-5, PAR).unwrap();
    assert!(stats.mean[0].is_finite() && stats.rstd[0] > 0.0);
    // The reference, on the same values scaled down by 2^-600 (exact), gives the same x̂.
    let scaled: Vec<f64> = x.iter().map(|v| v * 2f64.powi(-600)).collect();
    let (y_ref, _, _) = layer_norm_forward(&scaled, cols, None, None, 1e-300);
    assert_close("huge f64 row", &y, &y_ref, 1e-14, 1e-14);
    let dy = vec![1.0; cols];
    let g =
        layer_norm::backward(&dy, &x, cols, stats.as_ref(), None, GradMask::INPUT, PAR).unwrap();
    assert!(g.dx.unwrap().iter().all(|v| v.is_finite()));
}

#[test]
fn f64_constant_rows_near_max_give_exactly_beta() {
    // Their sum overflows, so the statistics are taken on the row scaled by 2^-600, where the
    // variance is 0: rstd must be 1/√ε (an earlier version divided by √(ε·2^-1200), which
    // underflows to 0, and gave rstd = ∞ and y = NaN).
    for v in [f64::MAX, -f64::MAX, 0.9 * f64::MAX] {
        let x = vec![v; 7];
        let (beta, gamma) = (vec![0.25; 7], vec![2.0; 7]);
        let affine = Affine::scale_shift(&gamma, &beta);
        let (y, stats) = layer_norm::forward(&x, 7, affine, 1e-5, PAR).unwrap();
        assert_eq!(y, beta, "row of {v:e}");
        assert_eq!(stats.rstd[0], 1.0 / 1e-5f64.sqrt());
        let dy = vec![1.0; 7];
        let g = layer_norm::backward(&dy, &x, 7, stats.as_ref(), Some(&gamma), GradMask::ALL, PAR)
            .unwrap();
        assert_eq!(g.dx.unwrap(), vec![0.0; 7]);
    }
}

#[test]
fn rows_needing_f64_in_backward_are_handled_alone() {
    // A row outside f32's safe range (spanning 1e-30..1e30) takes the f64 path. Rows of 2048
    // and more go through backward pass 2 in pairs, and such a row sends its pair
    // through one row at a time; shorter rows add dβ in pass 1, which runs ahead inside the
    // previous row's pass 2, so the f64 path must neither add it again nor skip it. The
    // first, a middle and the last row are tried. Every output must match the reference as in
    // the plain case: dx normwise to 1e-6 per row, dγ and dβ (sums over the rows) normwise to
    // 1e-6.
    let rows = 6;
    let mut rng = Rand::new(11);
    for cols in [2053, 100, 777] {
        for wide in [0, 1, rows - 1] {
            let mut x: Vec<f32> = rng.normals(rows * cols, 1.0, 2.0);
            for (j, v) in x[wide * cols..(wide + 1) * cols].iter_mut().enumerate() {
                *v = 10f32.powi((j % 61) as i32 - 30) * if j % 2 == 0 { 1.0 } else { -1.0 };
            }
            let dy: Vec<f32> = rng.normals(rows * cols, 0.0, 1.0);
            let w: Vec<f32> = rng.normals(cols, 1.0, 0.5);
            let (_, stats) = layer_norm::forward(&x, cols, Affine::scale(&w), 1e-5, PAR).unwrap();
            let stats = stats.as_ref();
            let g =
                layer_norm::backward(&dy, &x, cols, stats, Some(&w), GradMask::ALL, PAR).unwrap();
            let (xf, dyf, wf) = (widen_all(&x), widen_all(&dy), widen_all(&w));
            let (dx_ref, dw_ref, db_ref) = layer_norm_backward(&dyf, &xf, cols, Some(&wf), 1e-5);
            let dx = widen_all(&g.dx.unwrap());
            let case = format!("{cols} cols, row {wide} wide");
            for r in 0..rows {
                let span = r * cols..(r + 1) * cols;
                let e = normwise_error(&dx[span.clone()], &dx_ref[span]);
                assert!(e <= 1e-6, "{case}, row {r}: dx error {e:e}");
            }
            let ew = normwise_error(&widen_all(&g.dweight.unwrap()), &dw_ref);
            let eb = normwise_error(&widen_all(&g.dbias.unwrap()), &db_ref);
            assert!(
                ew <= 1e-6 && eb <= 1e-6,
                "{case}: dγ error {ew:e}, dβ error {eb:e}"
            );
        }
    }
}

#[test]
fn nan_and_inf_stay_in_their_row() {
    let cols = 33;
    let mut rng = Rand::new(5);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut x: Vec<f32> = rng.normals(5 * cols, 0.0, 1.0);
        x[2 * cols + 7] = bad;
        let (y, stats) = layer_norm::forward(&x, cols, Affine::none(), 1e-5, PAR).unwrap();
        let (clean, _) = {
            let mut x2 = x.clone();
            x2.drain(2 * cols..3 * cols);
            layer_norm::forward(&x2, cols, Affine::none(), 1e-5, PAR).unwrap()
        };
        for r in 0..5 {
            let row = &y[r * cols..(r + 1) * cols];
            if r == 2 {
                assert!(
                    row.iter().all(|v| v.is_nan()),
                    "bad row must be NaN for {bad}"
                );
            } else {
                let k = if r < 2 { r } else { r - 1 };
                assert_eq!(
                    row,
                    &clean[k * cols..(k + 1) * cols],
                    "row {r} touched by {bad}"
                );
                assert!(stats.mean[r].is_finite());
            }
        }
        let dy: Vec<f32> = rng.normals(5 * cols, 0.0, 1.0);
        let g =
            layer_norm::backward(&dy, &x, cols, stats.as_ref(), None, GradMask::ALL, PAR).unwrap();
        let dx = g.dx.unwrap();
        for r in [0, 1, 3, 4] {
            assert!(dx[r * cols..(r + 1) * cols].iter().all(|v| v.is_finite()));
        }
        assert!(dx[2 * cols..3 * cols].iter().all(|v| v.is_nan()));
    }
}

#[test]
fn one_column_rows_are_beta_with_zero_dx() {
    let x = [5.0f32, -2.0, 1e20];
    let b = [0.75f32];
    let w = [2.0f32];
    let (y, stats) = layer_norm::forward(&x, 1, Affine::scale_shift(&w, &b), 1e-5, PAR).unwrap();
    assert_eq!(y, vec![0.75; 3]);
    let g = layer_norm::backward(
        &[1.0, 2.0, 3.0],
        &x,
        1,
        stats.as_ref(),
        Some(&w),
        GradMask::ALL,
        PAR,
    )
    .unwrap();
    assert_eq!(g.dx.unwrap(), vec![0.0; 3]);
    assert_eq!(g.dweight.unwrap(), vec![0.0]);
    assert_eq!(g.dbias.unwrap(), vec![6.0]);
}

#[test]
fn backward_recovers_from_a_rounded_saved_mean() {
    // Saved f32 mean of 1e7 + N(0,1) is off by up to 0.5 (half a std): backward must still be
    // accurate, since it refines the mean from x.
    let cols = 256;
    let mut rng = Rand::new(11);
    let x: Vec<f32> = rng.normals(cols, 1e7, 1.0);
    let dy: Vec<f32> = rng.normals(cols, 0.0, 1.0);
    let (_, stats) = layer_norm::forward(&x, cols, Affine::none(), 1e-5, PAR).unwrap();
    let mut shifted = stats.clone();
    shifted.mean[0] += 1.0; // a pivot one whole unit away
    let a =
        layer_norm::backward(&dy, &x, cols, stats.as_ref(), None, GradMask::INPUT, PAR).unwrap();
    let b =
        layer_norm::backward(&dy, &x, cols, shifted.as_ref(), None, GradMask::INPUT, PAR).unwrap();
    let (dx_ref, _, _) = layer_norm_backward(&widen_all(&dy), &widen_all(&x), cols, None, 1e-5);
    assert!(normwise_error(&widen_all(a.dx.as_ref().unwrap()), &dx_ref) <= 1e-6);
    assert!(normwise_error(&widen_all(b.dx.as_ref().unwrap()), &dx_ref) <= 1e-6);
}

#[test]
fn half_types_keep_constant_rows_exact_and_nan_contained() {
    use layernorm::{bf16, f16};
    fn check<T: layernorm::Element>() {
        let cols = 37;
        let b: Vec<T> = (0..cols)
            .map(|j| from_f64(j as f64 * 0.125 - 2.0))
            .collect();
        let mut x: Vec<T> = vec![from_f64(1234.5); 3 * cols];
        x[2 * cols + 5] = from_f64(f64::NAN);
        let w = vec![from_f64::<T>(2.0); cols];
        let (y, _) = layer_norm::forward(&x, cols, Affine::scale_shift(&w, &b), 1e-5, PAR).unwrap();
        assert_eq!(&y[..cols], &b[..], "{}", T::NAME);
        assert_eq!(&y[cols..2 * cols], &b[..], "{}", T::NAME);
        assert!(
            y[2 * cols..].iter().all(|v| to_f64(*v).is_nan()),
            "{}",
            T::NAME
        );
    }
    for kind in layernorm::cpu_info().available {
        layernorm::with_isa(kind, || {
            check::<f16>();
            check::<bf16>();
            check::<f32>();
        })
        .unwrap();
    }
}

#[test]
fn an_outlier_first_element_does_not_cost_accuracy_in_long_rows() {
    // [a, 0, 0, …]: the one-pass statistics pivot on x[0] = a, far from the mean a/n; the
    // kernel must notice the cancellation and recompute around the mean. rstd is checked
    // against the reference to two f32 roundings, on every ISA.
    use layernorm::reference::layer_norm_stats;
    for kind in layernorm::cpu_info().available {
        layernorm::with_isa(kind, || {
            for (log_n, a) in [(16, 1.0f32 / 3.0), (20, 1.0 / 3.0), (22, 0.1), (22, 1e3)] {
                let n = 1usize << log_n;
                let mut x = vec![0.0f32; n];
                x[0] = a;
                let (_, stats) = layer_norm::forward(&x, n, Affine::none(), 1e-30, PAR).unwrap();
                let reference = layer_norm_stats(&widen_all(&x), n, 1e-30)[0];
                let rel = (f64::from(stats.rstd[0]) - reference.1).abs() / reference.1;
                assert!(
                    rel <= 2.0 * f64::from(f32::EPSILON),
                    "{kind} n=2^{log_n} a={a}: rstd off by {rel:e}"
                );
                let mean_err = (f64::from(stats.mean[0]) - reference.0).abs();
                assert!(
                    mean_err <= f64::from(f32::EPSILON) * reference.0.abs(),
                    "{kind} mean off by {mean_err:e}"
                );
            }
        })
        .unwrap();
    }
}
