//! Mixed precision: f16/bf16 activations with f32 γ/β (and f32 dγ/dβ), on every ISA.

use crate::common::*;
use layernorm::reference::{
    layer_norm_backward, layer_norm_forward, layer_norm_stats, rms_norm_backward, rms_norm_forward,
};
use layernorm::{layer_norm, rms_norm, Affine, Element, GradMask, Parallelism};

const U32: f64 = f32::EPSILON as f64 / 2.0;

fn check<T: Element<Compute = f32>>(rows: usize, cols: usize, seed: u8)
where
    f32: layernorm::ParamOf<T>,
{
    let what = format!("{} {rows}×{cols}", T::NAME);
    let par = Parallelism::Rayon;
    let mut rng = Rand::new(seed);
    let x: Vec<T> = rng.normals(rows * cols, 1.0, 2.0);
    let dy: Vec<T> = rng.normals(rows * cols, 0.0, 1.0);
    // γ/β with more bits than T holds: the point of f32 master weights.
    let w: Vec<f32> = rng.normals(cols, 1.0, 0.3);
    let b: Vec<f32> = rng.normals(cols, 0.0, 0.3);
    let (xf, dyf) = (widen_all(&x), widen_all(&dy));
    let (wf, bf) = (widen_all(&w), widen_all(&b));
    let u = T::UNIT_ROUNDOFF;

    let (y, stats) =
        layer_norm::forward_mixed(&x, cols, Affine::scale_shift(&w, &b), 1e-5, par).unwrap();
    let (y_ref, _, _) = layer_norm_forward(&xf, cols, Some(&wf), Some(&bf), 1e-5);
    // One rounding to T at the end, the rest in f32.
    let bound: Vec<f64> = y_ref
        .iter()
        .map(|v| u * v.abs() + 8.0 * U32 * (v.abs() + 1.0))
        .collect();
    assert_within(&format!("LN y {what}"), &widen_all(&y), &y_ref, &bound);

    let g = layer_norm::backward_mixed(&dy, &x, cols, stats.as_ref(), Some(&w), GradMask::ALL, par)
        .unwrap();
    let (_, dw_ref, db_ref) = layer_norm_backward(&dyf, &xf, cols, Some(&wf), 1e-5);
    // dγ, dβ in f32: x̂ good to ~5·2^-24, sums in f64, one rounding to f32 — far tighter than T.
    let abs_sum =
        |j: usize, f: &dyn Fn(usize) -> f64| (0..rows).map(|r| f(r * cols + j).abs()).sum::<f64>();
    let ln_stats = layer_norm_stats(&xf, cols, 1e-5);
    let xhat = |i: usize| (xf[i] - ln_stats[i / cols].0) * ln_stats[i / cols].1;
    let dw_bound: Vec<f64> = (0..cols)
        .map(|j| 8.0 * U32 * abs_sum(j, &|i| dyf[i] * xhat(i)))
        .collect();
    let db_bound: Vec<f64> = (0..cols)
        .map(|j| 2.0 * U32 * abs_sum(j, &|i| dyf[i]))
        .collect();
    assert_within(
        &format!("LN dγ {what}"),
        &widen_all(g.dweight.as_ref().unwrap()),
        &dw_ref,
        &dw_bound,
    );
    assert_within(
        &format!("LN dβ {what}"),
        &widen_all(g.dbias.as_ref().unwrap()),
        &db_ref,
        &db_bound,
    );

    // With γ/β that T represents exactly, mixed equals the single-type call bit for bit.
    let w_t: Vec<T> = w.iter().map(|&v| T::narrow(v)).collect();
    let w_exact: Vec<f32> = w_t.iter().map(|v| v.widen()).collect();
    let (y_mixed, _) =
        layer_norm::forward_mixed(&x, cols, Affine::scale(&w_exact), 1e-5, par).unwrap();
    let (y_same, _) = layer_norm::forward(&x, cols, Affine::scale(&w_t), 1e-5, par).unwrap();
    assert_eq!(y_mixed, y_same, "{what}");

    let (y, rstd) = rms_norm::forward_mixed(&x, cols, Some(&w), 1e-5, par).unwrap();
    let (y_ref, _) = rms_norm_forward(&xf, cols, Some(&wf), 1e-5);
    let bound: Vec<f64> = y_ref
        .iter()
        .map(|v| u * v.abs() + 8.0 * U32 * (v.abs() + 1.0))
        .collect();
    assert_within(&format!("RMS y {what}"), &widen_all(&y), &y_ref, &bound);
    let g = rms_norm::backward_mixed(&dy, &x, cols, &rstd, Some(&w), GradMask::ALL, par).unwrap();
    let (_, dw_ref) = rms_norm_backward(&dyf, &xf, cols, Some(&wf), 1e-5);
    let (_, rms_rstd) = rms_norm_forward(&xf, cols, None, 1e-5);
    let dw_bound: Vec<f64> = (0..cols)
        .map(|j| 8.0 * U32 * abs_sum(j, &|i| dyf[i] * xf[i] * rms_rstd[i / cols]))
        .collect();
    assert_within(
        &format!("RMS dγ {what}"),
        &widen_all(g.dweight.as_ref().unwrap()),
        &dw_ref,
        &dw_bound,
    );
}

#[test]
fn sixteen_bit_data_with_f32_parameters() {
    for kind in layernorm::cpu_info().available {
        layernorm::with_isa(kind, || {
            for (k, &(rows, cols)) in [(3, 1), (4, 17), (5, 64), (3, 1023), (300, 96)]
                .iter()
                .enumerate()
            {
                check::<layernorm::bf16>(rows, cols, k as u8);
                check::<layernorm::f16>(rows, cols, k as u8 + 10);
                check::<f32>(rows, cols, k as u8 + 20);
            }
        })
        .unwrap();
    }
}

/// Rows of 2^19+ columns take the long-row path, which rounds dγ/dβ into the parameters' type
/// itself (here f32 beside 16-bit data) rather than through the block partials.
#[test]
fn sixteen_bit_data_with_f32_parameters_on_long_rows() {
    check::<layernorm::bf16>(2, (1 << 19) + 3, 40);
    check::<layernorm::f16>(1, (1 << 19) + 1, 41);
}

/// 16-bit γ/β reach the forward kernels two ways: read as stored for a few rows, widened to
/// f32 once per call for more (see `FEW_ROWS` in `kernels`). Both must give the bits that
/// the same values as f32 γ/β give: a row alone, the same row in a batch of 12, and the
/// batch with f32 parameters, on every ISA, for row lengths with and without a tail.
fn sixteen_bit_parameters_read_either_way<T: Element<Compute = f32>>(seed: u8)
where
    f32: layernorm::ParamOf<T>,
{
    let mut rng = Rand::new(seed);
    let bits = |v: &[T]| -> Vec<u32> { v.iter().map(|x| x.widen().to_bits()).collect() };
    for cols in [37, 768, 4097] {
        let rows = 12;
        let x: Vec<T> = rng.normals(rows * cols, 1.0, 2.0);
        let w: Vec<T> = rng.normals(cols, 1.0, 0.5);
        let b: Vec<T> = rng.normals(cols, 0.0, 0.5);
        let (wf, bf): (Vec<f32>, Vec<f32>) = (
            w.iter().map(|v| v.widen()).collect(),
            b.iter().map(|v| v.widen()).collect(),
        );
        for kind in layernorm::cpu_info().available {
            layernorm::with_isa(kind, || {
                let par = Parallelism::Rayon;
                let affine = Affine::scale_shift(&w, &b);
                let (y, stats) = layer_norm::forward(&x, cols, affine, 1e-5, par).unwrap();
                let mixed = Affine::scale_shift(&wf, &bf);
                let (ym, sm) = layer_norm::forward_mixed(&x, cols, mixed, 1e-5, par).unwrap();
                let what = format!("{} {kind:?} cols {cols}", T::NAME);
                assert_eq!(bits(&y), bits(&ym), "{what}: batch, f32 γ/β");
                assert_eq!((&stats.mean, &stats.rstd), (&sm.mean, &sm.rstd), "{what}");
                for r in [0, 5, rows - 1] {
                    let row = &x[r * cols..(r + 1) * cols];
                    let (y1, s1) = layer_norm::forward(row, cols, affine, 1e-5, par).unwrap();
                    let span = r * cols..(r + 1) * cols;
                    assert_eq!(bits(&y1), bits(&y[span]), "{what}: row {r} alone");
                    assert_eq!((s1.mean[0], s1.rstd[0]), (stats.mean[r], stats.rstd[r]));
                }
            })
            .unwrap();
        }
    }
}

#[test]
fn bf16_parameters_give_the_same_bits_read_as_stored_or_widened() {
    sixteen_bit_parameters_read_either_way::<layernorm::bf16>(41);
}

#[test]
fn f16_parameters_give_the_same_bits_read_as_stored_or_widened() {
    sixteen_bit_parameters_read_either_way::<layernorm::f16>(42);
}
